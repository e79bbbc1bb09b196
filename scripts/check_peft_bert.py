#!/usr/bin/env python3
"""Loads a lamdac PEFT export of a BERT classifier in PEFT and prints its logits.

    ~/.cache/lamdac/bench-venv/bin/python scripts/check_peft_bert.py EXPORT BASE [options]

EXPORT is a PEFT adapter folder written by lamdac (adapter_config.json with
"task_type": "SEQ_CLS" and the head in "modules_to_save", and
adapter_model.safetensors); BASE is the Hugging Face folder of the base model
(a BertModel checkpoint such as models/all-MiniLM-L6-v2, or a
BertForSequenceClassification one). The script builds
BertForSequenceClassification.from_pretrained(BASE, num_labels = rows of the
exported classifier) (eager attention, eval mode), wraps it in
PeftModel.from_pretrained(model, EXPORT), checks that every tensor of
adapter_model.safetensors landed in the model unchanged, tokenizes the inputs
with AutoTokenizer.from_pretrained(BASE) (max_length, truncation, padding to
the longest) and prints one JSON object: the inputs, their token ids, the
logits, the predicted labels, and with --expect the largest difference to
logits given by lamdac.

Inputs: --text (repeatable), --pair TEXT_A TEXT_B (repeatable), or --tsv FILE
(a `text<TAB>label` or `text_a<TAB>text_b<TAB>label` file with a header; the
first --limit rows; then accuracy is printed as well); a few fixed sentences
if none is given. --inputs FILE.safetensors (input_ids, attention_mask,
token_type_ids) skips the tokenizer.

--expect FILE: a JSON file with {"logits": [[...], ...]} (or a bare list of
rows) in the same order; the script exits 1 if max |PEFT - expected| > --atol
(default 1e-4).

--merged DIR: instead of EXPORT and BASE, a folder written by `lamdac merge`
for a classifier run (a BertForSequenceClassification with the adapters
merged into its weights and the trained classifier): loaded with
BertForSequenceClassification.from_pretrained(DIR) alone, no PEFT; every
tensor of its model.safetensors must load with no key missing or unexpected.

--selftest: builds an export from tests/golden_bert/bert_lamda_qv_r4 exactly as
SEMANTICS.md section 9 says (lora_A = A, lora_B = alpha (B S - B0 S0) in
float64, lora_alpha = r, classifier from final.classifier.*), loads it with
PEFT on that case's checkpoint and compares with its final.logits. It needs
no EXPORT or BASE.

What PEFT 0.21 expects (found by saving a LoRA made by get_peft_model on
BertForSequenceClassification with target_modules ["query", "value"] and
modules_to_save ["classifier"]):
    base_model.model.bert.encoder.layer.{i}.attention.self.{query,value}.lora_A.weight  [r, d_in]
    base_model.model.bert.encoder.layer.{i}.attention.self.{query,value}.lora_B.weight  [d_out, r]
    base_model.model.classifier.weight  [num_labels, hidden]
    base_model.model.classifier.bias    [num_labels]
(the saved names drop the adapter name `default` and the `modules_to_save.`
wrapper); a missing classifier tensor is a KeyError in from_pretrained.
"""
import argparse
import json
import os
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DEFAULT_TEXTS = [
    "A gorgeous, witty and deeply moving film.",
    "The plot is thin and the jokes fall flat.",
    "It's not great, but it's not terrible either.",
    "An overlong, self-indulgent mess.",
]


def build_model(export, base):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    tensors = load_file(os.path.join(export, "adapter_model.safetensors"))
    with open(os.path.join(export, "adapter_config.json")) as f:
        config = json.load(f)
    head = [k for k in tensors if k.endswith("classifier.weight")]
    if not head:
        sys.exit(f"{export}: no classifier.weight in adapter_model.safetensors (modules_to_save)")
    num_labels = tensors[head[0]].shape[0]
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=num_labels, attn_implementation="eager", torch_dtype=torch.float32
    )
    model = PeftModel.from_pretrained(model, export)
    model.eval()
    # Every exported tensor must be in the model as written.
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if ".lora_A." in key or ".lora_B." in key:
            target = key.replace(".weight", ".default.weight")
        else:
            stem, _, leaf = key.rpartition(".")
            target = f"{stem}.modules_to_save.default.{leaf}"
        if target not in params:
            sys.exit(f"{key}: no parameter {target} in the PEFT model")
        if not torch.equal(params[target].detach().float(), value.float()):
            sys.exit(f"{key}: loaded value differs from the file")
    return model, config, num_labels


