"""Shared helpers for the LFW scripts in tools/dlib: image lists, dlib's boxes, the 10-fold protocol
(the same as src/eval/lfw.rs: Euclidean distance, the threshold chosen on nine folds and tested on the
tenth, ties keep the smallest threshold), and the landmark-derived face box (landmarks::refined_box).
"""
import math
import os

import numpy as np
from PIL import Image

import dlib

# Default embed.box_fraction (config/default.toml): LFW crops are cut at 2.2x the detector box.
BOX_FRACTION = 0.4545


def image_rel(name, n):
    return f"images/{name}/{name}_{n:04d}.jpg"


def read_pairs(root):
    """[(fold, rel_a, rel_b, same)] from pairs.txt."""
    with open(os.path.join(root, "pairs.txt")) as f:
        lines = [ln.split() for ln in f if ln.strip()]
    folds, per = int(lines[0][0]), int(lines[0][1])
    out = []
    for k, t in enumerate(lines[1:]):
        fold = k // (2 * per)
        if len(t) == 3:
            out.append((fold, image_rel(t[0], int(t[1])), image_rel(t[0], int(t[2])), True))
        else:
            out.append((fold, image_rel(t[0], int(t[1])), image_rel(t[2], int(t[3])), False))
    assert len(out) == folds * per * 2, (len(out), folds, per)
    return folds, out


def read_people(root, fname):
    """Every image of the identities in a people file (peopleDevTrain.txt: header = count)."""
    with open(os.path.join(root, fname)) as f:
        lines = [ln.split() for ln in f if ln.strip()]
    out = []
    for t in lines[1:]:
        out.extend(image_rel(t[0], i) for i in range(1, int(t[1]) + 1))
    return out


def load_rgb(root, rel):
    return np.asarray(Image.open(os.path.join(root, rel)).convert("RGB"), dtype=np.uint8)


def centred_box(w, h, fraction=BOX_FRACTION):
    """landmarks::centred_box."""
    side = max(int(math.floor(fraction * min(w, h) + 0.5)), 1)
    left, top = (w - side) // 2, (h - side) // 2
    return dlib.rectangle(left, top, left + side - 1, top + side - 1)


def nearest_centre(dets, w, h):
    if len(dets) == 0:
        return None
    cx, cy = w / 2, h / 2
    return min(dets, key=lambda d: (d.center().x - cx) ** 2 + (d.center().y - cy) ** 2)


def parts(shape):
    return [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)]


def rect_list(r):
    return [r.left(), r.top(), r.right(), r.bottom()]


def box_features(pts):
    """The landmark-derived quantities the box map uses, in a frame that moves and scales with the
    face: the landmarks' centroid c, their RMS distance s from it (at least 1) and the normalised
    coordinates (p - c) / s. Sequential sums in the order of landmarks::refined_box, so the two agree
    to the last bit."""
    n = len(pts)
    cx = sum(float(p[0]) for p in pts) / n
    cy = sum(float(p[1]) for p in pts) / n
    ms = sum((p[0] - cx) ** 2 + (p[1] - cy) ** 2 for p in pts) / n
    s = max(math.sqrt(ms), 1.0)
    q = np.array([[(p[0] - cx) / s, (p[1] - cy) / s] for p in pts])
    return np.array([cx, cy]), s, q


def refined_box(pts, coef):
    """landmarks::refined_box: the face box predicted from one pass of landmarks, centre = c + s * (A q
    + a), side = s * (B . q + b), with q the 10 normalised coordinates (x0, y0, x1, ...)."""
    c, s, q = box_features(pts)
    q = [float(v) for v in q.reshape(-1)]

    def apply(w):
        return sum(a * float(b) for a, b in zip(q, w[:10])) + float(w[10])

    bx, by = c[0] + s * apply(coef["cx"]), c[1] + s * apply(coef["cy"])
    side = max(int(math.floor(s * apply(coef["side"]) + 0.5)), 1)
    left = int(math.floor(bx - side / 2 + 0.5))
    top = int(math.floor(by - side / 2 + 0.5))
    return dlib.rectangle(left, top, left + side - 1, top + side - 1)


def best_threshold(items):
    """src/eval/lfw.rs best_threshold."""
    v = sorted(items, key=lambda x: x[0])
    n = max(len(v), 1)
    correct = sum(1 for x in v if not x[1])
    best = ((v[0][0] - 1e-9) if v else 0.0, correct)
    for i in range(len(v)):
        correct += 1 if v[i][1] else -1
        if i + 1 < len(v) and v[i + 1][0] == v[i][0]:
            continue
        t = 0.5 * (v[i][0] + v[i + 1][0]) if i + 1 < len(v) else v[i][0]
        if correct > best[1]:
            best = (t, correct)
    return best[0], best[1] / n


def k_fold(distances, pairs, folds):
    """(mean, std) of the per-fold accuracies (population std, as src/eval/lfw.rs)."""
    accs = []
    for f in range(folds):
        train = [(d, p[3]) for d, p in zip(distances, pairs) if p[0] != f]
        t, _ = best_threshold(train)
        test = [(d, p[3]) for d, p in zip(distances, pairs) if p[0] == f]
        accs.append(sum(1 for d, s in test if (d <= t) == s) / max(len(test), 1))
    m = sum(accs) / len(accs)
    sd = math.sqrt(sum((a - m) ** 2 for a in accs) / len(accs))
    return m, sd
