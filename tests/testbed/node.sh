#!/usr/bin/env bash
# A real node for the test control plane of k8s.sh: containerd + runc + a kubelet (and the
# kube-scheduler that binds pods to it), on loopback, so that the operator runs as users run it:
# its image, installed by its Helm chart, as a Pod.
#
#   node.sh check           exit 0 if a node can run here, else print why not and exit 1
#   node.sh deps            install Debian's containerd, runc, buildah, containernetworking-plugins
#                           (idempotent)
#   node.sh up DIR          start containerd, kube-scheduler and a kubelet (node "localhost") whose
#                           files live in DIR, for the cluster in KUBECONFIG; waits for node Ready
#   node.sh down DIR        stop them and undo what they changed (processes, mounts, sysctls,
#                           /run/containerd and /var/log/pods leftovers)
#   node.sh run -- CMD...   up in a temp dir, run CMD with DGA_NODE_DIR and CONTAINERD_ADDRESS set,
#                           always down afterwards. Where no node can run, CMD runs without one and
#                           DGA_NODE_SKIP says why (the node tests print it and skip).
#   node.sh import DIR TAR  load an OCI archive into the node's containerd (namespace k8s.io)
#   node.sh values PORT     print (JSON) the chart values a pod on this node needs, metrics on PORT
#
# Needs root (containers, mounts, cgroups). Facts this relies on, measured on the project's CI
# machine (Debian 12, cgroup v1, no CAP_SYS_RESOURCE): see the comments at each setting.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dga-operator"
# Where the test bed's images are tagged: never pulled (no registry is reachable from CI), only
# imported with `node.sh import`.
PAUSE_IMAGE=localhost/dga-testbed/pause:3.4.1
# What kubelet (1.20) sets on start unless --protect-kernel-defaults; restored by `down`.
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# Host folders kubelet 1.20 and containerd 1.6 write to whatever their root/state say.
HOST_DIRS=(/run/containerd /var/log/pods /var/log/containers)

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

why_not() {
  [ "$(uname -s)" = Linux ] || { echo "not Linux"; return; }
  [ "$(id -u)" = 0 ] || { echo "not root (containers, mounts and cgroups need it)"; return; }
  [ -d /sys/fs/cgroup/memory ] || { echo "no cgroup v1 memory controller (kubelet 1.20 needs cgroup v1)"; return; }
  local m missing=()
  for m in containerd ctr runc buildah; do command -v "$m" >/dev/null 2>&1 || missing+=("$m"); done
  [ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing ${missing[*]} (tests/testbed/node.sh deps installs them on Debian)"; return
  fi
}

cmd_deps() {
  [ -z "$(why_not)" ] && return 0
  [ "$(id -u)" = 0 ] || die "$(why_not)"
  command -v apt-get >/dev/null 2>&1 || die "$(why_not); no apt-get to install them with"
  log "installing containerd, runc, buildah, containernetworking-plugins (Debian; one time, ~20 s)"
  mkdir -p "$CACHE_ROOT"
  exec 7>"$CACHE_ROOT/node-deps.lock"
  flock 7
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    containerd runc buildah containernetworking-plugins >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      containerd runc buildah containernetworking-plugins >/dev/null; }
  flock -u 7
  local w; w=$(why_not)
  [ -z "$w" ] || die "$w"
}

# buildah with storage of its own (never the host's /var/lib/containers): vfs needs no overlay
# support, chroot isolation no user namespaces. Used here for the pause image and by
# deploy/image.sh for the operator's.
buildah_in() {
  local store=$1; shift
  buildah --root "$store/root" --runroot "$store/runroot" --storage-driver vfs "$@"
}

# The sandbox image, built from the cached static pause binary (no registry needed).
pause_archive() {
  local assets=$1 out="$1/pause.oci.tar"
  [ -s "$out" ] && { echo "$out"; return; }
  exec 6>"$CACHE_ROOT/node-pause.lock"
  flock 6
  if [ ! -s "$out" ]; then
    local store; store=$(mktemp -d "${TMPDIR:-/tmp}/dga-pause.XXXXXX")
    local c
    c=$(buildah_in "$store" from scratch)
    buildah_in "$store" copy "$c" "$assets/pause" /pause >/dev/null
    buildah_in "$store" config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah_in "$store" commit -q "$c" "$PAUSE_IMAGE" >/dev/null
    buildah_in "$store" push -q "$PAUSE_IMAGE" "oci-archive:$out.partial:$PAUSE_IMAGE"
    mv "$out.partial" "$out"
    rm -rf "$store"
  fi
  flock -u 6
  echo "$out"
}

. "$HERE/ports.sh"

cmd_import() {
  local dir=${1:?usage: node.sh import DIR TAR} tar=${2:?usage: node.sh import DIR TAR}
  ctr -a "$dir/containerd.sock" -n k8s.io images import --all-platforms "$tar" >&2
}

