#!/usr/bin/env python3
"""The evaluation scenario suite (tools/scenarios.md): seeded LFW streams that model what a user
of the daemon meets (camera repeats, many one-off faces, bad pictures, a foreign embedding space),
each in a train version (peopleDevTrain.txt identities only) and a test version
(peopleDevTest.txt identities only), clustered by `clip-cluster eval --order input` with the
stream engine and every peer at its fixed LFW-train threshold.

Usage:
  tools/scenarios.py [--lfw DIR] [--split train|test|both] [--only NAME,...]
                     [--set SECTION__KEY=VALUE ...] [--oracle] [--json OUT.json] [--prepare-only]

Everything generated goes under target/scenarios/ (images, embeddings, scenario files, manifest);
embeddings are cached and reused while their input list is unchanged. Python 3.11, numpy and
Pillow. Progress on stderr, markdown tables on stdout.
"""
import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "target" / "scenarios"
MANIFEST = WORK / "manifest.json"
DIM = 128
SPLITS = ("train", "test")
PEOPLE_FILE = {"train": "peopleDevTrain.txt", "test": "peopleDevTest.txt"}
SCENARIOS = ("lfw-split", "large-repeats", "singletons-mixed", "degraded", "whole-lfw",
             "foreign-map", "foreign-centre")
# Peers at their fixed LFW-train cosine thresholds (BENCHMARKS.md, QUALITY).
PEERS = (("chinese-whispers", 0.95), ("immich", 0.945), ("dbscan", 0.95), ("knn-components", 0.95))
LARGE_MIN = {"train": 20, "test": 10}  # large-repeats: photos per identity
REPEATS = 2
DEGRADED_MIN = 4
DEGRADED_CAP = 2500
DEGRADATIONS = ("dark", "side-light", "low-contrast", "blur", "low-res", "jpeg", "grey")
MAP_SEED = {"train": 101, "test": 202}
ORACLE_KS = (2, 5)
ORACLE_POINTS = 15
# Bump when the generated images change, so that cached images and embeddings are remade.
REPEATS_VERSION = 1
DEGRADED_VERSION = 1


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg):
    sys.exit("scenarios.py: " + msg)


# ---------------------------------------------------------------- files and manifest

def load_manifest():
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text())
    return {"embed": {}, "images": {}, "scenarios": {}}


def save_manifest(m):
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=1, sort_keys=True))
    tmp.replace(MANIFEST)


def read_people(lfw, split):
    path = lfw / PEOPLE_FILE[split]
    lines = path.read_text().splitlines()
    out = []
    for line in lines[1:]:
        if line.strip():
            name, count = line.split("\t")
            out.append((name, int(count)))
    if len(out) != int(lines[0].strip()):
        die("%s: header says %s people, found %d" % (path, lines[0].strip(), len(out)))
    return out


def is_image(p):
    return p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")


def list_faces(root):
    """The images `clip-cluster embed --faces root` embeds, in its order (sorted identity folders,
    sorted files; src/eval/dataset.rs `list`), as (identity, absolute path)."""
    if (root / "images").is_dir():
        root = root / "images"
    out = []
    for person in sorted(os.listdir(root)):
        pdir = root / person
        if not pdir.is_dir():
            continue
        for f in sorted(os.listdir(pdir)):
            p = pdir / f
            if p.is_file() and is_image(p):
                out.append((person, p))
    return out


def write_scenario(base, vectors, names_per_row, paths_per_row):
    """Writes base.bin (f32 rows), base.meta (labels), base.meta.names, base.paths."""
    names = sorted(set(names_per_row))
    label = {n: i for i, n in enumerate(names)}
    v = np.ascontiguousarray(vectors, dtype="<f4")
    assert v.shape == (len(names_per_row), DIM)
    base.parent.mkdir(parents=True, exist_ok=True)
    v.tofile(str(base) + ".bin")
    Path(str(base) + ".meta").write_text("".join("%d\n" % label[n] for n in names_per_row))
    Path(str(base) + ".meta.names").write_text("".join(n + "\n" for n in names))
    Path(str(base) + ".paths").write_text("".join(str(p) + "\n" for p in paths_per_row))
    counts = {}
    for n in names_per_row:
        counts[n] = counts.get(n, 0) + 1
    return {"faces": len(names_per_row), "identities": len(names),
            "largest_identity": max(counts.values()),
            "singletons": sum(1 for c in counts.values() if c == 1)}


# ---------------------------------------------------------------- embedding (cached)

