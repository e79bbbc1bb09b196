#!/usr/bin/env python3
"""The training step of a LaMDA (or LoRA) spec in plain PyTorch, timed the way
`lamdac bench` times it: same model (a Hugging Face Llama folder), same
adapted modules (every linear layer of every block), same ranks, batch and
sequence length, AdamW, float32 on the CPU. Prints one JSON line per method.

LaMDA (SEMANTICS.md section 3): A = V[:, :r]^T frozen, S = I trainable,
B = U[:, :r] trainable, W_res = W - alpha B S A; y = x W_res^T + alpha (x A^T S^T) B^T.
LoRA: y = x W^T + ((x A^T) B^T) alpha / r (PEFT's order of operations).
B freezing is not modelled: the timed steps are all before t_i, as in
`lamdac bench` with the quickstart schedule (t_i = 90 of 300 steps).

Used by scripts/bench-vs-pytorch.sh; needs torch, numpy, safetensors.
"""
import argparse
import importlib.util
import json
import os
import time

import torch
import torch.nn as nn
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("pq", os.path.join(HERE, "pretrain_quickstart.py"))
pq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pq)


class LamdaLinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        w = base.weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        a, b = vh[:r].float(), u[:, :r].float()
        self.alpha = alpha
        self.register_buffer("w_res", (w - alpha * b.double() @ a.double()).float())
        self.register_buffer("a", a)
        self.s = nn.Parameter(torch.eye(r))
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        z = x @ self.a.t()
        u = z @ self.s.t()
        return x @ self.w_res.t() + self.alpha * (u @ self.b.t())


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.register_buffer("w", base.weight.detach().clone())
        d_out, d_in = self.w.shape
        bound = 1.0 / d_in ** 0.5
        self.a = nn.Parameter(torch.empty(r, d_in).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(d_out, r))
        self.scale = alpha / r

    def forward(self, x):
        return x @ self.w.t() + ((x @ self.a.t()) @ self.b.t()) * self.scale


def build(model_dir, method, r, alpha):
    cfg = pq.config_from_hf(json.load(open(os.path.join(model_dir, "config.json"))))
    m = pq.LlamaForCausalLM(cfg)
    m.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")), strict=False)
    for p in m.parameters():
        p.requires_grad_(False)
    wrap = LamdaLinear if method == "lamda" else LoraLinear
    for layer in m.model.layers:
        for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")), (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for n in names:
                setattr(parent, n, wrap(getattr(parent, n), r, alpha))
    return m, cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    for method, alpha in (("lamda", 1.0), ("lora", 8.0)):
        model, cfg = build(args.model, method, args.rank, alpha)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq))
        def step():
            opt.zero_grad(set_to_none=True)
            loss = pq.causal_lm_loss(model(ids), ids)
            loss.backward()
            opt.step()
            return loss.item()
        for _ in range(args.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        secs = time.perf_counter() - t0
        print(json.dumps({
            "variant": f"pytorch {torch.__version__} eager, {method}",
            "ms_per_step": secs * 1e3 / args.steps,
            "tokens_per_s": args.batch * args.seq * args.steps / secs,
            "trainable_params": sum(p.numel() for p in params),
            "threads": args.threads,
        }))


if __name__ == "__main__":
    main()
