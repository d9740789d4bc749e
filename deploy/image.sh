#!/usr/bin/env bash
# Builds the operator's image without Docker: buildah (chroot isolation, vfs storage of its own),
# from the Dockerfile's runtime stage, and writes it as an OCI archive.
#
#   deploy/image.sh OUT.tar [REF]     REF defaults to localhost/dga-operator:<Cargo version>
#
# DGA_IMAGE_BINARY=PATH packs that already-built dga-operator instead of building one (the node
# tests pack the binary `cargo test` built, saving a second full build); a dynamically linked one
# gets the shared libraries `ldd` names copied in at the same paths.
#
# The result is the image the Dockerfile describes (a static binary at /dga-operator, user
# 65532:65532, port 8080, ENTRYPOINT /dga-operator, CMD run) with two differences, both because no
# registry is reachable where this runs:
#   - the build stage (rust:1-alpine, musl) is replaced by a cargo build on this machine for the
#     gnu target with `-C target-feature=+crt-static` (glibc linked statically; aws-lc-rs builds
#     and links that way too), cached in ${XDG_CACHE_HOME:-~/.cache}/dga-operator/image/target;
#   - the distroless base (gcr.io/distroless/static-debian12:nonroot) is replaced by one built
#     here FROM scratch with what that base gives a static binary: /etc/passwd and /etc/group
#     with root and nonroot (65532), this machine's CA bundle at /etc/ssl/certs, and /tmp.
# Load it with `ctr -n k8s.io images import OUT.tar` (tests/testbed/node.sh import does).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:?usage: deploy/image.sh OUT.tar [REF]}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
REF=${2:-localhost/dga-operator:$VERSION}
BASE_REF=localhost/dga-operator/base:static-nonroot
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dga-operator"
TARGET=x86_64-unknown-linux-gnu

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

command -v buildah >/dev/null 2>&1 || die "buildah not found (Debian: apt-get install buildah; tests/testbed/node.sh deps)"
[ "$(uname -m)" = x86_64 ] || die "this script builds for $TARGET only"

if [ -n "${DGA_IMAGE_BINARY:-}" ]; then
  bin=$DGA_IMAGE_BINARY
  [ -x "$bin" ] || die "DGA_IMAGE_BINARY=$bin is not an executable file"
else
  log "building dga-operator (release, static, $TARGET)"
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --bin dga-operator --target "$TARGET" \
    --target-dir "$CACHE_ROOT/image/target" >&2
  bin="$CACHE_ROOT/image/target/$TARGET/release/dga-operator"
  # A dynamic binary would fail in a FROM scratch image with a bare "no such file or directory".
  if command -v file >/dev/null 2>&1; then
    file -L "$bin" | grep -qE 'statically linked|static-pie linked' || die "$bin is not statically linked: $(file -L "$bin")"
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dga-image.XXXXXX")
# shellcheck disable=SC2064
trap "rm -rf '$work'" EXIT
store="$work/store"
bah() { buildah --root "$store/root" --runroot "$store/runroot" --storage-driver vfs "$@"; }

# The base.
mkdir -p "$work/base/etc/ssl/certs" "$work/base/tmp" "$work/base/home/nonroot"
chmod 1777 "$work/base/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/base/etc/group"
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "no CA bundle at $ca (Debian: ca-certificates)"
cp "$ca" "$work/base/etc/ssl/certs/ca-certificates.crt"
if ldd "$bin" >/dev/null 2>&1; then
  # Dynamic: the loader and libraries at the paths the binary asks for.
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
    mkdir -p "$work/base$(dirname "$lib")"
    cp -L "$lib" "$work/base$lib"
  done
fi
c=$(bah from scratch)
bah copy "$c" "$work/base/" / >/dev/null
bah commit -q "$c" "$BASE_REF" >/dev/null

# The Dockerfile's runtime stage, on that base, with the binary built above.
mkdir -p "$work/ctx"
cp "$bin" "$work/ctx/dga-operator"
strip "$work/ctx/dga-operator" 2>/dev/null || true
awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' Dockerfile |
  sed -E "s|^FROM .*|FROM $BASE_REF|; s|^COPY --from=build /dga-operator /dga-operator|COPY dga-operator /dga-operator|" \
    >"$work/ctx/Containerfile"
grep -q '^COPY dga-operator /dga-operator' "$work/ctx/Containerfile" ||
  die "the Dockerfile's runtime stage no longer copies /dga-operator from the build stage: update $0"
bah bud -q --isolation chroot --pull=never -f "$work/ctx/Containerfile" -t "$REF" "$work/ctx" >/dev/null
rm -f "$OUT"
bah push -q "$REF" "oci-archive:$OUT:$REF"
log "wrote $REF to $OUT"
