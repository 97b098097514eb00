#!/usr/bin/env bash
# The issue-4 GPU checks in one go, to run ON the GPU machine (the device tool: H100/H200, driver
# 580 = CUDA 13.0, no Rust, no internet). Not yet run: no GPU was lent to the sessions so far.
#
# Prepare here (README "GPU (CUDA)"): build the CUDA binary, strip it, and leave
#   clip-cluster-cuda.gz   (gzip -1 of the stripped binary: the carry limit is 64 MiB)
#   models/dlib_face_recognition_resnet_model_v1.dat   (tools/dlib/fetch_models.sh)
#   models/mmod_human_face_detector.dat                (the same script)
# in the working tree (carry the ignored paths), then on the device:
#   tools/gpu/device-checks.sh
# Results land in $OUT: nvidia-smi.txt and bench-embed.jsonl (faces/s at batch 64/512/2048 in
# f32 and bf16, each with max |diff| and min cosine against the CPU in f32; then the face detector's
# images/s on 250x250 crops and 1000x750 photos at batch 8 and 64 in f32, with its largest window
# score difference against the CPU and whether the boxes are the same).
set -euo pipefail
OUT="${OUT:-/tmp/clip-cluster-gpu}"
mkdir -p "$OUT"
BIN="${BIN:-clip-cluster-cuda.gz}"
MODEL="${MODEL:-models/dlib_face_recognition_resnet_model_v1.dat}"
DETECTOR="${DETECTOR:-models/mmod_human_face_detector.dat}"
[ -f "$BIN" ] || { echo "no $BIN here: build and gzip the CUDA binary first (README)" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "no $MODEL here: carry models/ (tools/dlib/fetch_models.sh)" >&2; exit 2; }
[ -f "$DETECTOR" ] || { echo "no $DETECTOR here: carry models/ (tools/dlib/fetch_models.sh)" >&2; exit 2; }

# The CUDA 13 libraries (cuBLAS, cuRAND, runtime) come with the machine's PyTorch, under
# site-packages/nvidia/*/lib; the driver provides libcuda.so.1.
libs=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = set()
for r in roots:
    for name in ("libcublas.so.13", "libcurand.so.10", "libcudart.so.13"):
        for f in glob.glob(os.path.join(r, "nvidia", "**", name), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

gunzip -c "$BIN" > "$OUT/clip-cluster"
chmod +x "$OUT/clip-cluster"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$OUT/clip-cluster" bench-embed --device cuda:0 --dtype f32,bf16 --batch 64,512,2048 \
    --iterations 10 --model "$MODEL" --detector "$DETECTOR" --detect-size 250x250,1000x750 \
    --detect-batch 8,64 --json | tee "$OUT/bench-embed.jsonl"
rm -f "$OUT/clip-cluster"
