#!/usr/bin/env python3
"""Independent float64 reference loss for the quickstart model.

Loads examples/models/austen-tiny (config.json + model.safetensors) with numpy
only -- no torch, and no code shared with scripts/pretrain_quickstart.py -- and
computes the causal-LM loss (mean cross-entropy over every window; logits at
position i predict byte i+1) of the first windows of examples/data/emma.txt,
in float64. Tokens are the bytes of the file.

Writes examples/models/austen-tiny/reference.json:
    {"text_file", "windows": [[start, len], ...], "loss", ...}
so a test of lamdac's own forward pass on the shipped model can compare
against it.

Usage (from the repository root, since the paths it records are relative to it;
needs numpy and safetensors):
    python3 scripts/quickstart_reference.py            # prints and writes reference.json
    python3 scripts/quickstart_reference.py --check    # compares with the stored file
"""

import argparse
import json
import math
import os

import numpy as np
from safetensors.numpy import load_file


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(W, cfg, ids):
    """Hugging Face LlamaForCausalLM forward (eager attention) on one sequence; float64."""
    d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
    T = len(ids)

    inv_freq = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]     # [T, hd/2]
    cos = np.cos(np.concatenate([ang, ang], axis=1))                     # [T, hd]
    sin = np.sin(np.concatenate([ang, ang], axis=1))

    def rope(x):  # x: [heads, T, hd], rotate-half form
        half = hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    causal = np.triu(np.ones((T, T), dtype=bool), k=1)
    h = W["model.embed_tokens.weight"][ids]                              # [T, d]
    for i in range(L):
        p = f"model.layers.{i}."
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps)
        q = (x @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        heads = []
        for hq in range(nh):
            kv = hq // (nh // nkv)                                      # grouped-query
            s = q[hq] @ k[kv].T / math.sqrt(hd)
            s = np.where(causal, -np.inf, s)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            heads.append((s / s.sum(axis=-1, keepdims=True)) @ v[kv])
        a = np.concatenate(heads, axis=-1)                               # [T, nh*hd]
        h = h + a @ W[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps)
        g = x @ W[p + "mlp.gate_proj.weight"].T
        u = x @ W[p + "mlp.up_proj.weight"].T
        h = h + (g / (1.0 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    h = rmsnorm(h, W["model.norm.weight"], eps)
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return h @ head.T                                                    # [T, vocab]


def nll_per_position(logits, ids):
    z = logits[:-1]
    m = z.max(axis=-1, keepdims=True)
    logz = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
    return logz - z[np.arange(len(ids) - 1), ids[1:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="examples/models/austen-tiny")
    ap.add_argument("--text", default="examples/data/emma.txt")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--len", type=int, default=64)
    ap.add_argument("--out", default=None, help="default: <model>/reference.json")
    ap.add_argument("--check", action="store_true", help="compare with the stored reference.json, write nothing")
    args = ap.parse_args()

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    W = {k: v.astype(np.float64) for k, v in load_file(os.path.join(args.model, "model.safetensors")).items()}
    with open(args.text, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)

    windows = [[i * args.len, args.len] for i in range(args.windows)]
    nll = [nll_per_position(forward(W, cfg, data[s : s + n]), data[s : s + n]) for s, n in windows]
    loss = float(np.concatenate(nll).mean())
    ref = {
        "text_file": args.text,
        "windows": windows,
        "loss": loss,
        "window_losses": [float(x.mean()) for x in nll],
        "n_predictions": int(sum(len(x) for x in nll)),
        "model": args.model,
        "note": "float64 numpy reference (scripts/quickstart_reference.py): tokens are the bytes of "
                "text_file; each window is one sequence at positions 0..len-1; loss is the mean over all "
                "windows of cross-entropy of logits[i] against byte i+1",
    }
    for (s, n), x in zip(windows, nll):
        print(f"window [{s}, {n}]: loss {x.mean():.10f} ({len(x)} predictions)")
    print(f"loss {loss:.10f} nats/byte (uniform ln 256 = {math.log(256):.4f})")

    path = args.out or os.path.join(args.model, "reference.json")
    if args.check:
        with open(path) as f:
            stored = json.load(f)
        diff = abs(stored["loss"] - loss)
        print(f"stored {stored['loss']:.10f}, |diff| {diff:.3e}")
        raise SystemExit(0 if diff < 1e-9 and stored["windows"] == windows else 1)
    with open(path, "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
