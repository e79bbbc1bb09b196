#!/usr/bin/env python3
"""Pretrain the quickstart model `examples/models/austen-tiny`.

A tiny byte-level Llama (vocab 256: a token is one byte of the UTF-8 text),
pretrained from scratch on Pride and Prejudice, exported in the exact Hugging
Face `LlamaForCausalLM` layout that lamdac loads (config.json +
model.safetensors, float32). `lamdac train examples/quickstart.lamda` then
fine-tunes it with LaMDA adapters on Emma, a different novel by the same
author, so the fine-tuning loss starts moderate and falls.

The model below is a plain re-implementation of Hugging Face's Llama forward
pass (eager attention), written out so the script needs only torch, numpy and
safetensors -- not transformers:

  h = embed[ids]; per layer:
      h += o_proj(attn(rmsnorm_1(h)))
      h += down_proj(silu(gate_proj(x)) * up_proj(x)),  x = rmsnorm_2(h)
  logits = lm_head(rmsnorm_final(h))           (lm_head untied)

RMSNorm has a weight; RoPE is the rotate-half form with theta 10000;
attention is grouped-query and causal.

Reproducible: everything is seeded (torch.manual_seed) and runs on one thread,
so a rerun with the same arguments writes the same weights.

Usage (needs torch, numpy, safetensors; paths default to this repository and
the shared/ folder beside it):
    python3 scripts/pretrain_quickstart.py            # ~14 minutes on one core
    python3 scripts/pretrain_quickstart.py --steps 50 --out /tmp/x   # smoke run
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = dict(
    vocab_size=256,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=344,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=512,
)


# ----------------------------------------------------------------------------
# The model: Hugging Face LlamaForCausalLM, written out.
# ----------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rope_cos_sin(seq, head_dim, theta, dtype):
    # inv_freq[j] = theta^(-2j/head_dim), j < head_dim/2; duplicated over both halves.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    pos = torch.arange(seq).float()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)   # [b, nh, t, hd]
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)  # [b, nkv, t, hd]
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Query head h uses key/value head h // (nh // nkv).
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        y = scores.softmax(dim=-1) @ v                                  # [b, nh, t, hd]
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MLP(c)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Body(nn.Module):  # Hugging Face's `model.` prefix
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Body(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        cos, sin = rope_cos_sin(ids.shape[1], self.c["head_dim"], self.c["rope_theta"], h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin)
        return self.lm_head(self.model.norm(h))


def causal_lm_loss(logits, ids):
    """Mean cross-entropy; logits at position i predict token i+1."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def init_weights(model, std=0.02):
    # Hugging Face's Llama init: normal(0, initializer_range) for linear and
    # embedding weights, ones for norm weights (RMSNorm's default above).
    for name, p in model.named_parameters():
        if not name.endswith("layernorm.weight") and name != "model.norm.weight":
            nn.init.normal_(p, mean=0.0, std=std)


# ----------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------


