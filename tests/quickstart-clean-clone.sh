#!/usr/bin/env bash
# The main command as a newcomer runs it: a clean clone of this commit, nothing of ours built,
# `deploy/quickstart.sh`, which must end with the DgaModel Ready and leave nothing running.
#
# To keep CI time sane the clone's target folder starts with the third-party crates compiled by
# the test run (SEED_TARGET, default ./target), never with anything of this workspace: the
# quickstart has to build every binary it runs itself.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
commit=$(git rev-parse HEAD)
seed=${SEED_TARGET:-$repo/target}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/dga-ci-quickstart.XXXXXX")
cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> clean clone of $commit in $scratch/clone"
git clone --quiet --no-hardlinks "$repo" "$scratch/clone"
git -C "$scratch/clone" checkout --quiet --detach "$commit"
[ ! -e "$scratch/clone/target" ] || { echo "the clone has a target folder" >&2; exit 1; }

target=$scratch/target
mkdir -p "$target/debug"
if [ -d "$seed/debug/deps" ]; then
  echo "==> seeding $target with the third-party crates of $seed (none of this workspace)"
  for d in deps build .fingerprint; do
    # Hard links where the file system allows (no second copy of gigabytes on a CI disk; only
    # the workspace's crates are built in the clone, so no seeded file is written again).
    [ -d "$seed/debug/$d" ] && { cp -al "$seed/debug/$d" "$target/debug/" 2>/dev/null ||
      cp -a --reflink=auto "$seed/debug/$d" "$target/debug/"; }
  done
  # Everything of the workspace goes: its libraries, binaries, tests, fingerprints.
  find "$target/debug" -maxdepth 2 \( -name '*dga_operator*' -o -name '*dga_standin*' \
    -o -name 'dga-operator-*' -o -name 'dga-standin-*' \) -exec rm -rf {} +
fi
for b in dga-operator dga-standin; do
  if ls "$target/debug/deps/$b"* "$target/debug/$b" >/dev/null 2>&1; then
    echo "the seed still holds $b" >&2; exit 1
  fi
done

echo "==> deploy/quickstart.sh in the clone"
mkdir -p "$scratch/tmp"
log=$scratch/quickstart.log
set +e
(cd "$scratch/clone" && CARGO_TARGET_DIR=$target TMPDIR=$scratch/tmp deploy/quickstart.sh) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "quickstart failed (exit $rc)" >&2; exit 1; }
grep -q '^==> Done: the operator .*installed .* and reports Ready' "$log" ||
  { echo "quickstart did not report the DgaModel Ready" >&2; exit 1; }
grep -Eq '^dga-demo +dga +ML-DGA-[0-9]+-[0-9]+ +Installed ' "$log" ||
  { echo "kubectl get dgamodels did not show the release Installed" >&2; exit 1; }
# The node route itself is proven by tests/node.rs; a quickstart that fell back to a local process
# still works for a newcomer, so that is a loud warning here, not a failure (DGA_REQUIRE_NODE=1
# makes it one).
if grep -q '^WARNING: the node route failed' "$log"; then
  echo "WARNING: the clean clone's quickstart fell back to a local process: its node route failed (diagnostics above)" >&2
fi
if grep -q "chart's pod on the local node" "$log"; then
  grep -Eq '^dga-operator-[a-z0-9-]+ +1/1 +Running ' "$log" ||
    { echo "the operator's pod was not shown Running and Ready" >&2; exit 1; }
fi
# Everything it started (the stand-in, the operator, etcd, kube-apiserver and
# kube-controller-manager) ran with paths under $scratch: none may be left.
if left=$(pgrep -af -- "$scratch"); then
  echo "the quickstart left processes running:" >&2; echo "$left" >&2; exit 1
fi
echo "==> quickstart from a clean clone: Ready, nothing left running"
