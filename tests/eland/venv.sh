#!/usr/bin/env bash
# Creates (once) and prints the python of a cached venv holding eland, xgboost-cpu and
# scikit-learn for the evaluator ground-truth test. Idempotent: a venv whose requirements match
# is reused without touching the network, so a second run takes milliseconds.
# Exit 3 (and nothing on stdout) when no python3 is installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v python3 >/dev/null || { echo "python3 not found: the eland ground-truth test is skipped" >&2; exit 3; }
key="$(cat "$here/requirements.txt" <(python3 --version 2>&1) | sha256sum | cut -c1-16)"
venv="${DGA_CACHE_DIR:-$HOME/.cache/dga-operator}/eland-venv-$key"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
