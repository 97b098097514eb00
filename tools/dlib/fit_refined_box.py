#!/usr/bin/env python3
"""Fits the box map of landmarks::refined_box (embed.box = "refined") to dlib's HOG face detector, on
LFW's TRAINING identities only (peopleDevTrain.txt; no image of peopleDevTest.txt, no pair list).

The daemon has no face detector: the shape predictor starts from a fixed centred box, and its
landmarks depend on that box (the predictor was trained on detector boxes). The refined box is
computed from a first pass of landmarks: with c the landmarks' centroid, s their RMS distance from
it and q the 10 coordinates (p - c) / s,

    box centre = c + s * (A q + a),    box side = s * (B . q + b)

a least-squares fit of the detector's nearest-centre box (upsample --upsample) in that
face-following frame; the second predictor pass then starts from a detector-like box.

Usage:
  nice -n 10 python3 tools/dlib/fit_refined_box.py --lfw ../shared/data/lfw --models models \
      --out tools/dlib/refined_box.json

It prints the box error (pixels) and the landmark offset against the detector on the training
identities and on peopleDevTest.txt's identities (held out), for the fixed and the refined box.
The JSON holds the coefficients (copied into src/embed/align.rs REFINED_BOX) and those numbers.
"""
import argparse
import json
import os
import sys

import numpy as np

import dlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lfw_common as L  # noqa: E402


def collect(root, rels, sp, detector, upsample, box_fraction):
    """Per image with a detection: first-pass landmarks (fixed box), detector box, landmarks from
    the detector box (pixels are reloaded when needed, to keep memory small)."""
    rows = []
    for rel in rels:
        img = L.load_rgb(root, rel)
        h, w = img.shape[:2]
        det = L.nearest_centre(detector(img, upsample), w, h)
        if det is None:
            continue
        first = sp(img, L.centred_box(w, h, box_fraction))
        rows.append((rel, L.parts(first), L.rect_list(det), L.parts(sp(img, det))))
    return rows


def targets(pts, det):
    c, s, q = L.box_features(pts)
    l, t, r, b = det
    # dlib's rectangle is inclusive: centre ((l + r) / 2, (t + b) / 2), side r - l + 1.
    y = [((l + r) / 2 - c[0]) / s, ((t + b) / 2 - c[1]) / s, (r - l + 1) / s]
    return np.append(q.reshape(-1), 1.0), y


def evaluate(root, rows, sp, coef, box_fraction):
    """Mean box-corner error and mean landmark offset vs the detector, fixed vs refined."""
    out = {"fixed": [[], []], "refined": [[], []]}
    for rel, first, det, det_parts in rows:
        img = L.load_rgb(root, rel)
        h, w = img.shape[:2]
        fixed = L.centred_box(w, h, box_fraction)
        refined = L.refined_box(first, coef)
        for name, box, pts in (("fixed", fixed, first),
                               ("refined", refined, L.parts(sp(img, refined)))):
            out[name][0].append(np.abs(np.array(L.rect_list(box)) - det).mean())
            out[name][1].append(np.linalg.norm(np.array(pts) - det_parts, axis=1).mean())
    return {k: {"box_corner_px": float(np.mean(v[0])), "landmark_px": float(np.mean(v[1]))}
            for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", required=True)
    ap.add_argument("--models", default="models")
    ap.add_argument("--upsample", type=int, default=1)
    ap.add_argument("--box-fraction", type=float, default=L.BOX_FRACTION)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    sp = dlib.shape_predictor(os.path.join(a.models, "shape_predictor_5_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()
    train_rels = L.read_people(a.lfw, "peopleDevTrain.txt")
    test_rels = L.read_people(a.lfw, "peopleDevTest.txt")
    assert not set(train_rels) & set(test_rels)

    train = collect(a.lfw, train_rels, sp, detector, a.upsample, a.box_fraction)
    X, Y = zip(*(targets(first, det) for _, first, det, _ in train))
    X, Y = np.array(X), np.array(Y)
    # The 10 normalised coordinates sum to zero per axis and have unit RMS, so X is rank
    # deficient; lstsq's minimum-norm solution is the deterministic choice.
    W, *_ = np.linalg.lstsq(X, Y, rcond=None)
    coef = {"cx": W[:, 0].tolist(), "cy": W[:, 1].tolist(), "side": W[:, 2].tolist()}
    resid = np.sqrt(((X @ W - Y) ** 2).mean(axis=0))

    arrays = {k: np.array(v) for k, v in coef.items()}
    held = collect(a.lfw, test_rels, sp, detector, a.upsample, a.box_fraction)
    report = {
        "produced_by": "tools/dlib/fit_refined_box.py",
        "dlib_version": dlib.__version__,
        "detector": f"dlib.get_frontal_face_detector(), upsample {a.upsample}, nearest centre",
        "box_fraction": a.box_fraction,
        "fit_on": f"peopleDevTrain.txt: {len(train)} of {len(train_rels)} images with a detection",
        "rms_residual_in_s_units": {"cx": resid[0], "cy": resid[1], "side": resid[2]},
        "coefficients": coef,
        "train": evaluate(a.lfw, train, sp, arrays, a.box_fraction),
        "held_out": dict(evaluate(a.lfw, held, sp, arrays, a.box_fraction),
                         images=f"peopleDevTest.txt: {len(held)} of {len(test_rels)}"),
    }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in report.items() if k != "coefficients"}, indent=1))


if __name__ == "__main__":
    main()
