# Sourced by k8s.sh and node.sh: a free loopback port for a server the testbed starts.
# (Callers define `die`.)

# The first port of the kernel's ephemeral range (32768 when it cannot be read).
ephemeral_low() {
  local lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)
  case $lo in ''|*[!0-9]*) lo=32768 ;; esac
  [ "$lo" -gt 11000 ] || lo=32768
  echo "$lo"
}

free_port() {
  local p
  for _ in $(seq 1 200); do
    # Below the kernel's ephemeral range: a port from that range can be taken, between this
    # check and the bind, by any outgoing connection (the apiserver's own to etcd included).
    p=$((10000 + RANDOM % ($(ephemeral_low) - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}
