#!/usr/bin/env python3
"""How much is a detector-quality face box worth? LFW verification (pairs.txt, the 10-fold protocol
of src/eval/lfw.rs) with the REAL dlib (Python `dlib`, the dlib-bin wheel): shape predictor ->
face chip (150 px, padding 0.25) -> dlib_face_recognition_resnet_model_v1, from different boxes:

  centred   the fixed centred box of landmarks::centred_box (embed.box_fraction 0.4545): the sanity
            check, which should reproduce `clip-cluster verify` with box = "fixed"
  det0/det1 dlib's HOG frontal face detector (upsample 0 / 1), the detection nearest the image
            centre; the centred box when it finds none (the count is printed)
  refined   the centred-box landmarks -> the box map fitted by fit_refined_box.py (--coef) -> the
            second predictor pass (landmarks::refined_box, box = "refined")
  refinedN  as refined, with N - 1 further map + predictor rounds

Usage:
  nice -n 10 python3 tools/dlib/lfw_detector_ceiling.py --lfw ../shared/data/lfw --models models \
      --variants centred,det0,det1 [--coef tools/dlib/refined_box.json] [--cache /tmp/lfw_ceiling]

Descriptors are cached per chip (SHA-256 of the chip pixels) under --cache, so variants that give
the same chip are computed once and reruns are cheap. Nothing is written into the repository.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

import dlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lfw_common as L  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", required=True)
    ap.add_argument("--models", default="models")
    ap.add_argument("--variants", default="centred,det1")
    ap.add_argument("--coef", help="refined-box coefficients (fit_refined_box.py)")
    ap.add_argument("--box-fraction", type=float, default=L.BOX_FRACTION)
    ap.add_argument("--cache", default="/tmp/lfw_ceiling")
    ap.add_argument("--flip", action="store_true", help="also average with the mirrored chip")
    a = ap.parse_args()

    os.makedirs(a.cache, exist_ok=True)
    sp = dlib.shape_predictor(os.path.join(a.models, "shape_predictor_5_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(
        os.path.join(a.models, "dlib_face_recognition_resnet_model_v1.dat"))
    detector = dlib.get_frontal_face_detector()
    coef = None
    if a.coef:
        with open(a.coef) as f:
            coef = {k: np.array(v) for k, v in json.load(f)["coefficients"].items()}

    folds, pairs = L.read_pairs(a.lfw)
    rels = sorted({p[1] for p in pairs} | {p[2] for p in pairs})
    variants = a.variants.split(",")

    desc_path = os.path.join(a.cache, "descriptors.npz")
    cache = dict(np.load(desc_path)) if os.path.exists(desc_path) else {}
    n_new = 0

    def descriptor(chip):
        nonlocal n_new
        key = hashlib.sha256(chip.tobytes()).hexdigest() + ("f" if a.flip else "")
        if key not in cache:
            v = np.array(net.compute_face_descriptor(chip))
            if a.flip:
                v = 0.5 * (v + np.array(net.compute_face_descriptor(
                    np.ascontiguousarray(chip[:, ::-1]))))
            cache[key] = v
            n_new += 1
            if n_new % 500 == 0:
                np.savez(desc_path, **cache)
        return cache[key]

    vecs = {v: {} for v in variants}
    misses = {v: 0 for v in variants}
    t0 = time.time()
    for i, rel in enumerate(rels):
        img = L.load_rgb(a.lfw, rel)
        h, w = img.shape[:2]
        fixed = L.centred_box(w, h, a.box_fraction)
        first = None
        for v in variants:
            if v == "centred":
                box = fixed
            elif v in ("det0", "det1"):
                box = L.nearest_centre(detector(img, int(v[-1])), w, h)
                if box is None:
                    misses[v] += 1
                    box = fixed
            elif v.startswith("refined"):
                rounds = int(v[len("refined"):] or 1)
                if first is None:
                    first = sp(img, fixed)
                shape = first
                for _ in range(rounds):
                    shape = sp(img, L.refined_box(L.parts(shape), coef))
                box = shape.rect
            else:
                sys.exit(f"unknown variant {v}")
            shape = sp(img, box)
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            vecs[v][rel] = descriptor(chip)
        if (i + 1) % 500 == 0:
            print(f"{i + 1}/{len(rels)} images, {time.time() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    np.savez(desc_path, **cache)

    for v in variants:
        d = [float(np.linalg.norm(vecs[v][p[1]] - vecs[v][p[2]])) for p in pairs]
        m, sd = L.k_fold(d, pairs, folds)
        extra = f", no detection on {misses[v]} images (centred box used)" if v.startswith(
            "det") else ""
        print(f"{v}{' +flip' if a.flip else ''}: {100 * m:.2f}% +- {100 * sd:.2f} "
              f"({len(rels)} images{extra})", flush=True)


if __name__ == "__main__":
    main()
