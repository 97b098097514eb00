#!/usr/bin/env python3
"""LFW re-cropped as users' detectors crop it, for `clip-cluster verify --lfw DIR`.

Writes an LFW-shaped directory (images/<name>/<name>_NNNN.jpg and a copy of pairs.txt) outside the
repository (LFW never enters it): only the images pairs.txt names, each transformed from the
deep-funneled original (250x250, face centred, about 2.2x the detector box):

  * tight:   the centre square of side 125: the face fills the crop, as a tight detector crops;
  * canvas:  the 250x250 image pasted at a random place of a 560x560 grey (128) canvas: loose and
             off-centre, the face about a fifth of the picture's side;
  * shifted: the 250x250 image moved by a random offset of up to 60 px in x and y, the uncovered
             part grey, still 250x250: the face off-centre, partly near the border.
  * collage: not a verify set: 2 to 6 LFW images pasted side by side on one grey canvas, and a
             manifest (collage.json) of which image lies where, for the photo check.

Every random draw comes from a seed made of the variant name and the file name, so the set is the
same on every machine. JPEG quality 95.

Usage:
  python3 tools/lfw_variants.py --lfw ../shared/data/lfw --variant tight --out /tmp/lfw-tight
  target/release/clip-cluster verify --lfw /tmp/lfw-tight
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import sys

from PIL import Image

GREY = (128, 128, 128)
VARIANTS = ("tight", "canvas", "shifted", "collage")


def rng_for(variant, name):
    seed = int.from_bytes(hashlib.sha256(f"{variant}/{name}".encode()).digest()[:8], "little")
    return random.Random(seed)


def read_pairs(path):
    """The image keys (name, number) that pairs.txt names."""
    keys = set()
    with open(path) as f:
        lines = f.read().split("\n")
    for line in lines[1:]:
        p = line.split()
        if len(p) == 3:
            keys.add((p[0], int(p[1])))
            keys.add((p[0], int(p[2])))
        elif len(p) == 4:
            keys.add((p[0], int(p[1])))
            keys.add((p[2], int(p[3])))
    return sorted(keys)


def rel(name, n):
    return os.path.join("images", name, f"{name}_{n:04d}.jpg")


def transform(variant, img, file_name):
    r = rng_for(variant, file_name)
    w, h = img.size
    if variant == "tight":
        side = 125
        x0, y0 = (w - side) // 2, (h - side) // 2
        return img.crop((x0, y0, x0 + side, y0 + side))
    if variant == "canvas":
        canvas = Image.new("RGB", (560, 560), GREY)
        canvas.paste(img, (r.randint(0, 560 - w), r.randint(0, 560 - h)))
        return canvas
    if variant == "shifted":
        canvas = Image.new("RGB", (w, h), GREY)
        canvas.paste(img, (r.randint(-60, 60), r.randint(-60, 60)))
        return canvas
    raise ValueError(variant)


def write_collages(lfw, keys, out, count):
    """Collages of 2-6 images in a row-major grid with a random gap; collage.json says where."""
    r = random.Random(15)
    chosen = keys[:]
    r.shuffle(chosen)
    manifest = []
    os.makedirs(os.path.join(out, "collages"), exist_ok=True)
    at = 0
    for c in range(count):
        n = r.randint(2, 6)
        parts = chosen[at : at + n]
        at += n
        if len(parts) < 2:
            break
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        gap = r.randint(0, 40)
        canvas = Image.new("RGB", (cols * (250 + gap) + gap, rows * (250 + gap) + gap), GREY)
        placed = []
        for i, (name, k) in enumerate(parts):
            x = gap + (i % cols) * (250 + gap)
            y = gap + (i // cols) * (250 + gap)
            canvas.paste(Image.open(os.path.join(lfw, rel(name, k))).convert("RGB"), (x, y))
            placed.append({"image": rel(name, k), "x": x, "y": y, "size": 250})
        path = os.path.join("collages", f"collage_{c:04d}.jpg")
        canvas.save(os.path.join(out, path), quality=95)
        manifest.append({"collage": path, "faces": placed})
    with open(os.path.join(out, "collage.json"), "w") as f:
        json.dump({"lfw": os.path.abspath(lfw), "collages": manifest}, f, indent=1)
    return len(manifest)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", default=os.environ.get("CLIP_CLUSTER_LFW", "../shared/data/lfw"))
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--collages", type=int, default=200, help="collage: how many collages")
    a = ap.parse_args()
    pairs = os.path.join(a.lfw, "pairs.txt")
    if not os.path.isfile(pairs):
        sys.exit(f"LFW not found: no pairs.txt under {a.lfw} (set --lfw or CLIP_CLUSTER_LFW)")
    repo = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
    if os.path.realpath(a.out).startswith(repo + os.sep):
        sys.exit("refusing to write LFW-derived images inside the repository")
    keys = read_pairs(pairs)
    os.makedirs(a.out, exist_ok=True)
    if a.variant == "collage":
        n = write_collages(a.lfw, keys, a.out, a.collages)
        print(f"wrote {n} collages and collage.json under {a.out}")
        return
    shutil.copy(pairs, os.path.join(a.out, "pairs.txt"))
    for name, k in keys:
        src = os.path.join(a.lfw, rel(name, k))
        dst = os.path.join(a.out, rel(name, k))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        img = Image.open(src).convert("RGB")
        transform(a.variant, img, os.path.basename(src)).save(dst, quality=95)
    print(f"wrote {len(keys)} {a.variant} images and pairs.txt under {a.out}")


if __name__ == "__main__":
    main()
