#!/usr/bin/env python3
"""Golden fixtures for the MMOD CNN face detector port (src/embed/detect/), made with the REAL dlib
(Python `dlib`, the dlib-bin wheel: `cnn_face_detection_model_v1`, upsample 0 and 1).

Writes tests/fixtures/detector/reference.json: file hashes, image geometry and detections only,
never image data (LFW pixels stay out of the repository). Every test image is built from decoded
LFW images (Pillow's RGB, which src/embed/image.rs reproduces bit for bit) by integer operations
that tests/it/detector.rs repeats: a crop, or pastes onto a grey canvas.

Usage:
  python3 tools/dlib/detector_reference.py --lfw /work/shared/data/lfw --models models \
      --write-fixture tests/fixtures/detector/reference.json

Entries (`cases[]`):
  * kind "lfw": an LFW image as it is (250x250, the face centred, about 100 px);
  * kind "tight": its centre square of side floor(0.5 * 250 + 0.5) = 125 (the face fills the crop);
  * kind "canvas": the 250x250 image pasted at (x, y) of a 560x560 canvas of grey 128;
  * kind "collage": 2 to 6 LFW images, each scaled by nothing, pasted onto one grey canvas;
  * kind "synthetic": images without a face (uniform grey, black, an integer pattern).
Each case holds `dets` (upsample 0: [left, top, right, bottom, confidence], dlib's order) and,
for a few, `dets_up1` (upsample 1).
"""
import argparse
import hashlib
import json
import os

import numpy as np
from PIL import Image

import dlib

DETECTOR_SHA256 = "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
GREY = 128


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load(root, rel):
    return np.asarray(Image.open(os.path.join(root, rel)).convert("RGB"))


def canvas(w, h, pastes):
    """A grey w x h canvas with each (image, x, y) pasted, later pastes on top, clipped."""
    out = np.full((h, w, 3), GREY, dtype=np.uint8)
    for img, x, y in pastes:
        ih, iw = img.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + iw, w), min(y + ih, h)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = img[y0 - y:y1 - y, x0 - x:x1 - x]
    return out


def synthetic(name, w, h):
    if name == "grey":
        return np.full((h, w, 3), GREY, dtype=np.uint8)
    if name == "black":
        return np.zeros((h, w, 3), dtype=np.uint8)
    # "pattern": the integer formula of tests/it/prep.rs (synthetic_image).
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    r = (x * 3 + y * 5 + (x * y) // 64) % 256
    g = ((x * x) // 16 + y * 2) % 256
    b = ((x + 2 * y) ^ ((x * y) // 128)) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def detect(det, img, up):
    return [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), float(d.confidence)]
            for d in det(img, up)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--n", type=int, default=30, help="plain LFW images, evenly spaced")
    ap.add_argument("--write-fixture", required=True)
    a = ap.parse_args()

    path = os.path.join(a.models, "mmod_human_face_detector.dat")
    assert file_sha(path) == DETECTOR_SHA256, "unexpected detector file"
    det = dlib.cnn_face_detection_model_v1(path)

    files = []
    for person in sorted(os.listdir(os.path.join(a.lfw, "images"))):
        for f in sorted(os.listdir(os.path.join(a.lfw, "images", person))):
            files.append(f"images/{person}/{f}")
    step = len(files) // a.n
    chosen = [files[i * step] for i in range(a.n)]

    cases = []

    def add(case, img, up1=False):
        case["width"], case["height"] = int(img.shape[1]), int(img.shape[0])
        case["dets"] = detect(det, img, 0)
        if up1:
            case["dets_up1"] = detect(det, img, 1)
        cases.append(case)
        print(case["kind"], case.get("file", case.get("name", "")), case["dets"], flush=True)

    for i, rel in enumerate(chosen):
        img = load(a.lfw, rel)
        add({"kind": "lfw", "file": rel}, img, up1=(i % 10 == 0))
    for i, rel in enumerate(chosen[:10]):
        img = load(a.lfw, rel)
        h, w = img.shape[:2]
        side = int(np.floor(0.5 * min(w, h) + 0.5))
        l, t = (w - side) // 2, (h - side) // 2
        add({"kind": "tight", "file": rel, "crop": [l, t, side, side]},
            np.ascontiguousarray(img[t:t + side, l:l + side]), up1=(i < 3))
    for i, rel in enumerate(chosen[10:20]):
        img = load(a.lfw, rel)
        x, y = (i * 97) % 311, (i * 61 + 13) % 311
        add({"kind": "canvas", "file": rel, "canvas": [560, 560],
             "pastes": [[rel, x, y]]}, canvas(560, 560, [(img, x, y)]))
    for n in range(2, 7):
        rels = chosen[20 + n - 2:20 + 2 * n - 2][:n]
        rels = (rels + chosen[:n])[:n]
        cols = 3 if n > 4 else 2
        w, h = cols * 260 + 20, ((n + cols - 1) // cols) * 260 + 20
        pastes = [[rel, 10 + (k % cols) * 260 + (k * 7) % 10, 10 + (k // cols) * 260 + (k * 3) % 10]
                  for k, rel in enumerate(rels)]
        add({"kind": "collage", "name": f"collage{n}", "canvas": [w, h], "pastes": pastes},
            canvas(w, h, [(load(a.lfw, r), x, y) for r, x, y in pastes]))
    for name in ["grey", "black", "pattern"]:
        add({"kind": "synthetic", "name": name}, synthetic(name, 250, 250))

    used = sorted({c["file"] for c in cases if "file" in c} |
                  {p[0] for c in cases for p in c.get("pastes", [])})
    out = {
        "produced_by": "tools/dlib/detector_reference.py",
        "dlib_version": dlib.__version__,
        "detector_sha256": DETECTOR_SHA256,
        "grey": GREY,
        "file_sha256": {rel: file_sha(os.path.join(a.lfw, rel)) for rel in used},
        "cases": cases,
    }
    os.makedirs(os.path.dirname(a.write_fixture), exist_ok=True)
    with open(a.write_fixture, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.write_fixture}: {len(cases)} cases")


if __name__ == "__main__":
    main()