start() {
  local dir=$1 name=$2; shift 2
  setsid "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

cmd_up() {
  local dir=${1:?usage: node.sh up DIR}
  [ -n "${KUBECONFIG:-}" ] || die "KUBECONFIG must name the control plane (tests/testbed/k8s.sh up)"
  local w; w=$(why_not); [ -z "$w" ] || die "$w"
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
  local assets; assets=$("$HERE/k8s.sh" node-assets)
  local pause; pause=$(pause_archive "$assets")

  # What `down` must restore or remove: recorded before anything changes them.
  local s
  for s in "${SYSCTLS[@]}"; do echo "$s $(cat "/proc/sys/$s")"; done >"$dir/sysctls.saved"
  for s in "${HOST_DIRS[@]}"; do
    if [ -d "$s" ]; then ls -A "$s" | sed "s|^|$s/|"; else echo "$s"; fi
  done >"$dir/host-dirs.before"
  : >"$dir/host-dirs.missing"
  for s in "${HOST_DIRS[@]}"; do [ -d "$s" ] || echo "$s" >>"$dir/host-dirs.missing"; done

  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/kubelet" "$dir/plugins"
  # Pods of this node use the host's network (the control plane and the stand-in listen on
  # loopback; there is no kube-proxy): CNI only has to report ready, which needs one network.
  cat >"$dir/cni/net.d/10-loopback.conflist" <<'EOF'
{"cniVersion": "0.4.0", "name": "dga-testbed", "plugins": [{"type": "loopback"}]}
EOF
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE runc cannot lower a container's oom_score_adj below its parent's and
  # every sandbox dies with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  start "$dir" containerd containerd --config "$dir/containerd/config.toml"
  for _ in $(seq 1 300); do
    timeout 5 ctr -a "$dir/containerd.sock" version >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null || { tail -n 20 "$dir/containerd.log" >&2; die "containerd exited"; }
    sleep 0.1
  done
  cmd_import "$dir" "$pause" >/dev/null 2>&1 || die "importing the pause image failed"

  cp "$KUBECONFIG" "$dir/kubeconfig"
  start "$dir" scheduler "$assets/kube-scheduler" --kubeconfig "$dir/kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0

  local kport; kport=$(free_port)
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kport
readOnlyPort: 0
healthzPort: 0
# The apiserver reaches the kubelet (logs, exec) without a client certificate of its own here.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
# Plain cgroupfs, no QoS hierarchy and no allocatable enforcement: nothing is created at the top of
# the host's cgroup trees that a teardown would have to find.
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# Leave the host's iptables alone.
makeIPTablesUtilChains: false
volumePluginDir: $dir/plugins
# A shared CI machine: never evict the test's pods or taint the node for the host's disk or memory
# use. "0%" switches a signal off (kubelet's ParseThresholdStatement ignores 0% and 100%; 1.20.2
# has it). With "1%", a CI disk filled by two builds could mark the node DiskPressure and leave
# the operator's pod Pending (suspected in a CI run whose pod never rolled out).
evictionHard: {memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
EOF
  # --hostname-override=localhost: the node's address resolves to loopback, so `kubectl logs`
  # (apiserver -> kubelet) works; --node-ip=127.0.0.1 is refused by kubelet 1.20.
  start "$dir" kubelet "$assets/kubelet" --kubeconfig "$dir/kubeconfig" --config "$dir/kubelet.yaml" \
    --container-runtime=remote --container-runtime-endpoint="unix://$dir/containerd.sock" \
    --hostname-override=localhost --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" \
    --v=1
  for _ in $(seq 1 900); do
    if kubectl get node localhost -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
      log "node localhost Ready (files in $dir)"
      return 0
    fi
    kill -0 "$(cat "$dir/kubelet.pid")" 2>/dev/null || { tail -n 30 "$dir/kubelet.log" >&2; die "kubelet exited"; }
    sleep 0.2
  done
  tail -n 30 "$dir/kubelet.log" >&2
  die "node localhost not Ready after 180 s"
}

stop_pid() {
  local dir=$1 name=$2 pid
  [ -f "$dir/$name.pid" ] || return 0
  pid=$(cat "$dir/$name.pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/$name.pid"
}

# Processes started for this node outside our process groups (containerd's shims and the
# containers under them) all name this node's socket or live under its state folder.
node_pids() {
  local dir=$1 p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$dir/" && basename "$p"
  done
  true
}

cmd_down() {
  local dir=${1:?usage: node.sh down DIR}
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  stop_pid "$dir" kubelet
  stop_pid "$dir" scheduler
  # Containers first (their shims then exit), while containerd still answers.
  if [ -f "$dir/containerd.pid" ] && kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
    local sock="$dir/containerd.sock" t
    # Every ctr call is bounded: a `tasks rm -f` once hung for over nine minutes on a shim that
    # did not answer; whatever is left is killed by pid and unmounted below.
    c() { timeout 10 ctr -a "$sock" -n k8s.io "$@"; }
    for t in $(c tasks ls -q 2>/dev/null); do
      c tasks kill -a -s KILL "$t" >/dev/null 2>&1 || true
    done
    for t in $(c tasks ls -q 2>/dev/null); do
      for _ in $(seq 1 5); do c tasks rm -f "$t" >/dev/null 2>&1 && break; sleep 0.2; done
    done
    for t in $(c containers ls -q 2>/dev/null); do
      c containers rm "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$dir" containerd
  local pids
  pids=$(node_pids "$dir")
  # shellcheck disable=SC2086
  [ -z "$pids" ] || { kill -KILL $pids 2>/dev/null || true; sleep 0.2; }
  # Mounts under DIR (rootfs overlays, sandbox shm, netns, secret tmpfs), deepest first.
  local m
  for _ in 1 2 3; do
    m=$(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    [ -z "$m" ] && break
    while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; done <<<"$m"
  done
  if [ -f "$dir/sysctls.saved" ]; then
    local s v
    while read -r s v; do echo "$v" >"/proc/sys/$s" 2>/dev/null || log "could not restore $s=$v"; done <"$dir/sysctls.saved"
    rm -f "$dir/sysctls.saved"
  fi
  # Host folders: remove what this node added, or the folder itself if it was not there before.
  if [ -f "$dir/host-dirs.before" ]; then
    local h e
    for h in "${HOST_DIRS[@]}"; do
      [ -d "$h" ] || continue
      if grep -qxF "$h" "$dir/host-dirs.missing"; then
        rm -rf "$h" 2>/dev/null || log "could not remove $h"
        continue
      fi
      for e in "$h"/* "$h"/.[!.]*; do
        [ -e "$e" ] || [ -L "$e" ] || continue
        grep -qxF "$e" "$dir/host-dirs.before" || rm -rf "$e"
      done
    done
    rm -f "$dir/host-dirs.before" "$dir/host-dirs.missing"
  fi
  # The node object: the control plane may outlive this node (quickstart), and a NotReady
  # node would only confuse its scheduler.
  [ -z "${KUBECONFIG:-}" ] || kubectl delete node localhost --ignore-not-found --wait=false >/dev/null 2>&1 || true
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: node.sh run -- CMD..."
  local w; w=$(why_not)
  # An existing cluster (k8s.sh with DGA_USE_KUBECONFIG=1) is never given a node of ours.
  [ "${DGA_USE_KUBECONFIG:-}" = 1 ] && w="an existing cluster is in use (DGA_USE_KUBECONFIG=1)"
  if [ -n "$w" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    [ "${DGA_USE_KUBECONFIG:-}" = 1 ] || { cmd_deps && w=$(why_not); }
  fi
  if [ -n "$w" ]; then
    log "no node here: $w; the node tests skip"
    DGA_NODE_SKIP="$w" "$@"; return
  fi
  local dir; dir=$(mktemp -d "${TMPDIR:-/tmp}/dga-node.XXXXXX")
  # shellcheck disable=SC2064
  trap "cmd_down '$dir'; [ -n \"\${DGA_KEEP_TESTBED:-}\" ] || rm -rf '$dir'" EXIT
  trap 'exit 130' INT TERM
  cmd_up "$dir"
  set +e
  DGA_NODE_DIR=$dir CONTAINERD_ADDRESS=$dir/containerd.sock CONTAINERD_NAMESPACE=k8s.io "$@"
  local rc=$?
  set -e
  return $rc
}

# Everything the loopback test bed needs beyond the chart's defaults, and nothing else (the tests
# and the quickstart both use this):
# - the image, imported into the node (no registry: never pulled);
# - the host's network (the apiserver and the stand-in listen on loopback; there is no kube-proxy
#   and no Service IPs), hence a metrics port of its own per release and the apiserver's address
#   in KUBERNETES_SERVICE_HOST/PORT;
# - the ServiceAccount token as a projected volume (what the ServiceAccount admission plugin, off
#   in this test bed, would add).
cmd_values() {
  local port=${1:?usage: node.sh values PORT} repo=${DGA_IMAGE_REPO:-localhost/dga-operator} tag=${DGA_IMAGE_TAG:-node-test}
  local server api_port
  server=$(kubectl config view --minify -o 'jsonpath={.clusters[0].cluster.server}')
  api_port=${server##*:}
  cat <<EOF
{
  "image": {"repository": "$repo", "tag": "$tag", "pullPolicy": "Never"},
  "hostNetwork": true,
  "metrics": {"port": $port},
  "env": [
    {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
    {"name": "KUBERNETES_SERVICE_PORT", "value": "$api_port"}
  ],
  "extraVolumes": [{"name": "kube-api-access", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
  ]}}],
  "extraVolumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
}
EOF
}

case "${1:-}" in
  check) w=$(why_not); [ -z "$w" ] || { echo "$w"; exit 1; } ;;
  deps) shift; cmd_deps ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  run) shift; cmd_run "$@" ;;
  import) shift; cmd_import "$@" ;;
  values) shift; cmd_values "$@" ;;
  buildah) shift; buildah_in "$@" ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
