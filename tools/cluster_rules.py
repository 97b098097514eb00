#!/usr/bin/env python3
"""Offline study of cluster rules on the stream's own graph (issue "Clusters that hold").

For each scenario of tools/scenarios.py (split train by default), runs `clip-cluster eval
--algorithm stream --graph-out` twice (the default configuration, and with quality.min_score = 0 so
that no face is weak), then re-clusters the dumped kept-edge graph with other cluster rules and
prints BCubed P / R / F of each. The `components` rows reproduce the stream's own numbers (a check
that the dump is the graph the engine clustered). Rules:

- components: connected components of the kept edges (what the engine does).
- whispers: Chinese whispers (label propagation) over the kept edges, weighted by score, rows in
  stream order, at most 20 sweeps.
- inc-lp: label propagation done as a stream: each face, when it arrives, takes the weighted
  majority label of its kept neighbours; the faces whose label changes pass it on, at most 64
  re-evaluations per arrival.
- support a: cluster-level linkage. Kept edges in descending score; an edge between two clusters
  A and B merges them only when the kept edges between A and B number at least
  max(1, ceil(a * min(|A|, |B|))).
- weak-t w: (graphs without weak faces) the weak-face rule as an edge threshold instead: an edge
  that touches a weak face (quality < 0.3) is kept as the default rule keeps it (its first edge to
  a face that is not weak) or when its score is above w.

usage: tools/cluster_rules.py [--split train|test] [--only a,b] [--bin PATH]
"""
import argparse, collections, math, os, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCEN = ["lfw-split", "large-repeats", "singletons-mixed", "degraded"]


def load(path):
    rows = []
    for line in open(path):
        p = line.split()
        out = []
        for t in p[3:]:
            to, sc, kept = t.split(":")
            out.append((int(to), float(sc), kept == "1"))
        rows.append((int(p[1]), p[2] == "1", out))
    return rows


def bcubed(labels, pred):
    byp = collections.defaultdict(list)
    for i, c in enumerate(pred):
        byp[c].append(i)
    nl = collections.Counter(labels)
    P = R = 0.0
    for mem in byp.values():
        cnt = collections.Counter(labels[i] for i in mem)
        for i in mem:
            P += cnt[labels[i]] / len(mem)
            R += cnt[labels[i]] / nl[labels[i]]
    n = len(labels)
    P, R = P / n, R / n
    return P, R, 2 * P * R / (P + R)


class DSU:
    def __init__(s, n):
        s.p = list(range(n))

    def f(s, x):
        while s.p[x] != x:
            s.p[x] = s.p[s.p[x]]
            x = s.p[x]
        return x


def edges_of(rows, keep):
    e = {}
    for a, (_, _, out) in enumerate(rows):
        for to, s, k in out:
            if keep(a, to, s, k):
                key = (min(a, to), max(a, to))
                e[key] = max(e.get(key, -9.0), s)
    return [(a, b, s) for (a, b), s in e.items()]


def components(n, edges):
    d = DSU(n)
    for a, b, _ in edges:
        ra, rb = d.f(a), d.f(b)
        if ra != rb:
            d.p[max(ra, rb)] = min(ra, rb)
    return [d.f(i) for i in range(n)]


def support(n, edges, alpha):
    """Cluster-level linkage with inter-cluster edge counts merged small-into-large."""
    d = DSU(n)
    size = [1] * n
    cnt = [collections.Counter() for _ in range(n)]
    for a, b, _ in edges:
        cnt[a][b] += 1
        cnt[b][a] += 1
    for a, b, _ in sorted(edges, key=lambda e: (-e[2], e[0], e[1])):
        A, B = d.f(a), d.f(b)
        if A == B:
            continue
        c = cnt[A].get(B, 0)
        if c < max(1, math.ceil(alpha * min(size[A], size[B]))):
            continue
        if len(cnt[A]) < len(cnt[B]):
            A, B = B, A
        d.p[B] = A
        size[A] += size[B]
        for C, m in cnt[B].items():
            if C == A:
                continue
            cnt[A][C] += m
            cnt[C][A] += m
            del cnt[C][B]
        cnt[A].pop(B, None)
        cnt[B] = None
    return [d.f(i) for i in range(n)]


