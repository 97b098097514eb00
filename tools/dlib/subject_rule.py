#!/usr/bin/env python3
"""Which face of a crop is its subject? The rule behind src/embed/locate.rs `subject` (with
embed.faces_per_image = "one"), fitted on LFW's TRAINING identities only.

1. Detect (the real dlib 20 MMOD CNN detector, upsample 0, as the candle port, whose boxes are
   identical) every other pairs.txt image of a peopleDevTrain.txt identity; cache the boxes.
2. Keep the images with two or more certain faces (score >= 0); the subject is the face nearest
   the centre of the deep-funneled original (LFW centres its subject). Rules see only the moved
   picture: its size, the boxes and their scores.
3. Move the faces as tools/lfw_variants.py moves the images (standard; shifted: up to 60 px;
   canvas: anywhere on 560 x 560; tight: the centre 125 px), 20 random moves each for shifted and
   canvas, dropping faces whose centre leaves the picture, and count how often each rule picks
   another face than the subject.

Usage:
  nice -n 10 python3 tools/dlib/subject_rule.py --lfw ../shared/data/lfw --models models \
      [--cache /tmp/subject-dets.json]
Nothing is written into the repository.
"""
import argparse
import io
import json
import os
import random

import numpy as np


def detect(lfw, models, cache):
    if cache and os.path.exists(cache):
        return json.load(open(cache))
    import dlib
    from PIL import Image

    det = dlib.cnn_face_detection_model_v1(os.path.join(models, "mmod_human_face_detector.dat"))
    with open(os.path.join(lfw, "peopleDevTrain.txt")) as f:
        train = {l.split()[0] for l in f.read().split("\n")[1:] if l.strip()}
    keys = set()
    with open(os.path.join(lfw, "pairs.txt")) as f:
        for line in f.read().split("\n")[1:]:
            p = line.split()
            if len(p) == 3:
                keys |= {(p[0], int(p[1])), (p[0], int(p[2]))}
            elif len(p) == 4:
                keys |= {(p[0], int(p[1])), (p[2], int(p[3]))}
    keys = sorted(k for k in keys if k[0] in train)[::2]
    out = []
    for n, i in keys:
        img = np.array(Image.open(f"{lfw}/images/{n}/{n}_{i:04d}.jpg").convert("RGB"))
        boxes = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence] for d in det(img, 0)]
        out.append({"k": f"{n}_{i:04d}", "d": boxes})
    if cache:
        json.dump(out, open(cache, "w"))
    return out


def centre(b):
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)


# src/embed/locate.rs `content_box`: the picture without uniform margins (padding, letterbox).
MARGIN_TOLERANCE = 10


def content_box(a):
    """[x0, y0, x1, y1) of an H x W x 3 uint8 array, as the Rust function computes it."""
    h, w = a.shape[:2]
    a = a.astype(np.int16)
    tol = MARGIN_TOLERANCE

    def run(lines, ref):
        n = 0
        for line in lines:
            if np.abs(line - ref).max() > tol:
                break
            n += 1
        return n

    top = run((a[y] for y in range(h)), a[0, 0])
    bottom = run((a[y] for y in range(h - 1, -1, -1)), a[h - 1, 0])
    left = run((a[:, x] for x in range(w)), a[0, 0])
    right = run((a[:, x] for x in range(w - 1, -1, -1)), a[0, w - 1])
    x0, y0, x1, y1 = left, top, w - right, h - bottom
    if x1 - x0 < w / 4 or y1 - y0 < h / 4:
        return [0, 0, w, h]
    return [x0, y0, x1, y1]


