#!/usr/bin/env python3
"""Independent numpy reference for dlib's face-recognition ResNet
(dlib_face_recognition_resnet_model_v1.dat).

Reads dlib's own serialization of the network and runs the forward pass in
float64 numpy (weights are stored as float32). Dependencies: numpy, Pillow.

Usage:
  python3 tools/dlib/reference.py --model models/dlib_face_recognition_resnet_model_v1.dat --layers
  python3 tools/dlib/reference.py --model ... --lfw /work/shared/data/lfw --check
  python3 tools/dlib/reference.py --model ... --lfw /work/shared/data/lfw \
      --write-fixture tests/fixtures/dlib/embeddings.json

Format notes (from dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h,
dlib/dnn/core.h, dlib/dnn/layers.h, dlib/dnn/input.h, dlib/dnn/loss.h):
  * integers: control byte (low nibble = byte count, 0x80 = negative), then
    little-endian magnitude bytes.
  * float/double: float_details = int64 mantissa, then int16 exponent, both as
    integers; value = mantissa * 2**exponent (32000/32001/32002 = inf/-inf/nan).
  * std::string: integer length + raw bytes.  bool: one ASCII byte '0'/'1'.
  * tensor: int version; v2 = n, k, nr, nc then n*k*nr*nc raw little-endian
    float32 (v1 = n, k, nr, nc then float_details each).  Layout NCHW.
  * alias_tensor: int version(1), n, k, nr, nc.
  * add_loss_layer: int version(1), loss details, subnet.
  * add_layer: int version, subnet, layer details, then trailer
    (bools this_layer_setup_called, gradient_input_is_stale,
    get_output_and_gradient_input_disabled, tensors x_grad, cached_output,
    params_grad).  add_tag_layer / add_skip_layer: int version(1), subnet.
  Because the subnet is serialized BEFORE each layer's own details, the file
  holds: loss details, then a run of nested version ints, then the input layer,
  then every computational layer in FORWARD order (input -> fc).  Tag/skip
  layers carry no details and are only visible as version ints, so the
  residual wiring is reconstructed from the known architecture
  (examples/dnn_face_recognition_ex.cpp) and validated against the layer
  sequence found in the file.
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import numpy as np  # noqa: E402

MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"


# ---------------------------------------------------------------- reader
class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def byte(self):
        b = self.d[self.p]
        self.p += 1
        return b

    def peek_int(self):
        save = self.p
        v = self.int()
        self.p = save
        return v

    def int(self):
        c = self.byte()
        n = c & 0x0F
        if n > 8:
            raise ValueError("bad int control byte 0x%02x at %d" % (c, self.p - 1))
        v = int.from_bytes(self.d[self.p:self.p + n], "little")
        self.p += n
        return -v if c & 0x80 else v

    def float(self):
        m = self.int()
        e = self.int()
        if e == 32000:
            return float("inf")
        if e == 32001:
            return float("-inf")
        if e == 32002:
            return float("nan")
        return float(np.ldexp(np.float64(m), e))

    def string(self):
        n = self.int()
        s = self.d[self.p:self.p + n]
        self.p += n
        return s.decode("latin-1")

    def bool(self):
        c = self.byte()
        if c not in (ord("0"), ord("1")):
            raise ValueError("bad bool byte 0x%02x at %d" % (c, self.p - 1))
        return c == ord("1")

    def tensor(self):
        ver = self.int()
        n, k, nr, nc = self.int(), self.int(), self.int(), self.int()
        cnt = n * k * nr * nc
        if ver == 2:
            a = np.frombuffer(self.d, dtype="<f4", count=cnt, offset=self.p).copy()
            self.p += 4 * cnt
        elif ver == 1:
            a = np.array([self.float() for _ in range(cnt)], dtype=np.float32)
        else:
            raise ValueError("unknown tensor version %d at %d" % (ver, self.p))
        return a.reshape(n, k, nr, nc)

    def alias_tensor(self):
        ver = self.int()
        if ver != 1:
            raise ValueError("unknown alias_tensor version %d" % ver)
        return (self.int(), self.int(), self.int(), self.int())


def read_layer_details(r, name):
    """Parse one layer's details; name already consumed."""
    L = {"type": name}
    if name == "input_rgb_image_sized":
        L["avg"] = (r.float(), r.float(), r.float())  # red, green, blue
        L["nr"], L["nc"] = r.int(), r.int()
    elif name == "con_4":
        params = r.tensor().reshape(-1)
        L["num_filters"] = r.int()
        L["nr"], L["nc"] = r.int(), r.int()
        L["stride"] = (r.int(), r.int())
        L["padding"] = (r.int(), r.int())
        f = r.alias_tensor()
        b = r.alias_tensor()
        L["lr_mult"] = [r.float() for _ in range(4)]
        nf = int(np.prod(f))
        L["filters"] = params[:nf].reshape(f)
        L["bias"] = params[nf:nf + int(np.prod(b))].reshape(-1)
        assert L["filters"].shape[0] == L["num_filters"]
    elif name == "affine_":
        params = r.tensor().reshape(-1)
        g = r.alias_tensor()
        b = r.alias_tensor()
        L["mode"] = r.int()  # dlib enum layer_mode { CONV_MODE = 0, FC_MODE = 1 }
        ng = int(np.prod(g))
        L["gamma"] = params[:ng]
        L["beta"] = params[ng:ng + int(np.prod(b))]
        L["gamma_shape"] = g
    elif name == "relu_":
        pass
    elif name in ("max_pool_2", "avg_pool_2"):
        L["nr"], L["nc"] = r.int(), r.int()
        L["stride"] = (r.int(), r.int())
        L["padding"] = (r.int(), r.int())
    elif name == "add_prev_":
        pass
    elif name == "fc_2":
        L["num_outputs"] = r.int()
        L["num_inputs"] = r.int()
        params = r.tensor()
        w = r.alias_tensor()
        b = r.alias_tensor()
        L["bias_mode"] = r.int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        L["lr_mult"] = [r.float() for _ in range(4)]
        flat = params.reshape(-1)
        nw = int(np.prod(w))
        L["W"] = flat[:nw].reshape(L["num_inputs"], L["num_outputs"])
        L["bias"] = flat[nw:nw + int(np.prod(b))] if L["bias_mode"] == 0 else None
    else:
        raise ValueError("unsupported layer '%s' at %d" % (name, r.p))
    return L