def build_merged(folder):
    from transformers import BertForSequenceClassification

    model, info = BertForSequenceClassification.from_pretrained(
        folder, attn_implementation="eager", torch_dtype=torch.float32, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        sys.exit(f"{folder}: {problems}")
    model.eval()
    return model, {"task_type": "merged"}, model.config.num_labels


def read_inputs(args):
    if args.tsv:
        with open(args.tsv, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            rows = [line.rstrip("\n").split("\t") for _, line in zip(range(args.limit), f)]
        items = []
        for r in rows:
            d = dict(zip(header, r))
            item = {"text": d["text"]} if "text" in d else {"text_a": d["text_a"], "text_b": d["text_b"]}
            if "label" in d:
                item["label"] = int(d["label"])
            items.append(item)
        return items
    items = [{"text": t} for t in args.text or []] + [{"text_a": a, "text_b": b} for a, b in args.pair or []]
    return items or [{"text": t} for t in DEFAULT_TEXTS]


def compare(logits, expect_file, atol):
    with open(expect_file) as f:
        want = json.load(f)
    want = torch.tensor(want["logits"] if isinstance(want, dict) else want, dtype=torch.float64)
    diff = float((logits.double() - want).abs().max())
    return diff, diff <= atol


def run(args):
    if args.merged:
        model, config, num_labels = build_merged(args.merged)
        args.base = args.base or args.merged
    else:
        model, config, num_labels = build_model(args.export, args.base)
    out = {
        "export": args.export,
        "base": args.base,
        "task_type": config.get("task_type"),
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "num_labels": num_labels,
    }
    with torch.no_grad():
        if args.inputs:
            t = load_file(args.inputs)
            batch = {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in t}
            items = None
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(args.tokenizer or args.base)
            items = read_inputs(args)
            if all("text" in i for i in items):
                batch = tok([i["text"] for i in items], max_length=args.max_length, truncation=True,
                            padding="longest", return_tensors="pt")
            elif all("text_a" in i for i in items):
                batch = tok([i["text_a"] for i in items], [i["text_b"] for i in items],
                            max_length=args.max_length, truncation=True, padding="longest", return_tensors="pt")
            else:
                sys.exit("mixing single texts and pairs in one batch is not supported")
            batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**batch).logits.float()
    pred = logits.argmax(-1).tolist()
    if items is not None:
        out["inputs"] = items
    out["input_ids"] = batch["input_ids"].tolist()
    out["logits"] = logits.tolist()
    out["pred"] = pred
    if items and all("label" in i for i in items):
        out["accuracy"] = sum(p == i["label"] for p, i in zip(pred, items)) / len(items)
    ok = True
    if args.expect:
        out["max_abs_diff_to_expect"], ok = compare(logits, args.expect, args.atol)
    # one key per line, each value compact
    print("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in out.items()) + "\n}")
    return ok


def selftest(args):
    case = "tests/golden_bert/bert_lamda_qv_r4"
    meta = json.load(open(os.path.join(case, "case.json")))
    exp = load_file(os.path.join(case, "expected.safetensors"))
    alpha, r = meta["alpha"], meta["rank"]["value"]
    tensors = {}
    for m in meta["modules"]:
        n = m["name"]
        A, B, S = exp[f"init.{n}.A"], exp[f"final.{n}.B"], exp[f"final.{n}.S"]
        B0, S0 = exp[f"init.{n}.B"], exp[f"init.{n}.S"]
        lora_b = alpha * (B.double() @ S.double() - B0.double() @ S0.double())
        tensors[f"base_model.model.{n}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{n}.lora_B.weight"] = lora_b.float().contiguous()
    tensors["base_model.model.classifier.weight"] = exp["final.classifier.weight"]
    tensors["base_model.model.classifier.bias"] = exp["final.classifier.bias"]
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": r,
        "lora_alpha": r,
        "target_modules": [m["name"] for m in meta["modules"]],
        "modules_to_save": ["classifier"],
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": case,
        "inference_mode": True,
    }
    with tempfile.TemporaryDirectory() as d:
        save_file(tensors, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(d, "expect.json"), "w") as f:
            json.dump({"logits": exp["final.logits"].tolist()}, f)
        args.export, args.base = d, case
        args.inputs = os.path.join(case, "inputs.safetensors")
        args.expect = os.path.join(d, "expect.json")
        return run(args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", nargs="?")
    ap.add_argument("base", nargs="?")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: BASE)")
    ap.add_argument("--text", action="append")
    ap.add_argument("--pair", nargs=2, action="append", metavar=("TEXT_A", "TEXT_B"))
    ap.add_argument("--tsv")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--inputs", help="safetensors with input_ids, attention_mask, token_type_ids")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--expect")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--merged", help="a folder written by `lamdac merge` (no PEFT)")
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    if args.selftest:
        ok = selftest(args)
    else:
        if not args.merged and (not args.export or not args.base):
            ap.error("EXPORT and BASE are required (or --merged DIR, or --selftest)")
        ok = run(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
