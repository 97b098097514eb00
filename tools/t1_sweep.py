#!/usr/bin/env python3
"""BCubed F of the engine as it runs on a calibrated stream (cosine of the raw vectors, identity
proxy, components unless SUPPORT=x, the configured k and t2) over a grid of engine.t1, on a
prepared scenario (tools/scenarios.py --prepare-only). One JSON line per t1. Tune with train
scenarios only (tools/scenarios.md). Usage:
    tools/t1_sweep.py SPLIT SCENARIO T1_LO T1_HI STEP   (BIN=path to clip-cluster, SUPPORT=0.3)"""
import json, os, subprocess, sys
import numpy as np
split, scn, lo, hi, step = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
base = f"target/scenarios/{split}/{scn}"
binp = os.environ.get("BIN", "target/release/clip-cluster")
env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_CLUSTER__")}
env.update(RUST_LOG="error", CLIP_CLUSTER__CALIBRATION__MODE="trained", CLIP_CLUSTER__EDGE__SCORER="cosine",
           CLIP_CLUSTER__PROXY__MODE="identity", CLIP_CLUSTER__ENGINE__SUPPORT=os.environ.get("SUPPORT", "0"),
           CLIP_CLUSTER__PROXY__REFRESH_PER_INSERT="0")
out = []
t = lo
while t <= hi + 1e-9:
    e = dict(env, CLIP_CLUSTER__ENGINE__T1="%.4f" % t)
    r = subprocess.run(["nice", "-n", "5", binp, "eval", "--features", base + ".bin", "--labels", base + ".meta",
                        "--order", "input", "--json"], env=e, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-2000:])
    j = json.loads(r.stdout)
    row = {"t1": round(t, 4), "f_b": round(j["bcubed"]["f"], 4), "p_b": round(j["bcubed"]["precision"], 4), "clusters": j["n_clusters"]}
    out.append(row)
    print(json.dumps(row), flush=True)
    t += step
