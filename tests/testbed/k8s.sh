#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on loopback,
# for the test suite, the quickstart and CI.
#
#   k8s.sh assets           print a folder holding kube-apiserver, kube-controller-manager, etcd
#                           (KUBEBUILDER_ASSETS, else the cache, else build it once into the cache)
#   k8s.sh node-assets      print a folder holding kubelet, kube-scheduler and a static pause binary
#                           (DGA_NODE_ASSETS, else the cache, else build them once into the cache)
#   k8s.sh up DIR           start a control plane whose files live in DIR; writes DIR/kubeconfig
#   k8s.sh down DIR         stop it
#   k8s.sh run -- CMD...    up in a temp dir, run CMD with KUBECONFIG set, always down afterwards
#
# With DGA_USE_KUBECONFIG=1 and KUBECONFIG naming an existing cluster (kind, k3d, a real one),
# `run` uses that cluster instead and starts nothing.
set -euo pipefail

K8S_VERSION=1.20.2
DEB_SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dga-operator"
CACHE_DIR="$CACHE_ROOT/k8s/$K8S_VERSION"
# Beside it, not inside: the control plane's cache is replaced whole when it is rebuilt.
NODE_CACHE_DIR="$CACHE_ROOT/k8s/$K8S_VERSION-node"

log() { printf '[k8s] %s\n' "$*" >&2; }
die() { printf '[k8s] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "installing build dependencies needs root or sudo: $*"; fi
}

have_assets() {
  local d=$1
  [ -x "$d/kube-apiserver" ] && [ -x "$d/etcd" ]
}

# Debian source packages: derive deb-src entries from the machine's own apt sources, so that no
# mirror host is written into this project.
enable_deb_src() {
  local out=/etc/apt/sources.list.d/dga-operator-deb-src.sources
  [ -f "$out" ] && return 0
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | as_root tee "$out" >/dev/null
  elif [ -f /etc/apt/sources.list ] && grep -qE '^deb ' /etc/apt/sources.list; then
    out=/etc/apt/sources.list.d/dga-operator-deb-src.list
    [ -f "$out" ] && return 0
    sed -nE 's/^deb (.*)/deb-src \1/p' /etc/apt/sources.list | as_root tee "$out" >/dev/null
  else
    die "no Debian apt sources found to derive deb-src entries from"
  fi
}

