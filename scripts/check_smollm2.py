#!/usr/bin/env python3
"""Independent check of a converted SmolLM2 checkpoint: a plain numpy Llama forward.

Reads config.json and model.safetensors (with the tiny reader below, no torch, no
safetensors package) from the folder lamdac's GGUF converter wrote, tokenizes the
prompt with the `tokenizers` Python package from the folder's tokenizer.json (or
takes ids from --ids), and greedily decodes. Hugging Face Llama math throughout:
RMSNorm, rotate-half RoPE (pairs j and j + head_dim/2), grouped-query attention,
SwiGLU MLP, lm_head tied to the embedding when the config says so.

Three checks, the first two against the GGUF itself (read and dequantized here in
numpy, independently of the Rust code), when the GGUF is at hand (--gguf):

1. tensors: every converted tensor equals the numpy dequantization of its GGUF
   tensor, with q/k rows un-permuted by the inverse of llama.cpp's
   `reshape(n_head, 2, head_dim/2, d_in).swapaxes(1, 2)`;
2. logits: the Hugging Face forward (rotate-half RoPE) over the converted weights
   matches a llama.cpp-style forward (adjacent-pair RoPE, pairs 2j and 2j+1) over
   the raw GGUF weights, at every prompt position;
3. text: greedy decoding of "The capital of France is" continues with " Paris".

Check 3 alone is weak evidence for the permutation: q and k are permuted alike, so
q.k is unchanged and a model with scrambled rows only gets its RoPE frequencies
shuffled -- it still says " Paris" for a 5-token prompt. --scramble-qk re-applies
llama.cpp's permutation to show that checks 1 and 2 catch that.

Usage:
    scripts/fetch-smollm2.sh
    LAMDAC_GGUF_OUT=models/SmolLM2-135M-Instruct \
        cargo test -p lamda-runtime --test gguf real_smollm2
    python3 scripts/check_smollm2.py models/SmolLM2-135M-Instruct \
        --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf

Exit status 0 when every check passes, 1 otherwise.
Needs numpy; `tokenizers` unless --ids is given.
"""

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def read_safetensors(path):
    """{name: np.ndarray} from a safetensors file: u64 header length, JSON, raw data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        raw = data[start:end]
        if meta["dtype"] == "BF16":
            a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = raw.view(DTYPES[meta["dtype"]])
        out[name] = np.asarray(a, dtype=np.float32).reshape(meta["shape"])
    return out


def rms_norm(x, w, eps):
    # (T, d) -> (T, d); statistics in float64 for a stable reference.
    var = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)).astype(np.float32) * w


def rope_cos_sin(n_pos, head_dim, theta):
    # HF LlamaRotaryEmbedding: inv_freq over even indices, then cat(freqs, freqs).
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(n_pos, dtype=np.float64), inv_freq)  # (T, hd/2)
    emb = np.concatenate([freqs, freqs], axis=-1)  # (T, hd)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py's permute: what an un-converted GGUF q/k looks like.
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- GGUF, read independently of lamdac -------------------------------------

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path):
    """(metadata dict, {name: f32 array, row-major, ne reversed}) of a GGUF v3 file."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    raw = buf.tobytes() if buf.size < 4096 else None
    mv = memoryview(raw) if raw is not None else memoryview(buf)
    pos = 0

    def rd(fmt):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, mv, pos)
        pos += struct.calcsize(fmt)
        return v

    def rstr():
        nonlocal pos
        n = rd("<Q")
        out = bytes(mv[pos:pos + n]).decode("utf-8")
        pos += n
        return out

    def rval(t):
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd("<I"), rd("<Q")
            return [rval(et) for _ in range(n)]
        return rd(GGUF_SCALARS[t])

    assert bytes(mv[:4]) == b"GGUF", "not a GGUF file"
    pos = 4
    version, n_tensors, n_kv = rd("<I"), rd("<Q"), rd("<Q")
    assert version in (2, 3), version
    meta = {}
    for _ in range(n_kv):
        k = rstr()
        meta[k] = rval(rd("<I"))
    infos = []
    for _ in range(n_tensors):
        name = rstr()
        ne = [rd("<Q") for _ in range(rd("<I"))]
        infos.append((name, ne, rd("<I"), rd("<Q")))
    align = meta.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    tensors = {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        start = base + off
        if t == 0:  # F32
            a = buf[start:start + 4 * n].view(np.float32)
        elif t == 1:  # F16
            a = buf[start:start + 2 * n].view(np.float16).astype(np.float32)
        elif t == 30:  # BF16
            a = (buf[start:start + 2 * n].view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif t == 8:  # Q8_0: f16 d, 32 x i8
            b = buf[start:start + n // 32 * 34].reshape(-1, 34)
            d = b[:, :2].copy().view(np.float16).astype(np.float32)
            a = d * b[:, 2:].copy().view(np.int8).astype(np.float32)
        elif t == 3:  # Q4_1: f16 d, f16 m, 16 bytes; low nibbles are 0..15, high 16..31
            b = buf[start:start + n // 32 * 20].reshape(-1, 20)
            d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            qs = b[:, 4:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
            a = q * d + m
        else:
            raise SystemExit(f"{name}: ggml type {t} not handled by this script")
        tensors[name] = np.asarray(a, dtype=np.float32).reshape(list(reversed(ne)))
    return meta, tensors


GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def gguf_weights_hf_names(tensors):
    """GGUF tensors under HF names, rows still in llama.cpp order (no un-permutation)."""
    out = {}
    for name, a in tensors.items():
        if name == "token_embd.weight":
            out["model.embed_tokens.weight"] = a
        elif name == "output_norm.weight":
            out["model.norm.weight"] = a
        elif name == "output.weight":
            out["lm_head.weight"] = a
        else:
            _, i, kind, _ = name.split(".")
            out[f"model.layers.{i}.{GGUF_TO_HF[kind]}.weight"] = a
    return out


def llama_cpp_unpermute(w, n_head):
    # Inverse of llama_cpp_permute: (n_head, hd/2, 2) -> (n_head, 2, hd/2).
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_pairs(x, cos, sin):
    # llama.cpp's NORM RoPE: rotate (x[2j], x[2j+1]) by pos * theta^(-2j/hd).
    # cos/sin are (T, hd) = cat(freqs, freqs); the first half has one angle per pair.
    half = x.shape[-1] // 2
    c, s = cos[:, :half], sin[:, :half]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def forward(W, cfg, ids, rope="half"):
    """Logits (T, vocab) for token ids (T,); rope is "half" (HF) or "pairs" (llama.cpp)."""
    d = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // nh
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    cos, sin = rope_cos_sin(T, hd, cfg["rope_theta"])
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
    x = W["model.embed_tokens.weight"][ids]  # (T, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        if rope == "half":  # Hugging Face
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        else:  # llama.cpp, on GGUF-ordered q/k rows
            q = rope_pairs(q, cos, sin)
            k = rope_pairs(k, cos, sin)
        rep = nh // nkv  # GQA: query head j uses kv head j // rep
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask  # (nh, T, T)
        s = s - s.max(axis=-1, keepdims=True)
        a = np.exp(s)
        a /= a.sum(axis=-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight")
    if head is None or cfg.get("tie_word_embeddings"):
        head = W["model.embed_tokens.weight"]
    return x @ head.T


def check_tensors(W, G, cfg):
    """Check 1: converted tensors == numpy-dequantized GGUF tensors (q/k un-permuted)."""
    worst = {}
    for name, g in G.items():
        if name.endswith("q_proj.weight"):
            g = llama_cpp_unpermute(g, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            g = llama_cpp_unpermute(g, cfg["num_key_value_heads"])
        w = W.get(name)
        if w is None or w.shape != g.shape:
            print(f"  {name}: converted {None if w is None else w.shape}, GGUF {g.shape}")
            return False
        kind = name.split(".")[-2]
        worst[kind] = max(worst.get(kind, 0.0), float(np.max(np.abs(w - g))))
    extra = set(W) - set(G)
    print(f"  max |converted - numpy dequant| by kind: {worst}" + (f"; extra {extra}" if extra else ""))
    return not extra and max(worst.values()) == 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="models/SmolLM2-135M-Instruct")
    ap.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="the source GGUF for checks 1 and 2 (skipped if absent)")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--expect", default=" Paris")
    ap.add_argument("--new-tokens", type=int, default=6)
    ap.add_argument("--ids", help="comma-separated prompt ids (skips the tokenizers package)")
    ap.add_argument("--scramble-qk", action="store_true",
                    help="re-apply llama.cpp's q/k permutation (checks 1 and 2 should then fail)")
    args = ap.parse_args()

    ckpt = Path(args.checkpoint)
    cfg = json.loads((ckpt / "config.json").read_text())
    t0 = time.time()
    W = read_safetensors(ckpt / "model.safetensors")
    print(f"read {len(W)} tensors, {sum(a.size for a in W.values()):,} parameters "
          f"from {ckpt} in {time.time() - t0:.1f}s")
    if args.scramble_qk:
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}.self_attn."
            W[p + "q_proj.weight"] = llama_cpp_permute(W[p + "q_proj.weight"], cfg["num_attention_heads"])
            W[p + "k_proj.weight"] = llama_cpp_permute(W[p + "k_proj.weight"], cfg["num_key_value_heads"])
        print("q/k rows scrambled back to llama.cpp order")

    tok = None
    if args.ids:
        ids = [int(x) for x in args.ids.split(",")]
    else:
        from tokenizers import Tokenizer  # pip install tokenizers

        tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        ids = tok.encode(args.prompt, add_special_tokens=False).ids
    print(f"prompt {args.prompt!r} -> ids {ids}")

    results = {}
    gguf = Path(args.gguf)
    if gguf.is_file():
        t0 = time.time()
        meta, raw = read_gguf(gguf)
        G = gguf_weights_hf_names(raw)
        print(f"read {gguf} in numpy ({len(G)} tensors, "
              f"{meta.get('tokenizer.ggml.pre')} tokenizer) in {time.time() - t0:.1f}s")
        print("check 1: converted tensors vs numpy dequantization of the GGUF")
        results["tensors"] = check_tensors(W, G, cfg)
        print("check 2: HF forward (rotate-half) on converted vs llama.cpp forward (pairs) on GGUF")
        hf = forward(W, cfg, np.array(ids), rope="half")
        ref = forward(G, cfg, np.array(ids), rope="pairs")
        diff = float(np.max(np.abs(hf - ref)))
        scale = float(np.max(np.abs(ref)))
        same_argmax = bool(np.all(hf.argmax(-1) == ref.argmax(-1)))
        print(f"  logits at {len(ids)} positions: max |diff| {diff:.3g} (max |logit| {scale:.3g}), "
              f"same argmax everywhere: {same_argmax}")
        results["logits"] = diff <= 1e-3 * scale and same_argmax
        # Also: what the GGUF forward itself says next (MODELS.md: " Paris").
        if tok is not None:
            print(f"  llama.cpp-style forward on the GGUF predicts {tok.decode([int(ref[-1].argmax())])!r}")
    else:
        print(f"{gguf} not found: checks 1 and 2 skipped")

    print("check 3: greedy decoding of the converted model")
    t0 = time.time()
    eos = cfg.get("eos_token_id")
    start = len(ids)
    for step in range(args.new_tokens):
        logits = forward(W, cfg, np.array(ids))[-1]
        if step == 0:
            top = np.argsort(-logits)[:5]
            shown = [(int(t), tok.decode([int(t)]) if tok else "", round(float(logits[t]), 3)) for t in top]
            print(f"  top-5 next tokens (id, text, logit): {shown}")
        nxt = int(np.argmax(logits))
        ids.append(nxt)
        if nxt == eos:
            break
    new = ids[start:]
    text = tok.decode(new) if tok else ""
    print(f"  greedy continuation ids {new} -> {text!r} ({time.time() - t0:.1f}s)")
    if tok is None:
        print("  no tokenizer: compare the ids by hand")
    else:
        results["text"] = text.startswith(args.expect)

    for k, ok in results.items():
        print(f"{'PASS' if ok else 'FAIL'}: {k}")
    return 0 if results and all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
