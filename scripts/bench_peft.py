#!/usr/bin/env python3
"""The reference users run: transformers + PEFT on the same checkpoint folder,
one training step timed the way shared/BENCH.md says. Prints one JSON line.

- `LlamaForCausalLM.from_pretrained(DIR, dtype=torch.float32,
  attn_implementation="sdpa")`;
- PEFT `get_peft_model(model, LoraConfig(r=R, lora_alpha=2R,
  lora_dropout=0, target_modules=<the seven linears of every block>))`;
  `--method lora_fa` freezes every `lora_A` (LoRA-FA);
- `torch.optim.AdamW` over the trainable parameters; a step is forward,
  causal-LM loss, backward, optimizer step, zero_grad;
- random token ids of the spec's batch x seq (fixed seed);
- torch threads = `--threads` (the machine's cores by default);
- the median step time of `--steps` steps after `--warmup` steps, tokens/s at
  that median, seconds from process start to the first step, and the peak
  resident set of this process (`ru_maxrss`): run one method per process.

Pinned versions: scripts/bench-requirements.txt. Used by
scripts/bench-vs-pytorch.sh.
"""
import argparse
import json
import os
import resource
import statistics
import time

T0 = time.perf_counter()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="Hugging Face Llama folder")
    ap.add_argument("--method", choices=["lora", "lora_fa"], default="lora")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default=",".join(LINEARS), help="comma-separated module names")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=args.targets.split(","),
    )
    model = get_peft_model(model, cfg)
    if args.method == "lora_fa":
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    startup = time.perf_counter() - T0
    first = None
    for i in range(args.warmup):
        loss = step()
        first = loss if first is None else first
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
        first = loss if first is None else first
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "variant": f"transformers + peft {args.method.replace('_', '-')}",
                "ms_per_step": med * 1e3,
                "tokens_per_s": args.batch * args.seq / med,
                "trainable_params": trainable,
                "startup_s": startup,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "first_loss": first,
                "last_loss": loss,
                "versions": {
                    "torch": torch.__version__,
                    "transformers": __import__("transformers").__version__,
                    "peft": __import__("peft").__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
