#!/usr/bin/env bash
# Fetch OpenAI CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz) from the PyPI package
# open-clip-torch, by name with pip (the wheel is downloaded without dependencies into a throwaway
# directory, never installed), and copy it into a models directory. The file is the same in every
# open-clip-torch release and in OpenAI's CLIP repository; its SHA-256 is checked.
#
# Usage: tools/clip/fetch_vocab.sh [MODELS_DIR]   (default: <repo>/models, git-ignored)
# Idempotent: a file already present with the right SHA-256 is left alone.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$REPO_ROOT/models}"
PKG="open-clip-torch==3.3.0"
PYTHON="${PYTHON:-python3}"
FILE="bpe_simple_vocab_16e6.txt.gz"
SHA256=924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a

sha_of() { sha256sum "$1" | awk '{print $1}'; }

mkdir -p "$DEST"
if [[ -f "$DEST/$FILE" && "$(sha_of "$DEST/$FILE")" == "$SHA256" ]]; then
  echo "ok      $DEST/$FILE"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "$PKG"
WHEEL="$(ls "$TMP"/open_clip_torch-*.whl)"
"$PYTHON" - "$WHEEL" "$TMP/$FILE" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
open(sys.argv[2], "wb").write(data)
PY
got="$(sha_of "$TMP/$FILE")"
if [[ "$got" != "$SHA256" ]]; then
  echo "error: SHA-256 mismatch for $FILE: got $got, want $SHA256" >&2; exit 1
fi
mv -f "$TMP/$FILE" "$DEST/$FILE"
echo "fetched $DEST/$FILE"
