#!/usr/bin/env bash
# Check that vendor/hnsw_rs is exactly pristine upstream hnsw_rs plus the patch files in
# vendor/patches/hnsw_rs, applied in order (see vendor/hnsw_rs/PATCHES.md).
#
# Steps: fetch pristine hnsw_rs (by crate name and version only) through cargo in a throwaway
# project, copy it to a temporary directory, remove the files the vendored copy deliberately
# drops, apply the scrub step, apply the patches in order, and compare the result with
# vendor/hnsw_rs (the whole tree except PATCHES.md). Exits 0 when they are identical, non-zero
# with a message otherwise.
#
# Needs cargo and patch (or git). Needs the network unless the crate is already in cargo's cache
# (it tries offline first). Not run by CI.
#
# Environment:
#   HNSW_RS_VERSION  upstream version to check against (default 0.3.5). Use another only while
#                    rebasing the patches; the comparison then fails on the version line at least.
#   KEEP=1           keep the work directory (pristine/, patched/) and print its path.
set -euo pipefail

VERSION="${HNSW_RS_VERSION:-0.3.5}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENDORED="$ROOT/vendor/hnsw_rs"
PATCH_DIR="$ROOT/vendor/patches/hnsw_rs"
CARGO="${CARGO:-cargo}"

# Files of the published crate that the vendored copy does not carry (see PATCHES.md).
DROPPED=(README.md Changes.md examples tests Cargo.lock Cargo.toml.orig .cargo_vcs_info.json)

fail() { echo "check-hnsw-patches: FAIL: $*" >&2; exit 1; }
note() { echo "check-hnsw-patches: $*"; }

[ -d "$VENDORED" ] || fail "no vendored copy at vendor/hnsw_rs"
shopt -s nullglob
PATCHES=("$PATCH_DIR"/[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
[ ${#PATCHES[@]} -gt 0 ] || fail "no patch files in vendor/patches/hnsw_rs"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-hnsw-patches.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then
    trap 'note "work directory kept: $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi

# 1. Pristine source through cargo: a throwaway project that depends on hnsw_rs =VERSION.
#    Outside the repository, so clip-cluster's [patch] section does not apply.
note "fetching pristine hnsw_rs $VERSION through cargo"
mkdir -p "$WORK/fetch/src"
cat > "$WORK/fetch/Cargo.toml" <<EOF
[package]
name = "hnsw-pristine-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
hnsw_rs = "=$VERSION"

[workspace]
EOF
echo 'fn main() {}' > "$WORK/fetch/src/main.rs"
HOST="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
TARGET_ARGS=()
[ -n "$HOST" ] && TARGET_ARGS=(--target "$HOST")
fetch() {
    (cd "$WORK/fetch" && nice -n 19 "$CARGO" generate-lockfile "$@" -q \
        && nice -n 19 "$CARGO" fetch "$@" -q "${TARGET_ARGS[@]}") >"$WORK/fetch.log" 2>&1
}
if fetch --offline; then
    note "found in cargo's offline cache"
elif fetch; then
    :
else
    cat "$WORK/fetch.log" >&2
    fail "cargo could not fetch hnsw_rs $VERSION (network needed when it is not cached)"
fi

CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
PRISTINE_SRC=""
for d in "$CARGO_HOME_DIR"/registry/src/*/"hnsw_rs-$VERSION"; do
    [ -f "$d/Cargo.toml" ] && { PRISTINE_SRC="$d"; break; }
done
mkdir -p "$WORK/pristine"
if [ -n "$PRISTINE_SRC" ]; then
    cp -a "$PRISTINE_SRC/." "$WORK/pristine/"
else
    CRATE=""
    for c in "$CARGO_HOME_DIR"/registry/cache/*/"hnsw_rs-$VERSION.crate"; do
        [ -f "$c" ] && { CRATE="$c"; break; }
    done
    [ -n "$CRATE" ] || fail "cargo fetched, but hnsw_rs-$VERSION is neither in $CARGO_HOME_DIR/registry/src nor in its cache"
    tar -xzf "$CRATE" -C "$WORK/pristine" --strip-components=1
fi

# 2. Drop what the vendored copy deliberately does not carry.
for f in "${DROPPED[@]}"; do rm -rf "${WORK:?}/pristine/$f"; done

# 3. Scrub step (not a patch file: a patch would have to contain the text it removes). The
#    vendored tree names no package-registry host: cargo's generated header in Cargo.toml names
#    one as an example, and a doc comment in src/hnswio.rs links to the anndists crate's page there.
sed -i -E '1,12s/^(# to registry) \(e\.g\., [^)]*\) (dependencies\.)$/\1 \2/' "$WORK/pristine/Cargo.toml"
sed -i -E 's#\(see crate \[anndist\]\(https://[^)]*\)\)#(see the anndists crate)#' "$WORK/pristine/src/hnswio.rs"

# 4. The patches, in order.
cp -a "$WORK/pristine" "$WORK/patched"
for p in "${PATCHES[@]}"; do
    name="$(basename "$p")"
    if command -v patch >/dev/null 2>&1; then
        if ! out="$(cd "$WORK/patched" && patch -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch -r - <"$p" 2>&1)"; then
            echo "$out" >&2
            fail "$name does not apply to pristine hnsw_rs $VERSION plus the patches before it"
        fi
        # The patches must apply exactly (no fuzz above; no offset either).
        if grep -qiE 'fuzz|offset' <<<"$out"; then
            echo "$out" >&2
            fail "$name applies only with offset or fuzz: refresh it (see PATCHES.md)"
        fi
    else
        (cd "$WORK/patched" && git apply "$p") || fail "$name does not apply (git apply)"
    fi
    note "applied $name"
done

# 5. Compare with the vendored copy: everything but PATCHES.md, build output and cargo's
#    unpack marker .cargo-ok (absent when the crate was unpacked from the cache above).
if ! diffout="$(cd "$WORK" && diff -ru --exclude=PATCHES.md --exclude=target --exclude=.cargo-ok patched "$VENDORED" 2>&1)"; then
    echo "$diffout" | sed "s#$VENDORED#vendor/hnsw_rs#g; s#$WORK/##g" >&2
    fail "vendor/hnsw_rs differs from pristine hnsw_rs $VERSION + ${#PATCHES[@]} patches (diff above: patched -> vendored)"
fi
note "OK: vendor/hnsw_rs == pristine hnsw_rs $VERSION + ${#PATCHES[@]} patches"
