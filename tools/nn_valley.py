#!/usr/bin/env python3
"""BENCHMARKS.md 8f: the valley (Otsu) of the faces' nearest-neighbour cosines on each prepared scenario
(tools/scenarios.py --prepare-only), against the labelled 1-NN Bayes threshold. Analysis only.
Usage: python3 tools/nn_valley.py   (from the repository root)"""
import numpy as np, sys
def load(split, s):
    x = np.fromfile(f"target/scenarios/{split}/{s}.bin", dtype="<f4").reshape(-1, 128)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.array([int(l) for l in open(f"target/scenarios/{split}/{s}.meta").read().split()])
    return x, y
def otsu(v, bins=400):
    h, e = np.histogram(v, bins=bins)
    c = (e[:-1] + e[1:]) / 2
    w = h / h.sum()
    best, bt = -1, None
    for i in range(1, bins):
        w0, w1 = w[:i].sum(), w[i:].sum()
        if w0 == 0 or w1 == 0: continue
        m0 = (w[:i] * c[:i]).sum() / w0; m1 = (w[i:] * c[i:]).sum() / w1
        b = w0 * w1 * (m0 - m1) ** 2
        if b > best: best, bt = b, e[i]
    return bt
for split in ["train", "test"]:
    for s in ["lfw-split", "foreign-map", "foreign-centre", "large-repeats", "degraded"]:
        x, y = load(split, s)
        for n in [1000, 3000, len(x)]:
            xs, ys = x[:n], y[:n]
            S = xs @ xs.T
            np.fill_diagonal(S, -2)
            nn = S.argmax(1); sim = S.max(1)
            same = ys[nn] == ys
            # Bayes crossing of genuine / impostor 1-NN (labels: what no stream has)
            ts = np.arange(0.85, 1.0, 0.0025)
            err = [((sim >= t) & ~same).sum() + ((sim < t) & same).sum() for t in ts]
            print(split, s, n, "otsu %.4f" % otsu(sim), "labelled-bayes %.4f" % ts[int(np.argmin(err))], "genuine-frac %.2f" % same.mean(), "median %.4f" % np.median(sim))