class Embedding:
    """Rows of one `clip-cluster embed` run, looked up by image path."""

    def __init__(self, base, root):
        self.vectors = np.fromfile(str(base) + ".bin", dtype="<f4").reshape(-1, DIM)
        rel = Path(str(base) + ".paths").read_text().splitlines()
        assert len(rel) == len(self.vectors), base
        self.row = {(root / r).resolve(): i for i, r in enumerate(rel)}

    def get(self, path):
        return self.row.get(Path(path).resolve())


# The suite's embedder, pinned: LFW's own crop geometry (the fixed box, one landmark pass), so that
# the scenarios judge the clustering on the same vectors whatever the embedder's defaults become
# (the detector's effect on LFW is measured apart, BENCHMARKS.md section 10). Part of the cache key.
EMBEDDER = {"EMBED__LOCATE": "fixed", "EMBED__LANDMARK_PASSES": "1"}


def input_key(root, faces, chip):
    h = hashlib.sha256(("chip=%s\n" % chip).encode())
    h.update(("embedder=%s\n" % sorted(EMBEDDER.items())).encode())
    for _, p in faces:
        h.update(("%s\t%d\n" % (p.relative_to(root), p.stat().st_size)).encode())
    return h.hexdigest()


def embed(manifest, args, job, root, chip="aligned"):
    """Embeds the folder `root` once; later calls reuse the files while the input list (relative
    paths, sizes) and chip are unchanged. Returns an Embedding."""
    edir = WORK / "embed"
    base = edir / job
    faces = list_faces(root)
    img_root = root / "images" if (root / "images").is_dir() else root
    key = input_key(img_root, faces, chip)
    entry = manifest["embed"].get(job)
    done = all(Path(str(base) + s).exists() for s in (".bin", ".meta", ".paths"))
    if entry and entry.get("input_sha256") == key and done and not args.force_embed:
        return Embedding(base, img_root)
    edir.mkdir(parents=True, exist_ok=True)
    logf = Path(str(base) + ".log")
    log("embedding %s: %d images of %s (chip %s), about %.0f s at 45 faces/s; log %s"
        % (job, len(faces), root, chip, len(faces) / 45, logf))
    cmd = ["nice", "-n", "10", args.bin, "embed", "--faces", str(root), "--out", str(base) + ".bin",
           "--labels-out", str(base) + ".meta", "--chip", chip]
    env = dict(os.environ, RUST_LOG="error")
    env.update({"CLIP_CLUSTER__" + k: v for k, v in EMBEDDER.items()})
    t0 = time.time()
    with open(logf, "w") as lf:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT).returncode
    secs = time.time() - t0
    if rc != 0:
        die("embed failed (rc %d): %s; see %s" % (rc, " ".join(cmd), logf))
    skipped = {}
    for line in logf.read_text(errors="replace").splitlines():
        if line.startswith("skipped "):
            path, _, why = line[len("skipped "):].partition(": ")
            skipped[Path(path).resolve()] = why
    kept = [(n, p) for n, p in faces if p.resolve() not in skipped]
    rows = os.path.getsize(str(base) + ".bin") // (4 * DIM)
    if rows != len(kept):
        die("%s: %d rows but %d listed - %d skipped images; cannot map rows to images"
            % (job, rows, len(faces), len(skipped)))
    Path(str(base) + ".paths").write_text("".join(str(p.relative_to(img_root)) + "\n" for _, p in kept))
    manifest["embed"][job] = {
        "root": str(root), "chip": chip, "input_sha256": key, "images": len(faces), "rows": rows,
        "rejected": {str(Path(p).relative_to(img_root.resolve())): w for p, w in skipped.items()},
        "seconds": round(secs, 1), "faces_per_second": round(len(faces) / max(secs, 1e-9), 1),
        "binary": args.bin_info,
        "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_manifest(manifest)
    log("  %d rows in %.0f s (%.1f faces/s), %d rejected" % (rows, secs, len(faces) / secs, len(skipped)))
    return Embedding(base, img_root)


# ---------------------------------------------------------------- generated images

def hash_int(*parts):
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def jitter(img, rng):
    """A camera-like repeat: translation up to +-5 px, scale +-5%, brightness +-12%, JPEG re-encode
    at quality 60-90 (edges replicated, bilinear). Returns JPEG bytes and the parameters."""
    tx, ty = rng.uniform(-5, 5), rng.uniform(-5, 5)
    s = rng.uniform(0.95, 1.05)
    b = rng.uniform(0.88, 1.12)
    q = rng.randint(60, 90)
    pad = 24
    a = np.pad(np.asarray(img.convert("RGB")), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    src = Image.fromarray(a)
    w, h = img.size
    cx, cy = w / 2.0, h / 2.0
    # output (x, y) samples input ((x - cx - tx) / s + cx, ...), shifted by the padding
    data = (1 / s, 0, cx - (cx + tx) / s + pad, 0, 1 / s, cy - (cy + ty) / s + pad)
    out = src.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    arr = np.clip(np.asarray(out, dtype=np.float32) * b, 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=q)
    return buf.getvalue(), {"tx": round(tx, 3), "ty": round(ty, 3), "scale": round(s, 4),
                            "brightness": round(b, 4), "quality": q}


def degrade(img, kind, name):
    """One degradation; returns (bytes, extension). Lossless PNG except `jpeg`."""
    rgb = img.convert("RGB")
    a = np.asarray(rgb, dtype=np.float32)
    if kind == "dark":
        a = 255.0 * ((a / 255.0) * 0.18) ** 1.3
    elif kind == "side-light":
        ramp = np.linspace(0.08, 1.0, a.shape[1], dtype=np.float32)
        if hash_int("side-light", name) % 2:
            ramp = ramp[::-1]
        a = a * ramp[None, :, None]
    elif kind == "low-contrast":
        a = a + 0.7 * (128.0 - a)
    elif kind == "blur":
        a = np.asarray(rgb.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
    elif kind == "low-res":
        small = rgb.resize((36, 36), Image.Resampling.BILINEAR)
        a = np.asarray(small.resize(rgb.size, Image.Resampling.BILINEAR), dtype=np.float32)
    elif kind == "grey":
        a = np.asarray(rgb.convert("L").convert("RGB"), dtype=np.float32)
    out = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    buf = io.BytesIO()
    if kind == "jpeg":
        out.save(buf, "JPEG", quality=4)
        return buf.getvalue(), ".jpg"
    out.save(buf, "PNG")
    return buf.getvalue(), ".png"


def degradation_of(name):
    return DEGRADATIONS[hash_int("degrade", name) % len(DEGRADATIONS)]


def make_images(manifest, set_name, version, items, make):
    """items: list of (identity, out file name, source path, tag). make(source, tag, name) ->
    (bytes, params). Writes target/scenarios/images/set_name/<identity>/<file>; returns the root."""
    root = WORK / "images" / set_name
    entry = manifest["images"].get(set_name)
    want = sorted("%s/%s" % (i, f) for i, f, _, _ in items)
    if entry and entry.get("version") == version and entry.get("files_sha256") == \
            hashlib.sha256("\n".join(want).encode()).hexdigest() and \
            (root.parent / (set_name + ".json")).exists() and all((root / w).exists() for w in want):
        return root
    log("writing %d images to %s" % (len(items), root))
    if root.exists():
        for p in sorted(root.glob("*/*")):
            p.unlink()
    params = {}
    for n, (ident, fname, src, tag) in enumerate(items):
        data, par = make(src, tag, fname)
        (root / ident).mkdir(parents=True, exist_ok=True)
        (root / ident / fname).write_bytes(data)
        params["%s/%s" % (ident, fname)] = par
        if (n + 1) % 1000 == 0:
            log("  %d/%d" % (n + 1, len(items)))
    # Per-image parameters beside the images; the manifest keeps the degradation kind per image.
    (root.parent / (set_name + ".json")).write_text(json.dumps(params, indent=0, sort_keys=True))
    entry = {"version": version, "images": len(items),
             "files_sha256": hashlib.sha256("\n".join(want).encode()).hexdigest(),
             "params_file": str((root.parent / (set_name + ".json")).relative_to(REPO))}
    if all("kind" in v for v in params.values()):
        entry["kind"] = {k: v["kind"] for k, v in sorted(params.items())}
    manifest["images"][set_name] = entry
    save_manifest(manifest)
    return root


# ---------------------------------------------------------------- scenarios

def shuffled(seq, *seed):
    seq = list(seq)
    random.Random(":".join(["clip-cluster-scenarios", *map(str, seed)])).shuffle(seq)
    return seq


def foreign_map(x, seed):
    """x' = normalize(W2 tanh(3 W1 x) + 0.3 W3 x), W_i seeded 128x128 with N(0, 1/128) entries."""
    rng = np.random.default_rng(seed)
    w1, w2, w3 = (rng.standard_normal((DIM, DIM)) / np.sqrt(DIM) for _ in range(3))
    x = x.astype(np.float64)
    y = np.tanh(3.0 * x @ w1.T) @ w2.T + 0.3 * x @ w3.T
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


class Prep:
    """Builds scenario files on demand, embedding and generating what is missing."""

    def __init__(self, args, manifest):
        self.args, self.m = args, manifest
        self.lfw = args.lfw
        self.people = {s: read_people(self.lfw, s) for s in SPLITS}
        self.images = self.lfw / "images"
        self._emb = {}

    def emb(self, job):
        if job not in self._emb:
            if job == "lfw-aligned":
                self._emb[job] = embed(self.m, self.args, job, self.lfw, "aligned")
            elif job == "lfw-centre":
                self._emb[job] = embed(self.m, self.args, job, self.lfw, "centre")
            elif job.startswith("repeats-"):
                self._emb[job] = embed(self.m, self.args, job, self.repeat_images(job[8:]))
            elif job.startswith("degraded-"):
                self._emb[job] = embed(self.m, self.args, job, self.degraded_images(job[9:]))
            else:
                raise KeyError(job)
        return self._emb[job]

    def photos(self, names):
        """(identity, path) of every original photo of these identities, sorted."""
        out = []
        for n in sorted(names):
            for f in sorted(os.listdir(self.images / n)):
                if is_image(self.images / n / f):
                    out.append((n, self.images / n / f))
        return out

    def large(self, split):
        return [n for n, c in self.people[split] if c >= LARGE_MIN[split]]

    def degraded_people(self, split):
        out, total = [], 0
        for n, c in sorted(self.people[split]):
            if c < DEGRADED_MIN:
                continue
            if total + c > DEGRADED_CAP:
                break
            out.append(n)
            total += c
        return out

    def repeat_images(self, split):
        items = []
        for ident, p in self.photos(self.large(split)):
            for r in range(1, REPEATS + 1):
                items.append((ident, "%s_r%d.jpg" % (p.stem, r), p, r))

        def make(src, r, fname):
            rng = random.Random("clip-cluster-scenarios:repeat:%s:%d" % (src.name, r))
            with Image.open(src) as img:
                return jitter(img, rng)
        return make_images(self.m, "repeats-" + split, REPEATS_VERSION, items, make)

    def degraded_images(self, split):
        items = []
        for ident, p in self.photos(self.degraded_people(split)):
            kind = degradation_of(p.name)
            ext = ".jpg" if kind == "jpeg" else ".png"
            items.append((ident, "%s_%s%s" % (p.stem, kind, ext), p, kind))

        def make(src, kind, fname):
            with Image.open(src) as img:
                data, _ = degrade(img, kind, src.name)
            return data, {"kind": kind, "source": src.name}
        return make_images(self.m, "degraded-" + split, DEGRADED_VERSION, items, make)

    def rows(self, emb, pairs, what):
        idx, miss = [], []
        for n, p in pairs:
            i = emb.get(p)
            (miss if i is None else idx).append(p if i is None else i)
        if miss:
            log("  %s: %d images were rejected by the embedder and are left out (e.g. %s)"
                % (what, len(miss), miss[0]))
        keep = [(n, p) for n, p in pairs if emb.get(p) is not None]
        return emb.vectors[idx], keep

    def build(self, scenario, split):
        """Writes target/scenarios/<split>/<scenario>.{bin,meta,meta.names,paths}; returns info."""
        base = WORK / split / scenario
        info = {"scenario": scenario, "split": split, "base": str(base.relative_to(REPO))}
        names = [n for n, _ in self.people[split]] if split != "all" else None
        if scenario == "whole-lfw":
            pairs = shuffled(self.photos(os.listdir(self.images)), scenario)
            x, pairs = self.rows(self.emb("lfw-aligned"), pairs, scenario)
            info["report_only"] = True
        elif scenario in ("lfw-split", "foreign-map", "foreign-centre"):
            pairs = shuffled(self.photos(names), "lfw-split", split)
            job = "lfw-centre" if scenario == "foreign-centre" else "lfw-aligned"
            x, pairs = self.rows(self.emb(job), pairs, scenario)
            if scenario == "foreign-map":
                x = foreign_map(x, MAP_SEED[split])
                info["map_seed"] = MAP_SEED[split]
        elif scenario == "singletons-mixed":
            singles = [n for n, c in self.people[split] if c == 1]
            pairs = shuffled(self.photos(self.large(split) + singles), scenario, split)
            x, pairs = self.rows(self.emb("lfw-aligned"), pairs, scenario)
        elif scenario == "large-repeats":
            orig = self.emb("lfw-aligned")
            rep = self.emb("repeats-" + split)
            rroot = WORK / "images" / ("repeats-" + split)
            seq = []
            for n, p in shuffled(self.photos(self.large(split)), scenario, split):
                seq.append((orig, n, p))
                for r in range(1, REPEATS + 1):
                    seq.append((rep, n, rroot / n / ("%s_r%d.jpg" % (p.stem, r))))
            idx = [(e, n, p, e.get(p)) for e, n, p in seq]
            lost = [p for _, _, p, i in idx if i is None]
            if lost:
                log("  %s: %d images rejected by the embedder, left out" % (scenario, len(lost)))
            idx = [t for t in idx if t[3] is not None]
            x = np.stack([e.vectors[i] for e, _, _, i in idx]) if idx else np.zeros((0, DIM))
            pairs = [(n, p) for _, n, p, _ in idx]
            info["repeats_per_photo"] = REPEATS
        elif scenario == "degraded":
            emb = self.emb("degraded-" + split)
            root = WORK / "images" / ("degraded-" + split)
            pairs = shuffled(list_faces(root), scenario, split)
            x, pairs = self.rows(emb, pairs, scenario)
            kinds = {}
            for _, p in pairs:
                k = self.m["images"]["degraded-" + split]["kind"]["%s/%s" % (p.parent.name, p.name)]
                kinds[k] = kinds.get(k, 0) + 1
            info["kinds"] = dict(sorted(kinds.items()))
            info["rejected"] = len(list_faces(root)) - len(pairs)
        else:
            raise KeyError(scenario)
        paths = [os.path.relpath(p, REPO) for _, p in pairs]
        info.update(write_scenario(base, x, [n for n, _ in pairs], paths))
        self.m["scenarios"]["%s/%s" % (split, scenario)] = info
        save_manifest(self.m)
        return info


# ---------------------------------------------------------------- evaluation

def quality_file(args, base):
    """base.quality: each row's chip quality score (src/embed/quality.rs), measured by the project's
    own examples/quality_probe on the row's image (the same measure the daemon's embedder uses).
    Written once from base.paths; None when the probe is not built (then no face is weak)."""
    out = Path(str(base) + ".quality")
    if out.exists():
        return out
    probe = REPO / "target" / "release" / "examples" / "quality_probe"
    if not probe.exists():
        print("  no %s (cargo build --release --example quality_probe): evaluating without "
              "quality scores" % probe, file=sys.stderr)
        return None
    images = Path(args.lfw) / "images"
    rows = []
    for p in Path(str(base) + ".paths").read_text().splitlines():
        q = Path(p)
        rows.append(q if q.exists() else images / p)
    listing = Path(str(base) + ".quality-list")
    listing.write_text("".join("%s\n" % r for r in sorted(set(rows))))
    res = subprocess.run([str(probe), str(listing)], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, RUST_LOG="error"))
    if res.returncode != 0:
        sys.exit("quality_probe failed: %s" % res.stderr[-2000:])
    score = {}
    for line in res.stdout.splitlines():
        f = line.split("\t")
        score[f[0]] = f[4]
    out.write_text("".join("%s\n" % score.get(str(r), "-1") for r in rows))
    return out


def evaluate(args, base, algorithm, threshold=None, env_extra=None):
    cmd = ["nice", "-n", "10", args.bin, "eval", "--features", str(base) + ".bin",
           "--labels", str(base) + ".meta", "--order", "input", "--json", "--algorithm", algorithm]
    q = quality_file(args, base)
    if q is not None:
        cmd += ["--quality", str(q)]
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    env = dict(os.environ, RUST_LOG="error")
    for k in list(env):
        if k.startswith("CLIP_CLUSTER__"):
            del env[k]  # only what this tool sets
    env.update({"CLIP_CLUSTER__" + k: str(v) for k, v in (env_extra or {}).items()})
    t0 = time.time()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        die("eval failed (rc %d): %s %s\n%s" % (out.returncode, " ".join(
            "CLIP_CLUSTER__%s=%s" % kv for kv in (env_extra or {}).items()), " ".join(cmd),
            out.stderr[-3000:]))
    r = json.loads(out.stdout)
    r["wall_seconds"] = round(time.time() - t0, 2)
    return r


def oracle_grid(base, ks=(1, 2)):
    """ORACLE_POINTS cosine thresholds spread over the data's own nearest-neighbour similarities:
    the quantiles 2%..98% (evenly spaced levels) of the pooled 1st and 2nd nearest-neighbour
    cosines of every face, rounded to 0.001. Dense where the faces' edges are decided."""
    x = np.fromfile(str(base) + ".bin", dtype="<f4").reshape(-1, DIM).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    top = []
    for i in range(0, len(x), 2048):
        s = x[i:i + 2048] @ x.T
        for j in range(s.shape[0]):
            s[j, i + j] = -2
        top.append(-np.sort(-s, axis=1)[:, :max(ks)])
    top = np.concatenate(top)
    vals = np.concatenate([top[:, k - 1] for k in ks])
    qs = np.quantile(vals, np.linspace(0.02, 0.98, ORACLE_POINTS))
    return sorted(set(round(float(np.clip(q, 0.05, 0.999)), 3) for q in qs))


def supports_calibration_key(args, base):
    """Whether the binary knows `calibration.mode` (it refuses unknown keys): a 64-face probe."""
    probe = WORK / "probe"
    x = np.fromfile(str(base) + ".bin", dtype="<f4").reshape(-1, DIM)[:64]
    x.tofile(str(probe) + ".bin")
    Path(str(probe) + ".meta").write_text("".join("%d\n" % (i % 8) for i in range(len(x))))
    cmd = [args.bin, "eval", "--features", str(probe) + ".bin", "--labels", str(probe) + ".meta",
           "--order", "input", "--json"]
    env = dict(os.environ, RUST_LOG="error", CLIP_CLUSTER__CALIBRATION__MODE="trained")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0


ORACLE_PROXIES = ("identity", "configured")


def oracle_runs(grid):
    return len(grid) * len(ORACLE_KS) * len(ORACLE_PROXIES)


def run_oracle(args, scn, sp, base, info, grid, overrides, fixed, progress):
    """The best BCubed F of the stream with the cosine scorer over grid x ORACLE_KS x proxy
    (identity vectors, or the configured proxy), on this very split. If the best t1 is at an end
    of the grid, the grid is extended by 3 of its median steps beyond that end (up to 4 times)."""
    done, total = progress
    seen = {}
    grid = list(grid)
    step = float(np.median(np.diff(grid))) if len(grid) > 1 else 0.005
    step = max(step, 0.001)

    def one(k, t, proxy):
        nonlocal done
        key = (k, round(t, 4), proxy)
        if key in seen:
            return seen[key]
        env = dict(overrides, EDGE__SCORER="cosine", ENGINE__T1=round(t, 4), ENGINE__K=k, **fixed)
        if proxy == "identity":
            env["PROXY__MODE"] = "identity"
        r = evaluate(args, base, "stream", None, env)
        done += 1
        log("[%d/%d] %s %s oracle cosine k %d t1 %.4f proxy %s: F_B %.4f clusters %d"
            % (done, total, scn, sp, k, t, proxy, r["bcubed"]["f"], r["n_clusters"]))
        seen[key] = r
        return r

    for k in ORACLE_KS:
        for proxy in ORACLE_PROXIES:
            for t in grid:
                one(k, t, proxy)
    for _ in range(4):
        best = max(seen.items(), key=lambda kv: kv[1]["bcubed"]["f"])
        (k, t, proxy), _r = best
        lo, hi = min(grid), max(grid)
        if t <= lo + 1e-9 and lo - step > 0.0:
            ext = [round(lo - step * i, 4) for i in (1, 2, 3) if lo - step * i > 0.0]
        elif t >= hi - 1e-9 and hi + step < 1.0:
            ext = [round(hi + step * i, 4) for i in (1, 2, 3) if hi + step * i < 1.0]
        else:
            break
        log("  oracle: best t1 %.4f is at the grid's end; extending by %s" % (t, ext))
        grid += ext
        for t2 in ext:
            one(k, t2, proxy)
    (k, t, proxy), r = max(seen.items(), key=lambda kv: kv[1]["bcubed"]["f"])
    row = row_of(scn, sp, "stream (oracle)",
                 "cosine, %s proxy, k %d, t1 %.3f; best of %d runs on this split"
                 % (proxy, k, t, len(seen)), info, r)
    row["oracle"] = {"k": k, "t1": t, "proxy": proxy, "runs": len(seen), "grid": sorted(grid),
                     "all": [{"k": kk, "t1": tt, "proxy": pp, "F_B": rr["bcubed"]["f"],
                              "F_P": rr["pairwise"]["f"], "clusters": rr["n_clusters"]}
                             for (kk, tt, pp), rr in sorted(seen.items())]}
    return row


def row_of(scn, split, algorithm, setting, info, r):
    return {"scenario": scn, "split": split, "algorithm": algorithm, "setting": setting,
            "faces": r["n_faces"], "identities": info["identities"], "clusters": r["n_clusters"],
            "F_P": r["pairwise"]["f"], "F_B": r["bcubed"]["f"], "NMI": r["nmi"],
            "B_prec": r["bcubed"]["precision"], "B_rec": r["bcubed"]["recall"],
            "P_prec": r["pairwise"]["precision"], "P_rec": r["pairwise"]["recall"],
            "faces_per_second": r["faces_per_second"], "seconds": r["seconds"],
            "report_only": bool(info.get("report_only")), "calibration": r.get("calibration")}


HEADER = ("| scenario | split | algorithm | setting | faces | identities | clusters | F_P | F_B | NMI "
          "| B_prec | B_rec | faces/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def md_row(r):
    return "| %s | %s | %s | %s | %d | %d | %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.0f |" % (
        r["scenario"], r["split"], r["algorithm"],
        r["setting"] + (" (calibration: %s)" % r["calibration"]
                        if r["algorithm"] == "stream" and r.get("calibration") else ""),
        r["faces"], r["identities"],
        r["clusters"], r["F_P"], r["F_B"], r["NMI"], r["B_prec"], r["B_rec"], r["faces_per_second"])


def summary_of(scn, split, rows):
    mine = [r for r in rows if r["scenario"] == scn and r["split"] == split]
    stream = next(r for r in mine if r["algorithm"] == "stream")
    peers = [r for r in mine if r["algorithm"] in dict(PEERS)]
    best = max(peers, key=lambda r: r["F_B"])
    s = {"scenario": scn, "split": split, "stream_F_B": stream["F_B"], "best_peer": best["algorithm"],
         "best_peer_F_B": best["F_B"], "margin_points": round(100 * (stream["F_B"] - best["F_B"]), 2)}
    orc = [r for r in mine if r["algorithm"] == "stream (oracle)"]
    if orc:
        s["oracle_F_B"] = orc[0]["F_B"]
        s["oracle_setting"] = orc[0]["setting"]
        s["stream_below_oracle_points"] = round(100 * (orc[0]["F_B"] - stream["F_B"]), 2)
    return s


def summary_line(s):
    t = "- %s (%s): best peer %s F_B %.4f; stream F_B %.4f, margin %+.2f points" % (
        s["scenario"], s["split"], s["best_peer"], s["best_peer_F_B"], s["stream_F_B"],
        s["margin_points"])
    if "oracle_F_B" in s:
        t += "; oracle F_B %.4f (%s), stream %.2f points below it" % (
            s["oracle_F_B"], s["oracle_setting"], s["stream_below_oracle_points"])
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path,
                    default=Path(os.environ.get("CLIP_CLUSTER_LFW", REPO.parent / "shared" / "data" / "lfw")))
    ap.add_argument("--split", choices=("train", "test", "both"), default="both")
    ap.add_argument("--only", default="", help="comma-separated scenario names (%s)" % ", ".join(SCENARIOS))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                    help="configuration override for the stream runs (CLIP_CLUSTER__ prefix optional)")
    ap.add_argument("--oracle", action="store_true",
                    help="foreign scenarios: also the best cosine t1 x k of a grid, on that very split")
    ap.add_argument("--json", type=Path, help="also write every row as JSON here")
    ap.add_argument("--prepare-only", action="store_true", help="embed and write the scenario files, run no eval")
    ap.add_argument("--force-embed", action="store_true", help="re-embed even when the cache matches")
    args = ap.parse_args()

    args.lfw = args.lfw.resolve()
    for f in ("images", "peopleDevTrain.txt", "peopleDevTest.txt"):
        if not (args.lfw / f).exists():
            die("LFW not found: %s has no %s (give --lfw DIR or set CLIP_CLUSTER_LFW to the LFW root "
                "holding images/, peopleDevTrain.txt and peopleDevTest.txt)" % (args.lfw, f))
    binary = Path(os.environ.get("CLIP_CLUSTER_BIN", REPO / "target" / "release" / "clip-cluster"))
    if not binary.is_absolute():
        binary = (Path.cwd() / binary)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        die("binary not found: %s (build it with `cargo build --release` or set CLIP_CLUSTER_BIN)" % binary)
    # Run on a hard link (or copy) of the binary, so that a rebuild during the run cannot mix two
    # binaries in one table.
    snap = WORK / "bin" / "clip-cluster"
    snap.parent.mkdir(parents=True, exist_ok=True)
    if snap.exists():
        snap.unlink()
    try:
        os.link(binary, snap)
    except OSError:
        import shutil
        shutil.copy2(binary, snap)
    st = binary.stat()
    args.bin_info = {"path": str(binary), "size": st.st_size,
                     "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))}
    args.bin = str(snap)
    only = [s for s in args.only.split(",") if s]
    for s in only:
        if s not in SCENARIOS:
            die("unknown scenario %r (known: %s)" % (s, ", ".join(SCENARIOS)))
    scenarios = [s for s in SCENARIOS if not only or s in only]
    overrides = {}
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep or "__" not in k:
            die("--set wants SECTION__KEY=VALUE, got %r" % kv)
        k = k.upper()
        overrides[k[len("CLIP_CLUSTER__"):] if k.startswith("CLIP_CLUSTER__") else k] = v
    splits = list(SPLITS) if args.split == "both" else [args.split]
    # whole-lfw holds both splits' identities: it is report-only and runs with the test split.
    jobs = [(s, sp) for sp in splits for s in scenarios if s != "whole-lfw"]
    if "whole-lfw" in scenarios and "test" in splits:
        jobs.append(("whole-lfw", "all"))
    if not jobs:
        die("nothing to do (whole-lfw runs with --split test or both)")

    os.nice(10)
    manifest = load_manifest()
    prep = Prep(args, manifest)
    t0 = time.time()
    infos = {}
    for scn, sp in jobs:
        log("preparing %s (%s)" % (scn, sp))
        infos[(scn, sp)] = prep.build(scn, sp)
    t_prep = time.time() - t0
    log("preparation: %.0f s" % t_prep)
    sizes = ["| scenario | split | faces | identities | largest identity | singletons |",
             "|---|---|---|---|---|---|"]
    for (scn, sp), i in infos.items():
        sizes.append("| %s | %s | %d | %d | %d | %d |" % (scn, sp, i["faces"], i["identities"],
                                                         i["largest_identity"], i["singletons"]))
    if args.prepare_only:
        print("\n".join(sizes))
        return

    t1 = time.time()
    setting = "default" + "".join("; %s=%s" % kv for kv in overrides.items())
    plan = []
    for scn, sp in jobs:
        base = REPO / infos[(scn, sp)]["base"]
        plan.append((scn, sp, base, "stream", setting, None, overrides))
        for alg, thr in PEERS:
            plan.append((scn, sp, base, alg, "t %.3g" % thr, thr, None))
    grids = {}
    if args.oracle:
        for scn, sp in jobs:
            if scn.startswith("foreign-"):
                grids[(scn, sp)] = oracle_grid(REPO / infos[(scn, sp)]["base"])
                log("oracle grid %s (%s): %s" % (scn, sp, grids[(scn, sp)]))
    oracle_fixed = {}
    if grids:
        if supports_calibration_key(args, REPO / infos[next(iter(grids))]["base"]):
            # Pin the configured parts and t1: auto-calibration would replace the swept t1.
            oracle_fixed["CALIBRATION__MODE"] = "trained"
        else:
            log("the binary has no calibration.mode key: oracle runs without it")
    n_oracle = sum(oracle_runs(g) for g in grids.values())
    total, done = len(plan) + n_oracle, 0
    n_runs = len(plan)
    rows = []
    for scn, sp, base, alg, sett, thr, env in plan:
        done += 1
        r = evaluate(args, base, alg, thr, env)
        rows.append(row_of(scn, sp, alg, sett, infos[(scn, sp)], r))
        log("[%d/%d] %s %s %s (%s): F_B %.4f F_P %.4f clusters %d, %.1f s"
            % (done, total, scn, sp, alg, sett, r["bcubed"]["f"], r["pairwise"]["f"],
               r["n_clusters"], r["wall_seconds"]))
        if (scn, sp) in grids and alg == PEERS[-1][0]:
            orow = run_oracle(args, scn, sp, base, infos[(scn, sp)], grids[(scn, sp)],
                              overrides, oracle_fixed, (done, total))
            rows.append(orow)
            n_runs += orow["oracle"]["runs"]
            done += orow["oracle"]["runs"]
            total += orow["oracle"]["runs"] - oracle_runs(grids[(scn, sp)])
    t_eval = time.time() - t1

    summaries = []
    out = []
    for sp in [*splits, "all"]:
        mine = [r for r in rows if r["split"] == sp]
        if not mine:
            continue
        title = {"train": "train (peopleDevTrain.txt identities: tune here)",
                 "test": "test (peopleDevTest.txt identities: report only, never tune)",
                 "all": "whole LFW (both splits' identities: report-only, contains training identities)"}[sp]
        out += ["### %s" % title, "", HEADER] + [md_row(r) for r in mine] + [""]
        for scn in dict.fromkeys(r["scenario"] for r in mine):
            s = summary_of(scn, sp, rows)
            summaries.append(s)
            out.append(summary_line(s))
        out.append("")
    out += ["### sizes", ""] + sizes + [""]
    out.append("preparation %.0f s, evaluation %.0f s (%d eval runs); binary %s; overrides: %s" % (
        t_prep, t_eval, n_runs, "%s (%s)" % (args.bin_info["path"], args.bin_info["mtime"]), setting))
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps({
            "rows": rows, "summaries": summaries, "sizes": [infos[j] for j in jobs],
            "oracle_grids": {"%s/%s" % k: g for k, g in grids.items()},
            "overrides": overrides, "binary": args.bin_info,
            "seconds": {"preparation": round(t_prep, 1), "evaluation": round(t_eval, 1)},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
        log("wrote %s" % args.json)


if __name__ == "__main__":
    main()