def hf_config(c):
    """config.json in the style transformers 5 writes for a LlamaConfig, plus a
    top-level rope_theta copy (as tests/golden/*/config.json)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "dtype": "float32",
        "eos_token_id": None,
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "hidden_size": c["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": c["num_key_value_heads"],
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_parameters": {"rope_theta": c["rope_theta"], "rope_type": "default"},
        "rope_theta": c["rope_theta"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "5.24.0",
        "use_cache": True,
        "vocab_size": c["vocab_size"],
    }


def config_from_hf(j):
    return {k: j[k] for k in CONFIG}


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


def read_bytes(path):
    with open(path, "rb") as f:
        return torch.tensor(list(f.read()), dtype=torch.long)


@torch.no_grad()
def eval_loss(model, data, seq, n_windows=64, batch=16):
    """Mean loss over n_windows fixed, evenly spaced windows of `data`."""
    model.eval()
    starts = torch.linspace(0, len(data) - seq - 1, n_windows).long()
    total = 0.0
    for i in range(0, n_windows, batch):
        ids = torch.stack([data[s : s + seq] for s in starts[i : i + batch]])
        total += causal_lm_loss(model(ids), ids).item() * len(ids)
    model.train()
    return total / n_windows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=os.path.join(REPO, "..", "shared", "data", "prideprejudice.txt"))
    ap.add_argument("--eval-text", default=os.path.join(REPO, "examples", "data", "emma.txt"))
    ap.add_argument("--out", default=os.path.join(REPO, "examples", "models", "austen-tiny"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    text = read_bytes(args.text)
    n_val = len(text) // 20  # last 5% held out
    train, val = text[:-n_val], text[-n_val:]
    emma = read_bytes(args.eval_text) if os.path.exists(args.eval_text) else None
    counts = torch.bincount(train, minlength=256).double()
    pr = counts[counts > 0] / counts.sum()
    unigram = -(pr * pr.log()).sum().item()
    print(f"train {len(train)} bytes, val {len(val)} bytes; unigram entropy {unigram:.3f} nats/byte, "
          f"uniform ln(256) = {math.log(256):.3f}")

    c = dict(CONFIG)
    model = LlamaForCausalLM(c)
    init_weights(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters ({c['num_hidden_layers']} layers, hidden {c['hidden_size']}, "
          f"{c['num_attention_heads']} heads / {c['num_key_value_heads']} kv heads, head_dim {c['head_dim']}, "
          f"FFN {c['intermediate_size']})")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step):  # linear warmup, cosine decay to min_lr
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    curve = []
    run = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train) - args.seq, (args.batch,), generator=gen)
        ids = torch.stack([train[s : s + args.seq] for s in starts])
        loss = causal_lm_loss(model(ids), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if run is None else 0.9 * run + 0.1 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            v = eval_loss(model, val, args.seq)
            curve.append((step, loss.item(), v))
            print(f"step {step:5d}  lr {lr_at(step):.2e}  loss {loss.item():.4f}  (ema {run:.4f})  "
                  f"val {v:.4f}  {time.time() - t0:6.1f}s", flush=True)
    elapsed = time.time() - t0

    final_val = eval_loss(model, val, args.seq)
    final_train = eval_loss(model, train, args.seq)
    final_emma = eval_loss(model, emma, args.seq) if emma is not None else None
    print(f"done: {args.steps} steps in {elapsed:.0f}s; train {final_train:.4f}, val {final_val:.4f}"
          + (f", emma {final_emma:.4f}" if final_emma is not None else "") + " nats/byte")

    # Export in Hugging Face layout.
    os.makedirs(args.out, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(hf_config(c), f, indent=2)
        f.write("\n")

    # Round trip: a fresh model loaded from the files reproduces the losses exactly.
    with open(os.path.join(args.out, "config.json")) as f:
        c2 = config_from_hf(json.load(f))
    model2 = LlamaForCausalLM(c2)
    loaded = load_file(os.path.join(args.out, "model.safetensors"))
    assert set(loaded) == set(model2.state_dict()), "tensor names differ"
    model2.load_state_dict(loaded, strict=True)
    rt_val = eval_loss(model2, val, args.seq)
    rt_emma = eval_loss(model2, emma, args.seq) if emma is not None else None
    print(f"round trip from safetensors: val {rt_val:.6f} (trained {final_val:.6f})"
          + (f", emma {rt_emma:.6f} (trained {final_emma:.6f})" if emma is not None else ""))
    assert rt_val == final_val and rt_emma == final_emma, "round trip changed the loss"

    summary = {
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "seq": args.seq,
        "lr": args.lr, "min_lr": args.min_lr, "warmup": args.warmup, "weight_decay": args.weight_decay,
        "parameters": n_params, "seconds": round(elapsed, 1), "unigram_entropy": round(unigram, 4),
        "curve": [{"step": s, "train_batch": round(a, 4), "val": round(b, 4)} for s, a, b in curve],
        "final": {"train": round(final_train, 4), "val": round(final_val, 4),
                  "emma": None if final_emma is None else round(final_emma, 4)},
        "torch": torch.__version__,
    }
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}/config.json, model.safetensors, training_log.json")


if __name__ == "__main__":
    main()