# Unpacks Debian's kubernetes source package into WORK (needs deb-src and the Go toolchain) and
# prints the source folder.
fetch_source() {
  local work=$1
  enable_deb_src
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    dpkg-dev golang-go golang-github-modern-go-reflect2-dev etcd-server rsync >/dev/null
  (cd "$work" && apt-get source -qq "kubernetes=$DEB_SOURCE_VERSION" >/dev/null 2>&1) ||
    (cd "$work" && apt-get source "kubernetes=$DEB_SOURCE_VERSION" >&2)
  local src
  src=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$src" ] || die "apt-get source produced no kubernetes-* folder"
  # The vendored reflect2 1.0.1 crashes on Go >= 1.18; Debian's packaged copy works.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  rm -f "$src"/vendor/github.com/modern-go/reflect2/*.go "$src"/vendor/github.com/modern-go/reflect2/*.s
  cp "$r2"/*.go "$src"/vendor/github.com/modern-go/reflect2/
  cp "$r2"/*.s "$src"/vendor/github.com/modern-go/reflect2/ 2>/dev/null || true
  echo "$src"
}

# make WHAT="..." in SRC with the version stamped; prints the folder holding the binaries.
make_k8s() {
  local src=$1 work=$2 what=$3
  (cd "$src" && CGO_ENABLED=0 GOFLAGS= GOCACHE="$work/gocache" \
    KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean \
    make WHAT="$what" >"$work/build.log" 2>&1) ||
    { tail -n 40 "$work/build.log" >&2; die "kubernetes build of $what failed"; }
  dirname "$(find "$src/_output" -type f -name "$(basename "${what%% *}")" | head -n1)"
}

build_assets() {
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: set KUBEBUILDER_ASSETS to a folder with kube-apiserver and etcd, or DGA_USE_KUBECONFIG=1 with KUBECONFIG"
  log "building kube-apiserver $K8S_VERSION from Debian's source package (one time, ~5 minutes)"
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/dga-k8s-build.XXXXXX")
  # The build tree is 2.4 GB: never leave it behind, whether the build succeeds or fails.
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  local src bin
  src=$(fetch_source "$work")
  bin=$(make_k8s "$src" "$work" "cmd/kube-apiserver cmd/kube-controller-manager")
  local staging="$CACHE_DIR.partial"
  rm -rf "$staging" && mkdir -p "$staging"
  cp "$bin/kube-apiserver" "$bin/kube-controller-manager" "$staging/"
  cp "$(command -v etcd || echo /usr/bin/etcd)" "$staging/etcd"
  rm -rf "$CACHE_DIR" && mv "$staging" "$CACHE_DIR"
  rm -rf "$work"; trap - EXIT
  log "cached in $CACHE_DIR"
}

have_node_assets() {
  local d=$1
  [ -x "$d/kubelet" ] && [ -x "$d/kube-scheduler" ] && [ -x "$d/pause" ]
}

# The node's binaries are a separate cached step, so that a machine which already has the control
# plane cached builds only these: the kubelet and kube-scheduler (Deployments' pods need binding to
# the node) from the same source package as the apiserver, and the pod sandbox's pause process (a static build of the source's build/pause/linux/pause.c: no
# registry is needed for the pause image).
build_node_assets() {
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: set DGA_NODE_ASSETS to a folder with kubelet and a static pause binary"
  log "building kubelet and kube-scheduler $K8S_VERSION from Debian's source package (one time, ~5 minutes)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/dga-kubelet-build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  local src bin
  src=$(fetch_source "$work")
  bin=$(make_k8s "$src" "$work" "cmd/kubelet cmd/kube-scheduler")
  local staging="$NODE_CACHE_DIR.partial"
  rm -rf "$staging" && mkdir -p "$staging"
  cp "$bin/kubelet" "$bin/kube-scheduler" "$staging/"
  gcc -Os -Wall -Werror -static -DVERSION="v$K8S_VERSION-dga" -o "$staging/pause" "$src/build/pause/linux/pause.c" ||
    die "static build of pause.c failed"
  rm -rf "$NODE_CACHE_DIR" && mv "$staging" "$NODE_CACHE_DIR"
  rm -rf "$work"; trap - EXIT
  log "cached in $NODE_CACHE_DIR"
}

cmd_node_assets() {
  if [ -n "${DGA_NODE_ASSETS:-}" ]; then
    have_node_assets "$DGA_NODE_ASSETS" || die "DGA_NODE_ASSETS=$DGA_NODE_ASSETS lacks kubelet, kube-scheduler or pause"
    echo "$DGA_NODE_ASSETS"; return
  fi
  mkdir -p "$CACHE_ROOT"
  exec 8>"$CACHE_ROOT/k8s-node-build.lock"
  flock 8
  have_node_assets "$NODE_CACHE_DIR" || build_node_assets
  flock -u 8
  echo "$NODE_CACHE_DIR"
}

cmd_assets() {
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    have_assets "$KUBEBUILDER_ASSETS" || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd"
    echo "$KUBEBUILDER_ASSETS"; return
  fi
  mkdir -p "$CACHE_ROOT"
  # One build at a time per machine; a second caller waits and then finds the cache.
  exec 9>"$CACHE_ROOT/k8s-build.lock"
  flock 9
  have_assets "$CACHE_DIR" || build_assets
  flock -u 9
  echo "$CACHE_DIR"
}

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ports.sh"

wait_ready() {
  local url=$1 ca=$2 token=$3 what=$4 pidfile=$5
  for _ in $(seq 1 600); do
    if curl -fsS --max-time 2 --cacert "$ca" -H "Authorization: Bearer $token" "$url" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || return 1
    sleep 0.1
  done
  log "$what not ready after 60s"; return 1
}

cmd_up() {
  local dir=${1:?usage: k8s.sh up DIR}
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
  local assets; assets=$(cmd_assets)
  local etcd_port etcd_peer api_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  local pki=$dir/pki; mkdir -p "$pki"
  # A CA of our own so clients verify the apiserver's certificate for real.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dga-testbed-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.0.0.1\n' >"$pki/san.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" >/dev/null 2>&1
  openssl genrsa -out "$pki/sa.key" 2048 >/dev/null 2>&1
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" >/dev/null 2>&1
  local token; token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s,admin,admin,system:masters\n' "$token" >"$pki/tokens.csv"
  chmod 600 "$pki"/*

  mkdir -p "$dir/etcd"
  setsid "$assets/etcd" --name default --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"

  setsid "$assets/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 --disable-admission-plugins ServiceAccount \
    --allow-privileged=true \
    >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"

  local server="https://127.0.0.1:$api_port"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dga-testbed
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: dga-testbed
  context: {cluster: dga-testbed, user: admin}
current-context: dga-testbed
EOF
  chmod 600 "$dir/kubeconfig"
  wait_ready "$server/readyz" "$pki/ca.crt" "$token" kube-apiserver "$dir/apiserver.pid" ||
    { tail -n 30 "$dir/apiserver.log" >&2; tail -n 10 "$dir/etcd.log" >&2; cmd_down "$dir"; die "kube-apiserver did not start"; }

  if [ -x "$assets/kube-controller-manager" ]; then
    # Garbage collection, namespace deletion and service-account tokens, as a real cluster has.
    setsid "$assets/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
      --leader-elect=false --port 0 --secure-port 0 \
      --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
      --use-service-account-credentials=false \
      >"$dir/controller-manager.log" 2>&1 &
    echo $! >"$dir/controller-manager.pid"
  else
    log "no kube-controller-manager in $assets: namespaces will not finish deleting"
  fi
  log "kube-apiserver v$K8S_VERSION ready at $server (files in $dir)"
  echo "$dir/kubeconfig"
}

cmd_down() {
  local dir=${1:?usage: k8s.sh down DIR}
  local f pid
  for f in controller-manager apiserver etcd; do
    [ -f "$dir/$f.pid" ] || continue
    pid=$(cat "$dir/$f.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/$f.pid"
  done
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: k8s.sh run -- CMD..."
  if [ "${DGA_USE_KUBECONFIG:-}" = 1 ] && [ -n "${KUBECONFIG:-}" ]; then
    log "using the existing cluster from KUBECONFIG=$KUBECONFIG"
    "$@"; return
  fi
  local dir; dir=$(mktemp -d "${TMPDIR:-/tmp}/dga-k8s.XXXXXX")
  # shellcheck disable=SC2064
  trap "cmd_down '$dir'; [ -n \"\${DGA_KEEP_TESTBED:-}\" ] || rm -rf '$dir'" EXIT
  trap 'exit 130' INT TERM
  local kc; kc=$(cmd_up "$dir")
  set +e
  KUBECONFIG=$kc DGA_TESTBED_DIR=$dir "$@"
  local rc=$?
  set -e
  return $rc
}

case "${1:-}" in
  assets) shift; cmd_assets "$@" ;;
  node-assets) shift; cmd_node_assets "$@" ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  run) shift; cmd_run "$@" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