def read_trailer(r, innermost):
    """add_layer trailer: 3 bools (this_layer_setup_called, gradient_input_is_stale,
    get_output_and_gradient_input_disabled), 3 tensors (x_grad, cached_output,
    params_grad).  The innermost add_layer<LAYER, input> (version 3) additionally
    stores _sample_expansion_factor as an int."""
    for _ in range(3):
        r.bool()
    for _ in range(3):
        t = r.tensor()
        assert t.size == 0, "unexpected non-empty trailer tensor"
    if innermost:
        assert r.int() == 1, "sample_expansion_factor"


def load_model(path):
    data = open(path, "rb").read()
    r = Reader(data)
    assert r.int() == 1, "add_loss_layer version"
    loss = r.string()
    assert loss == "loss_metric_2", loss
    margin, dist_thresh = r.float(), r.float()
    nver = 0
    # nested add_layer/add_tag_layer/add_skip_layer version ints (1, 2; the
    # innermost add_layer<con_, input> uses version 3)
    while r.peek_int() in (1, 2, 3):
        r.int()
        nver += 1
    layers = []
    while r.p < len(data):
        name = r.string()
        L = read_layer_details(r, name)
        L["offset"] = r.p
        layers.append(L)
        if name != "input_rgb_image_sized":
            read_trailer(r, innermost=(len(layers) == 2))
    return {"loss": {"type": loss, "margin": margin, "distance_threshold": dist_thresh},
            "n_wrapper_versions": nver, "layers": layers,
            "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------- ops (NCHW, float64)
def conv(x, L):
    w = L["filters"].astype(np.float64)
    b = L["bias"].astype(np.float64)
    sy, sx = L["stride"]
    py, px = L["padding"]
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    if py or px:
        x = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)))
    Ho = 1 + (H + 2 * py - kh) // sy
    Wo = 1 + (W + 2 * px - kw) // sx
    cols = np.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + sy * (Ho - 1) + 1:sy, j:j + sx * (Wo - 1) + 1:sx]
    cols = cols.reshape(N, C * kh * kw, Ho * Wo)
    out = np.einsum("fk,nkp->nfp", w.reshape(F, -1), cols, optimize=True)
    return out.reshape(N, F, Ho, Wo) + b[None, :, None, None]


