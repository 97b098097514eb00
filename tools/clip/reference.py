#!/usr/bin/env python3
"""Independent numpy reference for CLIP (OpenAI / OpenCLIP architecture and tensor names).

No CLIP weights can be downloaded on our machines and PyTorch is not installed, so the Rust CLIP
(src/hallucinate/clip/mod.rs, src/clip/) is proven against this file on a small random-weight model:

  * a tokenizer written from OpenAI CLIP's `simple_tokenizer.py` (as copied into open_clip's
    `tokenizer.py`): byte-level BPE over bytes_to_unicode, `</w>` word ends, clean = html-unescape
    + whitespace cleanup + lower case, the pre-tokenizer pattern
    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
    (re-implemented with `unicodedata`, no `regex` module), SOT 49406, EOT 49407, context 77,
    truncation that keeps EOT last;
  * the image preprocessing of open_clip's OpenAI transform with Pillow itself: resize the shorter
    side to image_size (bicubic), centre crop (torchvision's `int(round(...))` offsets), /255,
    OpenAI mean/std;
  * both towers in float64 numpy from the stored (float16) weights: vision = patch conv (no bias),
    class token, positional embedding, ln_pre, residual attention blocks (pre-LN, fused in_proj,
    quick_gelu or gelu MLP), ln_post on the class token, @ proj; text = token + positional
    embedding, causal mask, the same blocks, ln_final, the token at argmax(ids) (EOT), @
    text_projection.

Dependencies: numpy, Pillow (and, for --check-open-clip only, `regex` and `ftfy`).

Usage:
  python3 tools/clip/reference.py --vocab models/bpe_simple_vocab_16e6.txt.gz \
      --write-fixture tests/fixtures/clip
  # cross-check our tokenizer against open_clip's own tokenizer.py (torch stubbed out):
  python3 tools/clip/reference.py --vocab ... --check-open-clip /path/to/unzipped/wheel
"""
import argparse
import gzip
import html
import json
import math
import os
import struct
import sys
import types
import unicodedata

import numpy as np
from PIL import Image

SOT, EOT = 49406, 49407
N_MERGES = 49152 - 256 - 2
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# ------------------------------------------------------------------ tokenizer


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def is_letter(ch):
    return unicodedata.category(ch).startswith("L")


def is_number(ch):
    return unicodedata.category(ch).startswith("N")


CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
SPECIALS = ["<start_of_text>", "<end_of_text>"]


def pre_tokenize(text):
    """re.findall of the CLIP pattern, written out as a scanner (leftmost-first alternation)."""
    out = []
    i = 0
    n = len(text)
    while i < n:
        hit = next((s for s in SPECIALS + CONTRACTIONS if text.startswith(s, i)), None)
        if hit is not None:
            out.append(hit)
            i += len(hit)
            continue
        ch = text[i]
        if is_letter(ch):
            j = i + 1
            while j < n and is_letter(text[j]):
                j += 1
        elif is_number(ch):
            j = i + 1
        elif not ch.isspace():
            j = i + 1
            while j < n and not (text[j].isspace() or is_letter(text[j]) or is_number(text[j])):
                j += 1
        else:
            i += 1
            continue
        out.append(text[i:j])
        i = j
    return out


# The part of ftfy.fix_text that we reproduce (in Rust too): curly quotes and Latin ligatures.
FTFY_SUBSET = {c: "'" for c in "\u2018\u2019\u201a\u201b"}
FTFY_SUBSET.update({c: '"' for c in "\u201c\u201d\u201e\u201f"})
FTFY_SUBSET.update({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                    "\ufb05": "\u017ft", "\ufb06": "st"})