def rules(w, h, area=None):
    """The rules on a w x h picture; `area` = [x0, y0, x1, y1): the content-box variants' part."""
    cx, cy = (w - 1) / 2, (h - 1) / 2
    if area is not None:
        x0, y0, x1, y1 = area
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        w, h = x1 - x0, y1 - y0
    dist = lambda b: np.hypot(centre(b)[0] - cx, centre(b)[1] - cy)

    side = lambda b: min(b[2] - b[0], b[3] - b[1])

    def scored(fs, margin):
        return [b for b in fs if b[4] >= max(x[4] for x in fs) - margin]

    def among(margin):
        return lambda fs: min(scored(fs, margin), key=dist)

    def large(size, margin=0.1):
        def pick(fs):
            c = scored(fs, margin)
            return min([b for b in c if side(b) >= size * max(side(x) for x in c)], key=dist)

        return pick

    def central_else_large(centre, size, margin=0.1):
        def pick(fs):
            b = among(margin)(fs)
            return b if dist(b) <= centre * min(w, h) else large(size, margin)(fs)

        return pick

    return {
        "nearest the centre": lambda fs: min(fs, key=dist),
        "best score": lambda fs: max(fs, key=lambda b: b[4]),
        "largest": lambda fs: max(fs, key=side),
        "nearest among score >= best - 0.1": among(0.1),
        "nearest among score >= best - 0.2": among(0.2),
        "nearest among score >= best - 0.3": among(0.3),
        "nearest of size >= 0.9 largest, score >= best - 0.1": large(0.9),
        "nearest of size >= 0.8 largest, score >= best - 0.1": large(0.8),
        "central (0.05), else nearest of size >= 0.9": central_else_large(0.05, 0.9),
        "central (0.1), else nearest of size >= 0.9 (shipped)": central_else_large(0.1, 0.9),
        "central (0.1), else nearest of size >= 0.95": central_else_large(0.1, 0.95),
        "central (0.15), else nearest of size >= 0.9": central_else_large(0.15, 0.9),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", default=os.environ.get("CLIP_CLUSTER_LFW", "../shared/data/lfw"))
    ap.add_argument("--models", default="models")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.lfw, "pairs.txt")):
        raise SystemExit(f"LFW not found at {a.lfw} (--lfw or CLIP_CLUSTER_LFW)")
    dets = detect(a.lfw, a.models, a.cache)
    several, images = [], []
    from PIL import Image

    for e in dets:
        fs = [b for b in e["d"] if b[4] >= 0]
        if len(fs) < 2:
            continue
        several.append(fs)
        images.append(Image.open(f"{a.lfw}/images/{e['k'][:-5]}/{e['k']}.jpg").convert("RGB"))
    trimmed = sum(content_box(np.array(im)) != [0, 0, 250, 250] for im in images)
    print(f"{len(dets)} training images, {len(several)} with several certain faces ({trimmed} with a uniform margin)")

    def picture(im, side, dx, dy):
        """The moved picture as tools/lfw_variants.py makes it (JPEG quality 95, read back)."""
        if side == 125:
            out = im.crop((-dx, -dy, -dx + side, -dy + side))
        else:
            out = Image.new("RGB", (side, side), (128, 128, 128))
            out.paste(im, (dx, dy))
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=95)
        buf.seek(0)
        return np.array(Image.open(buf).convert("RGB"))
    r = random.Random(1)
    variants = [
        ("standard", 250, lambda: (0, 0), 1),
        ("shifted", 250, lambda: (r.randint(-60, 60), r.randint(-60, 60)), 20),
        ("canvas", 560, lambda: (r.randint(0, 310), r.randint(0, 310)), 20),
        ("tight", 125, lambda: (-62, -62), 1),
    ]
    print("| rule | " + " | ".join(v[0] for v in variants) + " |")
    print("|---|" + "---|" * len(variants))
    table = {}
    for name, side, move, reps in variants:
        wrong, n = {}, 0
        for fs, im in zip(several, images):
            truth = min(range(len(fs)), key=lambda i: np.hypot(centre(fs[i])[0] - 124.5, centre(fs[i])[1] - 124.5))
            for _ in range(reps):
                dx, dy = move()
                moved = [[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy, b[4], i] for i, b in enumerate(fs)]
                moved = [b for b in moved if 0 <= centre(b)[0] < side and 0 <= centre(b)[1] < side]
                if not any(b[5] == truth for b in moved):
                    continue
                n += 1
                for rule, pick in rules(side, side).items():
                    wrong[rule] = wrong.get(rule, 0) + (pick(moved)[5] != truth)
                box = content_box(picture(im, side, dx, dy))
                for rule, pick in rules(side, side, box).items():
                    key = rule + " [content box]"
                    wrong[key] = wrong.get(key, 0) + (pick(moved)[5] != truth)
        for rule, v in wrong.items():
            table.setdefault(rule, []).append(f"{100 * v / max(n, 1):.1f}%")
    for rule, cells in table.items():
        print(f"| {rule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