def affine(x, L):
    assert L["mode"] == 0, "expected CONV_MODE affine"
    assert L["gamma_shape"] == (1, x.shape[1], 1, 1), L["gamma_shape"]
    g = L["gamma"].astype(np.float64)[None, :, None, None]
    b = L["beta"].astype(np.float64)[None, :, None, None]
    return x * g + b


def pool(x, L, op):
    kh, kw = L["nr"], L["nc"]
    N, C, H, W = x.shape
    if kh == 0 and kw == 0:  # *_pool_everything
        return (x.mean if op == "avg" else x.max)(axis=(2, 3), keepdims=True)
    sy, sx = L["stride"]
    py, px = L["padding"]
    assert (py, px) == (0, 0), "padding != 0 not implemented for pools"
    Ho = 1 + (H - kh) // sy
    Wo = 1 + (W - kw) // sx
    acc = None
    for i in range(kh):
        for j in range(kw):
            v = x[:, :, i:i + sy * (Ho - 1) + 1:sy, j:j + sx * (Wo - 1) + 1:sx]
            if acc is None:
                acc = v.copy()
            elif op == "max":
                acc = np.maximum(acc, v)
            else:
                acc = acc + v
    return acc / (kh * kw) if op == "avg" else acc


def add_prev(a, b):
    """dlib add_prev_: output dims = elementwise max; missing entries are zero."""
    shp = tuple(max(s, t) for s, t in zip(a.shape, b.shape))
    out = np.zeros(shp, dtype=a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] += a
    out[tuple(slice(0, s) for s in b.shape)] += b
    return out


# ---------------------------------------------------------------- network
# Residual stages in forward order: (N, downsample)
STAGES = ([(32, False)] * 3 +                      # level4
          [(64, True)] + [(64, False)] * 3 +       # level3
          [(128, True)] + [(128, False)] * 2 +     # level2
          [(256, True)] + [(256, False)] * 2 +     # level1
          [(256, True)])                           # level0


def expected_sequence():
    seq = ["input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2"]
    for _n, down in STAGES:
        seq += ["con_4", "affine_", "relu_", "con_4", "affine_"]
        if down:
            seq += ["avg_pool_2"]
        seq += ["add_prev_", "relu_"]
    seq += ["avg_pool_2", "fc_2"]
    return seq


class Net:
    def __init__(self, model):
        self.model = model
        self.layers = model["layers"]
        got = [L["type"] for L in self.layers]
        if got != expected_sequence():
            raise ValueError("layer sequence mismatch:\n%s\n%s" % (got, expected_sequence()))
        self.inp = self.layers[0]

    def preprocess(self, rgb_u8):
        """rgb_u8: (N,150,150,3) uint8 -> (N,3,150,150) float64, dlib input_rgb_image_sized."""
        x = rgb_u8.astype(np.float64).transpose(0, 3, 1, 2)
        avg = np.array(self.inp["avg"], dtype=np.float64)[None, :, None, None]
        return (x - avg) / 256.0

    def forward(self, rgb_u8, taps=None):
        assert rgb_u8.shape[1:] == (self.inp["nr"], self.inp["nc"], 3)
        it = iter(self.layers[1:])
        x = self.preprocess(rgb_u8)
        tap = (lambda k, v: taps.__setitem__(k, v)) if taps is not None else (lambda k, v: None)
        tap("input", x)
        x = conv(x, next(it)); tap("conv1", x)
        x = affine(x, next(it)); tap("conv1_affine", x)
        x = np.maximum(x, 0); next(it); tap("conv1_relu", x)
        x = pool(x, next(it), "max"); tap("max_pool", x)
        level_of = [4] * 3 + [3] * 4 + [2] * 3 + [1] * 3 + [0]
        for si, (n, down) in enumerate(STAGES):
            inp = x
            L = next(it); assert L["num_filters"] == n and L["stride"] == ((2, 2) if down else (1, 1))
            y = conv(x, L)
            y = affine(y, next(it))
            y = np.maximum(y, 0); next(it)
            L = next(it); assert L["num_filters"] == n and L["stride"] == (1, 1)
            y = conv(y, L)
            y = affine(y, next(it))
            if down:
                inp = pool(inp, next(it), "avg")
            assert next(it)["type"] == "add_prev_"
            x = add_prev(inp, y)
            x = np.maximum(x, 0); next(it)
            tap("stage%02d_level%d_%s%d" % (si, level_of[si], "down" if down else "res", n), x)
        x = pool(x, next(it), "avg"); tap("avg_pool_everything", x)
        fc = next(it)
        emb = x.reshape(x.shape[0], -1) @ fc["W"].astype(np.float64)
        if fc["bias"] is not None:
            emb = emb + fc["bias"].astype(np.float64)
        return emb