def clean(text):
    # ftfy.fix_text's mojibake repair and NFC are not reproduced: the fixture prompts are text on
    # which the subset equals ftfy (checked with --check-open-clip, which runs the real ftfy).
    text = "".join(FTFY_SUBSET.get(c, c) for c in text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class Tokenizer:
    def __init__(self, vocab_path):
        lines = gzip.open(vocab_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
        self.b2u = bytes_to_unicode()
        vocab = list(self.b2u.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += SPECIALS
        self.encoder = {t: i for i, t in enumerate(vocab)}
        assert self.encoder["<start_of_text>"] == SOT and self.encoder["<end_of_text>"] == EOT
        self.ranks = {m: i for i, m in enumerate(merges)}

    def bpe(self, token):
        if token in SPECIALS:
            return [token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[k], word[k + 1]) for k in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged = []
            k = 0
            while k < len(word):
                if k + 1 < len(word) and word[k] == best[0] and word[k + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        return word

    def encode(self, text):
        ids = []
        for tok in pre_tokenize(clean(text)):
            tok = "".join(self.b2u[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self.bpe(tok))
        return ids

    def __call__(self, text, context=77):
        ids = [SOT] + self.encode(text) + [EOT]
        if len(ids) > context:
            ids = ids[:context]
            ids[-1] = EOT
        return ids + [0] * (context - len(ids))


def open_clip_tokenizer(wheel_dir, vocab):
    """open_clip's own tokenizer.py with torch stubbed (only its __call__ builds tensors)."""
    torch = types.ModuleType("torch")

    class LongTensor:  # annotation only
        pass

    torch.LongTensor = LongTensor
    torch.Tensor = LongTensor
    sys.modules.setdefault("torch", torch)
    path = os.path.join(wheel_dir, "open_clip", "tokenizer.py")
    mod = types.ModuleType("open_clip_tokenizer")
    mod.__file__ = path
    src = open(path, encoding="utf-8").read()
    # The module builds a default tokenizer at import from the wheel's own vocabulary; point it at ours.
    src = src.replace("_tokenizer = SimpleTokenizer()", "_tokenizer = None")
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod.SimpleTokenizer(bpe_path=vocab)


# ------------------------------------------------------------------ preprocessing


def preprocess_u8(img, size):
    """open_clip's OpenAI transform up to ToTensor: Resize(size, BICUBIC) + CenterCrop(size)."""
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def normalize_pixels(u8):
    x = u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(2, 0, 1).astype(np.float64)  # CHW


def synthetic(name):
    """The fixture's two formula images (the Rust test builds the same bytes)."""
    if name == "synthetic_a":
        w, h = 40, 36
        f = lambda r, c, ch: (7 * r + 3 * c + 60 * ch + (r * c) % 13) % 256  # noqa: E731
    else:
        w, h = 29, 45
        f = lambda r, c, ch: (r * r + 5 * c * ch + 11 * c + 90 * ch) % 256  # noqa: E731
    a = np.array([[[f(r, c, ch) for ch in range(3)] for c in range(w)] for r in range(h)], np.uint8)
    return Image.fromarray(a, "RGB")


# ------------------------------------------------------------------ model


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def activation(x, kind):
    if kind == "quick_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def block(x, p, pre, heads, act, causal):
    n, d = x.shape
    hd = d // heads
    h = layer_norm(x, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"])
    qkv = h @ p[pre + "attn.in_proj_weight"].T + p[pre + "attn.in_proj_bias"]
    q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
    out = np.zeros_like(h)
    for i in range(heads):
        s = slice(i * hd, (i + 1) * hd)
        a = q[:, s] @ k[:, s].T / math.sqrt(hd)
        if causal:
            a = a + np.triu(np.full((n, n), -np.inf), 1)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        out[:, s] = a @ v[:, s]
    x = x + out @ p[pre + "attn.out_proj.weight"].T + p[pre + "attn.out_proj.bias"]
    h = layer_norm(x, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"])
    h = activation(h @ p[pre + "mlp.c_fc.weight"].T + p[pre + "mlp.c_fc.bias"], act)
    return x + h @ p[pre + "mlp.c_proj.weight"].T + p[pre + "mlp.c_proj.bias"]


def encode_image(p, cfg, chw, act):
    v = cfg["vision_cfg"]
    ps, width = v["patch_size"], v["width"]
    heads = width // v.get("head_width", 64)
    g = v["image_size"] // ps
    w = p["visual.conv1.weight"].reshape(width, -1)  # [width, 3*ps*ps]
    patches = chw.reshape(3, g, ps, g, ps).transpose(1, 3, 0, 2, 4).reshape(g * g, -1)
    x = patches @ w.T
    x = np.concatenate([p["visual.class_embedding"][None, :], x], 0) + p["visual.positional_embedding"]
    x = layer_norm(x, p["visual.ln_pre.weight"], p["visual.ln_pre.bias"])
    for i in range(v["layers"]):
        x = block(x, p, f"visual.transformer.resblocks.{i}.", heads, act, False)
    x = layer_norm(x[0], p["visual.ln_post.weight"], p["visual.ln_post.bias"])
    return x @ p["visual.proj"]


def encode_text(p, cfg, ids, act):
    t = cfg["text_cfg"]
    ids = np.asarray(ids)
    x = p["token_embedding.weight"][ids] + p["positional_embedding"]
    for i in range(t["layers"]):
        x = block(x, p, f"transformer.resblocks.{i}.", t["heads"], act, True)
    x = layer_norm(x, p["ln_final.weight"], p["ln_final.bias"])
    return x[int(ids.argmax())] @ p["text_projection"]


# ------------------------------------------------------------------ random model and safetensors

TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 14, "heads": 2, "layers": 2},
}


def random_weights(cfg, seed=20230):
    """OpenAI/OpenCLIP names and shapes; values scaled so activations stay O(1) through 2 layers."""
    rng = np.random.default_rng(seed)
    p = {}

    def normal(name, shape, std):
        p[name] = (rng.standard_normal(shape) * std).astype(np.float16)

    def blocks(prefix, width, layers):
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            for ln in ("ln_1", "ln_2"):
                p[b + ln + ".weight"] = (1.0 + rng.standard_normal(width) * 0.2).astype(np.float16)
                normal(b + ln + ".bias", (width,), 0.2)
            normal(b + "attn.in_proj_weight", (3 * width, width), 1.0 / math.sqrt(width))
            normal(b + "attn.in_proj_bias", (3 * width,), 0.2)
            normal(b + "attn.out_proj.weight", (width, width), 1.0 / math.sqrt(width))
            normal(b + "attn.out_proj.bias", (width,), 0.2)
            normal(b + "mlp.c_fc.weight", (4 * width, width), 1.0 / math.sqrt(width))
            normal(b + "mlp.c_fc.bias", (4 * width,), 0.2)
            normal(b + "mlp.c_proj.weight", (width, 4 * width), 1.0 / math.sqrt(4 * width))
            normal(b + "mlp.c_proj.bias", (width,), 0.2)

    v, t, e = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    vw, ps = v["width"], v["patch_size"]
    g = v["image_size"] // ps
    normal("visual.conv1.weight", (vw, 3, ps, ps), 1.0 / math.sqrt(3 * ps * ps))
    normal("visual.class_embedding", (vw,), 1.0)
    normal("visual.positional_embedding", (g * g + 1, vw), 0.5)
    p["visual.ln_pre.weight"] = (1.0 + rng.standard_normal(vw) * 0.2).astype(np.float16)
    normal("visual.ln_pre.bias", (vw,), 0.2)
    blocks("visual.", vw, v["layers"])
    p["visual.ln_post.weight"] = (1.0 + rng.standard_normal(vw) * 0.2).astype(np.float16)
    normal("visual.ln_post.bias", (vw,), 0.2)
    normal("visual.proj", (vw, e), 1.0 / math.sqrt(vw))
    tw = t["width"]
    normal("token_embedding.weight", (t["vocab_size"], tw), 1.0)
    normal("positional_embedding", (t["context_length"], tw), 0.5)
    blocks("", tw, t["layers"])
    p["ln_final.weight"] = (1.0 + rng.standard_normal(tw) * 0.2).astype(np.float16)
    normal("ln_final.bias", (tw,), 0.2)
    normal("text_projection", (tw, e), 1.0 / math.sqrt(tw))
    p["logit_scale"] = np.array(math.log(1 / 0.07), np.float32)
    return p


def write_safetensors(path, tensors):
    """The safetensors format by hand: u64 header length, JSON header, raw little-endian data."""
    names = sorted(tensors)
    header, offset, blobs = {}, 0, []
    for n in names:
        a = np.ascontiguousarray(tensors[n])
        dtype = {np.float16: "F16", np.float32: "F32"}[a.dtype.type]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[n] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    header["__metadata__"] = {"format": "pt", "written_by": "tools/clip/reference.py"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ------------------------------------------------------------------ fixture

PROMPTS = [
    "a photo of a young person's face",
    "a photo of an old person's face",
    "A Photo of a SMILING face, taken outdoors!",
    "  it's  2023:   o'clock -- \"quoted\" & <tags>, emoji \U0001f600 and caf\u00e9 \u00fcber  ",
    "Don\u2019t \ufb01x \u201cme\u201d",
    "x" * 3 + " " + " ".join(["a long prompt that goes on"] * 20),
]
PAIR = ("a photo of a young person's face", "a photo of an old person's face")


def l2(v):
    return v / np.linalg.norm(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--write-fixture", metavar="DIR")
    ap.add_argument("--check-open-clip", metavar="WHEEL_DIR")
    args = ap.parse_args()
    tok = Tokenizer(args.vocab)

    if args.check_open_clip:
        theirs = open_clip_tokenizer(args.check_open_clip, args.vocab)
        extra = ["3.14159 is pi", "ÀÉÎ ÕÜ — naïve", "&amp;lt;b&amp;gt;"]
        for text in PROMPTS + extra:
            ours = tok(text)
            want = [theirs.sot_token_id] + theirs.encode(text) + [theirs.eot_token_id]
            if len(want) > 77:
                want = want[:77]
                want[-1] = theirs.eot_token_id
            want += [0] * (77 - len(want))
            status = "same" if ours == want else "DIFFERENT"
            print(f"{status:9} {text[:60]!r}")
        return

    if args.write_fixture:
        out = args.write_fixture
        os.makedirs(out, exist_ok=True)
        cfg = TINY
        weights = random_weights(cfg)
        write_safetensors(os.path.join(out, "clip_tiny.safetensors"), weights)
        with open(os.path.join(out, "clip_tiny.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        p = {k: v.astype(np.float64) for k, v in weights.items()}
        size = cfg["vision_cfg"]["image_size"]
        fx = {"model": "clip_tiny.safetensors", "config": "clip_tiny.json", "tokens": [], "images": [], "texts": []}
        for text in PROMPTS:
            ids = tok(text)
            fx["tokens"].append({"text": text, "ids": ids})
            emb = {a: encode_text(p, cfg, ids, a).tolist() for a in ("quick_gelu", "gelu")}
            fx["texts"].append({"text": text, "embedding": emb["quick_gelu"], "embedding_gelu": emb["gelu"]})
        for name in ("synthetic_a", "synthetic_b"):
            img = synthetic(name)
            u8 = preprocess_u8(img, size)
            chw = normalize_pixels(u8)
            emb = {a: encode_image(p, cfg, chw, a).tolist() for a in ("quick_gelu", "gelu")}
            fx["images"].append({
                "name": name, "width": img.size[0], "height": img.size[1],
                "preprocessed_rgb": u8.reshape(-1).tolist(),
                "embedding": emb["quick_gelu"], "embedding_gelu": emb["gelu"],
            })
        tn = l2(encode_text(p, cfg, tok(PAIR[0]), "quick_gelu"))
        ta = l2(encode_text(p, cfg, tok(PAIR[1]), "quick_gelu"))
        fx["direction"] = {"neutral": PAIR[0], "attribute": PAIR[1], "vector": l2(ta - tn).tolist()}
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(fx, f, separators=(",", ":"))
            f.write("\n")
        for t in fx["tokens"]:
            n = t["ids"].index(EOT) + 1
            print(n, t["ids"][:n][:12], "...")
        print("wrote", out)


if __name__ == "__main__":
    main()
