#!/usr/bin/env python3
"""Writes runtime/tests/fixtures/smollm2_generate.json: what transformers generates
and scores with SmolLM2-135M-Instruct, the reference `lamdac generate` and
`lamdac eval` are tested against (runtime/tests/generate_smollm2.rs).

Run once, from the repository root, with the Python of scripts/bench-vs-pytorch.sh
(torch, transformers):

    scripts/fetch-smollm2.sh
    cargo run --release -- convert models/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct
    ~/.cache/lamdac/bench-venv/bin/python scripts/make_generate_fixtures.py [MODEL_DIR]

It loads the converted folder with `LlamaForCausalLM.from_pretrained(...,
torch_dtype=float32)` (eager attention) and the tokenizer from its
tokenizer.json, and records, in float32:

- for three plain prompts and one chat prompt: the prompt's ids, 16 greedy new
  tokens (full recompute each step, no stop token), the log-probability of
  each chosen token (log_softmax of the logits), and the margin between the
  two largest logits at each step (a small margin is where two float32
  implementations could disagree);
- the chat prompt rendered by transformers' `apply_chat_template` (Jinja2)
  with the folder's tokenizer_config.json `chat_template`;
- for a fixed text: the log-probability of every token given the ones before,
  the mean negative log-likelihood and the perplexity.
"""
import json
import math
import os
import sys

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct"
OUT = "runtime/tests/fixtures/smollm2_generate.json"
NEW_TOKENS = 16
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
CHAT = "What is 2 + 3?"
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession "
    "of a good fortune, must be in want of a wife. However little known the "
    "feelings or views of such a man may be on his first entering a neighbourhood, "
    "this truth is so well fixed in the minds of the surrounding families."
)

torch.manual_seed(0)
torch.set_num_threads(os.cpu_count() or 1)
model = LlamaForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32, attn_implementation="eager")
model.eval()
tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(MODEL, "tokenizer.json"))
with open(os.path.join(MODEL, "tokenizer_config.json")) as f:
    tok_config = json.load(f)


@torch.no_grad()
def greedy(ids):
    ids = list(ids)
    tokens, logprobs, margins = [], [], []
    for _ in range(NEW_TOKENS):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        top2 = torch.topk(logits, 2).values
        nxt = int(torch.argmax(logits))
        tokens.append(nxt)
        logprobs.append(float(torch.log_softmax(logits, -1)[nxt]))
        margins.append(float(top2[0] - top2[1]))
        ids.append(nxt)
    return {"tokens": tokens, "logprobs": logprobs, "margins": margins, "text": tok.decode(tokens)}


cases = []
for p in PROMPTS:
    ids = tok(p)["input_ids"]
    cases.append({"prompt": p, "chat": False, "prompt_ids": ids, **greedy(ids)})

messages = [{"role": "user", "content": CHAT}]
rendered = tok.apply_chat_template(
    messages, chat_template=tok_config["chat_template"], add_generation_prompt=True, tokenize=False
)
chat_ids = tok(rendered, add_special_tokens=False)["input_ids"]
cases.append({"prompt": CHAT, "chat": True, "rendered": rendered, "prompt_ids": chat_ids, **greedy(chat_ids)})

with torch.no_grad():
    ids = tok(TEXT)["input_ids"]
    logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    text_lp = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
nll = -sum(text_lp) / len(text_lp)

fixture = {
    "model": "SmolLM2-135M-Instruct (models/, converted from the Q4_1 GGUF by lamdac convert)",
    "made_by": "scripts/make_generate_fixtures.py",
    "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    "dtype": "float32",
    "new_tokens": NEW_TOKENS,
    "cases": cases,
    "text": {"text": TEXT, "ids": ids, "logprobs": text_lp, "mean_nll": nll, "perplexity": math.exp(nll)},
}
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(fixture, f, indent=1)
    f.write("\n")
for c in cases:
    print(repr(c["prompt"]), "->", repr(c["text"]), "min margin %.4f" % min(c["margins"]))
print("text: %d tokens, mean NLL %.6f, perplexity %.4f" % (len(ids), nll, math.exp(nll)))