# ---------------------------------------------------------------- images
PREPROCESS = ("LFW deep-funneled 250x250 JPEG decoded with Pillow, converted to RGB; "
              "centre crop box (62,62,187,187) i.e. 125x125 px (left/top = (250-125)//2 = 62); "
              "resized to 150x150 with Pillow Image.resize(..., Image.BILINEAR) "
              "(Pillow's default reducing behaviour, no reducing_gap); no face alignment; "
              "then dlib input_rgb_image_sized<150>: channel c = (pixel_c - avg_c)/256 "
              "with avg = (R,G,B) means read from the model file, NCHW float tensor.")


def load_image(path):
    from PIL import Image
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 125
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((150, 150), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


FIXTURE_IMAGES = [
    "images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "images/Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
    "images/George_W_Bush/George_W_Bush_0001.jpg",
    "images/George_W_Bush/George_W_Bush_0002.jpg",
    "images/Colin_Powell/Colin_Powell_0001.jpg",
    "images/Colin_Powell/Colin_Powell_0002.jpg",
]
CHECK_EXTRA = [
    "images/Tony_Blair/Tony_Blair_0001.jpg",
    "images/Tony_Blair/Tony_Blair_0002.jpg",
    "images/Serena_Williams/Serena_Williams_0001.jpg",
    "images/Serena_Williams/Serena_Williams_0002.jpg",
]


SYNTHETIC = {
    # decoder/resize-independent inputs; r,c in 0..149, ch 0=R 1=G 2=B; uint8 HWC
    "synthetic_a": "pixel[r][c][ch] = (3*r + 5*c + 80*ch) % 256",
    "synthetic_b": "pixel[r][c][ch] = (r*c + 37*ch*(r+1)) % 256  (integer arithmetic)",
}


def synthetic(name):
    r, c, ch = np.meshgrid(np.arange(150), np.arange(150), np.arange(3), indexing="ij")
    if name == "synthetic_a":
        v = (3 * r + 5 * c + 80 * ch) % 256
    else:
        v = (r * c + 37 * ch * (r + 1)) % 256
    return v.astype(np.uint8)


def summary(a):
    a = np.asarray(a)
    flat = a.reshape(-1)
    return {"shape_kchw": list(a.shape), "sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum()),
            "first8": [float(v) for v in flat[:8]]}


def person(p):
    return p.split("/")[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/dlib_face_recognition_resnet_model_v1.dat")
    ap.add_argument("--lfw", default="/work/shared/data/lfw")
    ap.add_argument("--layers", action="store_true", help="print the parsed layer list")
    ap.add_argument("--check", action="store_true", help="embed LFW images and print similarities")
    ap.add_argument("--write-fixture", metavar="PATH")
    a = ap.parse_args()

    t0 = time.time()
    model = load_model(a.model)
    net = Net(model)
    print("parsed %d layers (+%d nested wrapper version ints) in %.2fs; sha256 %s%s" % (
        len(model["layers"]), model["n_wrapper_versions"], time.time() - t0, model["sha256"],
        "" if model["sha256"] == MODEL_SHA256 else "  (UNEXPECTED)"))
    print("loss:", model["loss"])
    if a.layers:
        for i, L in enumerate(model["layers"]):
            d = {k: v for k, v in L.items() if k in ("avg", "nr", "nc", "num_filters", "stride", "padding",
                                                    "mode", "num_outputs", "num_inputs", "bias_mode")}
            if "filters" in L:
                d["filters"] = L["filters"].shape
            print("%3d %-22s %s" % (i, L["type"], d))

    if a.check or a.write_fixture:
        paths = FIXTURE_IMAGES + (CHECK_EXTRA if a.check else [])
        imgs = np.stack([load_image(os.path.join(a.lfw, p)) for p in paths])
        taps = {}
        t1 = time.time()
        emb = net.forward(imgs, taps)
        dt = time.time() - t1
        print("forward: %d images in %.2fs (%.3fs/image, float64, batched)" % (len(paths), dt, dt / len(paths)))
        for k, v in taps.items():
            print("  %-28s %s" % (k, tuple(v.shape[1:])))
        nrm = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = nrm @ nrm.T
        dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
        print("norms:", np.round(np.linalg.norm(emb, axis=1), 4).tolist())
        same, diff = [], []
        for i in range(len(paths)):
            for j in range(i + 1, len(paths)):
                (same if person(paths[i]) == person(paths[j]) else diff).append((cos[i, j], dist[i, j], i, j))
        print("same-person pairs (cos, euclid):")
        for c, d, i, j in same:
            print("  %.4f %.4f  %s | %s" % (c, d, os.path.basename(paths[i]), os.path.basename(paths[j])))
        print("different-person: cos min/mean/max %.4f/%.4f/%.4f ; euclid min/mean/max %.4f/%.4f/%.4f" % (
            min(x[0] for x in diff), np.mean([x[0] for x in diff]), max(x[0] for x in diff),
            min(x[1] for x in diff), np.mean([x[1] for x in diff]), max(x[1] for x in diff)))
        print("same-person:      cos min/mean/max %.4f/%.4f/%.4f ; euclid min/mean/max %.4f/%.4f/%.4f" % (
            min(x[0] for x in same), np.mean([x[0] for x in same]), max(x[0] for x in same),
            min(x[1] for x in same), np.mean([x[1] for x in same]), max(x[1] for x in same)))
        acc = sum(x[1] < 0.6 for x in same) + sum(x[1] >= 0.6 for x in diff)
        print("dlib threshold 0.6 agreement: %d/%d pairs" % (acc, len(same) + len(diff)))

        if a.write_fixture:
            n = len(FIXTURE_IMAGES)
            out = {
                "model_file": "dlib_face_recognition_resnet_model_v1.dat",
                "model_sha256": model["sha256"],
                "produced_by": "tools/dlib/reference.py (numpy float64 forward, weights float32 from file)",
                "lfw_root_relative": True,
                "preprocessing": PREPROCESS,
                "input_means_rgb": list(net.inp["avg"]),
                "tolerance_abs_embedding": 1e-4,
                "embedding_is_normalized": False,
                "activation_summary_note": ("per image, NCHW order per sample (k,nr,nc); first8 = first 8 "
                                            "values of the flattened (k,nr,nc) tensor; sum over all values"),
                "images": [],
            }
            for i in range(n):
                out["images"].append({
                    "path": FIXTURE_IMAGES[i],
                    "person": person(FIXTURE_IMAGES[i]),
                    "embedding": [float(v) for v in emb[i]],
                    "norm": float(np.linalg.norm(emb[i])),
                    "input_u8_rgb_hwc_sha256": hashlib.sha256(np.ascontiguousarray(imgs[i]).tobytes()).hexdigest(),
                    "input_u8_sum": int(imgs[i].astype(np.int64).sum()),
                    "input_u8_first8_hwc": [int(v) for v in imgs[i].reshape(-1)[:8]],
                    "activations": {k: summary(v[i]) for k, v in taps.items()},
                })
            syn_names = sorted(SYNTHETIC)
            staps = {}
            semb = net.forward(np.stack([synthetic(k) for k in syn_names]), staps)
            out["synthetic"] = []
            for i, k in enumerate(syn_names):
                out["synthetic"].append({
                    "name": k, "formula": SYNTHETIC[k],
                    "embedding": [float(v) for v in semb[i]],
                    "activations": {kk: summary(v[i]) for kk, v in staps.items()},
                })
            out["pairwise_cosine"] = [[float(cos[i, j]) for j in range(n)] for i in range(n)]
            out["pairwise_euclidean"] = [[float(dist[i, j]) for j in range(n)] for i in range(n)]
            with open(a.write_fixture, "w") as f:
                json.dump(out, f, indent=1)
            print("wrote", a.write_fixture, os.path.getsize(a.write_fixture), "bytes")


if __name__ == "__main__":
    main()
