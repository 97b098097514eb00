#!/usr/bin/env python3
"""Reference fixtures for the preprocessing stage (src/decode.rs, src/embed/align.rs), made with the
REAL dlib (Python `dlib`, the dlib-bin wheel) and Pillow.

Writes tests/fixtures/prep/reference.json: hashes, landmark coordinates and small numbers only,
never image data (LFW pixels stay out of the repository).

Usage:
  python3 tools/dlib/prep_reference.py --lfw /work/shared/data/lfw --models models \
      --write-fixture tests/fixtures/prep/reference.json
  # optional: raw pixels for measuring agreement (kept out of the repo)
  python3 tools/dlib/prep_reference.py ... --dump-dir /tmp/prep_dump

Contents:
  * synthetic[]: images defined by an integer formula (no decoder involved) with dlib's landmarks
    on given boxes and dlib's face chips (SHA-256) for given landmarks. These test the Rust port
    bit for bit, independent of any JPEG decoder. One is large enough that dlib's
    extract_image_chip builds an image pyramid.
  * lfw[]: N LFW images spread evenly over the sorted file list: file SHA-256, SHA-256 of
    Pillow's decoded RGB, the centre chip SHA-256 (Pillow crop + BILINEAR resize), dlib's HOG
    detector box (the detection nearest the image centre, upsample 1), dlib's landmarks on that
    box and on the fixed centred boxes, and dlib's face chip (150, padding 0.25) SHA-256.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys

import numpy as np
from PIL import Image

import dlib

SP_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
# Fixed centred boxes, as fractions of min(width, height) (see fixed_box below and
# landmarks::centred_box in Rust: side = floor(fraction * min(w, h) + 0.5), left = (w - side) // 2).
BOX_FRACTIONS = [1 / 2.2, 0.38]
CENTRE_CROP_FRACTION = 0.5


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def synthetic_image(w, h):
    """Integer formula, mirrored exactly in tests/it/prep.rs (synthetic_image)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    r = (x * 3 + y * 5 + (x * y) // 64) % 256
    g = ((x * x) // 16 + y * 2) % 256
    b = ((x + 2 * y) ^ ((x * y) // 128)) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def fixed_box(w, h, fraction):
    side = int(math.floor(fraction * min(w, h) + 0.5))
    left, top = (w - side) // 2, (h - side) // 2
    return dlib.rectangle(left, top, left + side - 1, top + side - 1)


def rect_list(r):
    return [r.left(), r.top(), r.right(), r.bottom()]


def parts(shape):
    return [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)]


def centre_chip(rgb):
    im = Image.fromarray(rgb)
    w, h = im.size
    s = int(math.floor(CENTRE_CROP_FRACTION * min(w, h) + 0.5))
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((CHIP_SIZE, CHIP_SIZE), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def template_parts(cx, cy, scale, angle_deg):
    """A plausible 5-point face (dlib's mean 5-point shape) rotated, scaled and moved."""
    mean = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                     [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                     [0.4901123135679, 0.6277975316475]])
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (mean - 0.5) @ rot.T * scale + np.array([cx, cy])
    return [[int(round(p[0])), int(round(p[1]))] for p in pts]


def chip_of(img, rect, pts):
    det = dlib.full_object_detection(rect, [dlib.point(p[0], p[1]) for p in pts])
    return dlib.get_face_chip(img, det, size=CHIP_SIZE, padding=CHIP_PADDING)


def chip_entry(chip, dump, name):
    if dump:
        chip.tofile(os.path.join(dump, name + ".rgb"))
    return {"sha256": sha(chip), "sum": int(chip.astype(np.int64).sum()),
            "first8_hwc": [int(v) for v in chip.reshape(-1)[:8]]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", required=True)
    ap.add_argument("--models", default="models")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--write-fixture")
    ap.add_argument("--dump-dir")
    a = ap.parse_args()

    sp_path = os.path.join(a.models, "shape_predictor_5_face_landmarks.dat")
    with open(sp_path, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != SP_SHA256:
        sys.exit(f"{sp_path}: SHA-256 {got}, want {SP_SHA256}")
    sp = dlib.shape_predictor(sp_path)
    detector = dlib.get_frontal_face_detector()
    if a.dump_dir:
        os.makedirs(a.dump_dir, exist_ok=True)

    out = {
        "produced_by": "tools/dlib/prep_reference.py",
        "dlib_version": dlib.__version__,
        "pillow_version": Image.__version__ if hasattr(Image, "__version__") else
        __import__("PIL").__version__,
        "shape_predictor_sha256": SP_SHA256,
        "chip_size": CHIP_SIZE,
        "chip_padding": CHIP_PADDING,
        "box_fractions": BOX_FRACTIONS,
        "centre_crop_fraction": CENTRE_CROP_FRACTION,
        "synthetic": [],
        "lfw": [],
    }

    # ------------------------------------------------------------ synthetic
    synth_cases = [
        # (w, h, boxes, face templates (cx, cy, scale, angle))
        (250, 250, [[68, 68, 181, 181], [40, 50, 200, 230], [-20, 100, 120, 260]],
         [(125, 125, 110, 8.0), (60, 70, 70, -25.0), (240, 10, 80, 40.0)]),
        (1200, 900, [[300, 200, 900, 800]],
         [(600, 450, 700, 12.0), (600, 450, 150, 0.0)]),
        (96, 64, [[10, 5, 80, 60]], [(48, 32, 40, 3.0)]),
    ]
    for w, h, boxes, faces in synth_cases:
        img = synthetic_image(w, h)
        entry = {"width": w, "height": h, "image_sha256": sha(img), "landmarks": [], "chips": []}
        for b in boxes:
            r = dlib.rectangle(*b)
            entry["landmarks"].append({"box": b, "parts": parts(sp(img, r))})
        for k, (cx, cy, scale, ang) in enumerate(faces):
            pts = template_parts(cx, cy, scale, ang)
            chip = chip_of(img, dlib.rectangle(0, 0, w - 1, h - 1), pts)
            e = chip_entry(chip, a.dump_dir, f"synth_{w}x{h}_{k}")
            e["parts"] = pts
            entry["chips"].append(e)
        out["synthetic"].append(entry)

    # ------------------------------------------------------------ LFW
    root = a.lfw
    allp = []
    for person in sorted(os.listdir(os.path.join(root, "images"))):
        d = os.path.join(root, "images", person)
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".jpg"):
                allp.append(f"images/{person}/{fn}")
    pick = [allp[i * len(allp) // a.n] for i in range(a.n)]
    for k, rel in enumerate(pick):
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        pil = Image.open(os.path.join(root, rel))
        mode = pil.mode
        img = np.asarray(pil.convert("RGB"), dtype=np.uint8)
        h, w = img.shape[:2]
        if a.dump_dir:
            img.tofile(os.path.join(a.dump_dir, f"lfw_{k}_decoded.rgb"))
        e = {
            "path": rel,
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "pillow_mode": mode,
            "width": w,
            "height": h,
            "decoded_rgb_sha256": sha(img),
            "centre_chip": chip_entry(centre_chip(img), a.dump_dir, f"lfw_{k}_centre"),
            "fixed": [],
        }
        for fr in BOX_FRACTIONS:
            r = fixed_box(w, h, fr)
            shape = sp(img, r)
            e["fixed"].append({"fraction": fr, "box": rect_list(r), "parts": parts(shape),
                               "chip": chip_entry(dlib.get_face_chip(img, shape, CHIP_SIZE,
                                                                     CHIP_PADDING),
                                                  a.dump_dir, f"lfw_{k}_fixed{fr:.4f}")})
        dets = detector(img, 1)
        if len(dets) > 0:
            cx, cy = w / 2, h / 2
            best = min(dets, key=lambda d: (d.center().x - cx) ** 2 + (d.center().y - cy) ** 2)
            shape = sp(img, best)
            e["detector"] = {
                "n_detections": len(dets),
                "box": rect_list(best),
                "parts": parts(shape),
                "chip": chip_entry(dlib.get_face_chip(img, shape, CHIP_SIZE, CHIP_PADDING),
                                   a.dump_dir, f"lfw_{k}_det"),
            }
        else:
            e["detector"] = None
        out["lfw"].append(e)
        print(f"{k:3d} {rel} dets={len(dets)}", file=sys.stderr)

    # One line per innermost list keeps the file small and its diffs readable.
    text = json.dumps(out, indent=1)
    flat = lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]"  # noqa: E731
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", flat, text)
    text = re.sub(r"\[\s*(\[[^\[\]{}]*\](?:\s*,\s*\[[^\[\]{}]*\])*)\s*\]", flat, text)
    if a.write_fixture:
        with open(a.write_fixture, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