def whispers(n, edges, iters=20):
    adj = collections.defaultdict(list)
    for a, b, s in edges:
        adj[a].append((b, s))
        adj[b].append((a, s))
    lab = list(range(n))
    for _ in range(iters):
        changed = 0
        for i in range(n):
            if not adj[i]:
                continue
            w = collections.defaultdict(float)
            for j, s in adj[i]:
                w[lab[j]] += s
            best = max(w.items(), key=lambda kv: (kv[1], -kv[0]))[0]
            if best != lab[i]:
                lab[i] = best
                changed += 1
        if not changed:
            break
    return lab


def incremental_lp(n, edges, budget=64):
    later = collections.defaultdict(list)
    for a, b, s in edges:
        later[max(a, b)].append((min(a, b), s))
    nb = collections.defaultdict(list)
    lab = [-1] * n

    def best(i):
        w = collections.defaultdict(float)
        for j, s in nb[i]:
            w[lab[j]] += s
        return max(w.items(), key=lambda kv: (kv[1], -kv[0]))[0] if w else i

    for i in range(n):
        for j, s in later[i]:
            nb[i].append((j, s))
            nb[j].append((i, s))
        lab[i] = best(i)
        q = collections.deque(j for j, _ in nb[i])
        seen = 0
        while q and seen < budget:
            x = q.popleft()
            seen += 1
            b = best(x)
            if b != lab[x]:
                lab[x] = b
                q.extend(j for j, _ in nb[x])
    return lab


def weak_threshold(rows, q, w, mq):
    def keep_rows():
        e = {}
        for a, (_, _, out) in enumerate(rows):
            wa, anchored = q[a] < mq, False
            for to, s, k in out:
                if not k:
                    continue
                wb = q[to] < mq
                keep = s > w or (not wb and not (wa and anchored))
                if wa and not wb:
                    anchored = True
                if keep:
                    key = (min(a, to), max(a, to))
                    e[key] = max(e.get(key, -9.0), s)
        return [(a, b, s) for (a, b), s in e.items()]
    return keep_rows()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--only", default="")
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "clip-cluster"))
    args = ap.parse_args()
    scen = [s for s in args.only.split(",") if s] or SCEN
    work = REPO / "target" / "scenarios" / "graphs"
    work.mkdir(parents=True, exist_ok=True)
    env0 = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_CLUSTER__")}
    print("| scenario | graph | rule | B_prec | B_rec | F_B |")
    print("|---|---|---|---|---|---|")
    for sc in scen:
        base = REPO / "target" / "scenarios" / args.split / sc
        if not base.with_suffix(".bin").exists():
            sys.exit("missing %s.bin: run tools/scenarios.py --split %s --prepare-only first" % (base, args.split))
        q = [float(x) for x in open(str(base) + ".quality")]
        for graph, extra in (("default", {}), ("no weak faces", {"CLIP_CLUSTER__QUALITY__MIN_SCORE": "0"})):
            g = work / ("%s-%s-%s.txt" % (args.split, sc, "default" if not extra else "noweak"))
            cmd = [args.bin, "eval", "--features", str(base) + ".bin", "--labels", str(base) + ".meta",
                   "--quality", str(base) + ".quality", "--order", "input", "--json", "--graph-out", str(g)]
            subprocess.run(cmd, env={**env0, **extra}, check=True, capture_output=True)
            rows = load(g)
            labels = [r[0] for r in rows]
            n = len(rows)
            kept = edges_of(rows, lambda a, b, s, k: k)
            rules = [("components", components(n, kept)), ("whispers", whispers(n, kept)),
                     ("inc-lp", incremental_lp(n, kept))]
            for a in (0.1, 0.3, 0.5):
                rules.append(("support %.1f" % a, support(n, kept, a)))
            if extra:
                for w in (0.97, 0.99, 0.999):
                    e = weak_threshold(rows, q, w, 0.3)
                    rules.append(("weak-t %.3g" % w, components(n, e)))
                    rules.append(("weak-t %.3g + support 0.3" % w, support(n, e, 0.3)))
            for name, pred in rules:
                P, R, F = bcubed(labels, pred)
                print("| %s | %s | %s | %.4f | %.4f | %.4f |" % (sc, graph, name, P, R, F), flush=True)


if __name__ == "__main__":
    main()
