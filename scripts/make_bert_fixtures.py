#!/usr/bin/env python3
"""Writes tests/golden_bert/: reference vectors for the `bert` family and its
sequence-classification head, from an independent PyTorch implementation
(transformers' BertForSequenceClassification plus a plain-torch forward and a
plain-torch LaMDA written here; nothing comes from lamdac).

Run from the repository root with the Python of scripts/bench-vs-pytorch.sh
(scripts/bench-requirements.txt: torch, transformers, safetensors):

    ~/.cache/lamdac/bench-venv/bin/python scripts/make_bert_fixtures.py [--tokens-only]

It writes

- tests/golden_bert/bert_lamda_qv_r4/ (config.json, model.safetensors,
  inputs.safetensors, expected.safetensors, case.json): a tiny random BERT
  (vocab 96, hidden 32, 2 layers, 4 heads, FFN 48, 3 labels), its base outputs
  (last hidden state, pooled output, CLS-pooled and mean-pooled logits) and a
  5-step LaMDA training trace on the query and value Linear of both layers
  with the classifier trained at full rank (SEMANTICS.md; the protocol is in
  tests/golden_bert/README.md);
- tests/golden_bert/minilm_tokens.json, only when models/all-MiniLM-L6-v2
  exists (scripts/fetch-minilm.sh): what transformers' AutoTokenizer from that
  folder produces for a few varied sentences (max_length 32, truncation,
  padding to max_length), checked against the `tokenizers` library on the
  same tokenizer.json.

Every check below must pass or nothing is written: transformers and the plain
forward agree on the base model (~1e-6); the LaMDA model at step 0 computes the
base model; the LaMDA step-0 gradients match central finite differences in
float64; a float64 re-run and a float32 re-run through plain autograd land
within 1e-4 relative of the stored numbers (reference_divergence in case.json).
Re-running the script reproduces the files byte for byte (threads = 1).
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

OUT = "tests/golden_bert"
CASE = "bert_lamda_qv_r4"
MINILM = "models/all-MiniLM-L6-v2"

MODEL = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.1,
    pad_token_id=0,
    num_labels=3,
    problem_type="single_label_classification",
    architectures=["BertForSequenceClassification"],
)
INIT_STD = 0.1
RANK = 4
ALPHA = 1.0
STEPS = 5
LR, BETA1, BETA2, EPS, WD = 1e-2, 0.9, 0.999, 1e-8, 0.0
BATCH, SEQ = 3, 10
LENGTHS = [10, 7, 4]
CLS_ID, SEP_ID, PAD_ID = 2, 3, 0
LABELS = [2, 0, 1]
DATA_SEED = 7
FIRST_INIT_SEED = 11
KINDS = ["query", "value"]

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------------------
# Inputs and weights


def make_inputs():
    """input_ids / attention_mask / token_type_ids [3, 10], right-padded with 0.

    Row 0 (length 10) is a pair: [CLS] a a a a [SEP] b b b [SEP], the second
    segment (b's and its [SEP]) with token type 1. Rows 1 and 2 (lengths 7, 4)
    are single segments: [CLS] a ... [SEP]. Word ids are drawn from 4..95
    (0 = pad, 1 = unused, 2 = [CLS] stand-in, 3 = [SEP] stand-in).
    """
    g = torch.Generator().manual_seed(DATA_SEED)
    ids = torch.full((BATCH, SEQ), PAD_ID, dtype=torch.int64)
    types = torch.zeros((BATCH, SEQ), dtype=torch.int64)
    mask = torch.zeros((BATCH, SEQ), dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        words = torch.randint(4, MODEL["vocab_size"], (n,), generator=g)
        ids[b, :n] = words
        ids[b, 0] = CLS_ID
        ids[b, n - 1] = SEP_ID
        mask[b, :n] = 1
    # the pair: segment A = positions 0..5 ([SEP] at 5), segment B = 6..9
    ids[0, 5] = SEP_ID
    types[0, 6:10] = 1
    labels = torch.tensor(LABELS, dtype=torch.int64)
    return ids, mask, types, labels


def make_config():
    cfg = BertConfig(**MODEL)
    cfg._attn_implementation = "eager"
    return cfg


def make_weights(cfg, seed):
    """Every parameter of BertForSequenceClassification, float32, in its order."""
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        n = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name.endswith("LayerNorm.weight"):
            out[name] = 1.0 + 0.1 * n
        elif name.endswith(".bias"):
            out[name] = 0.1 * n
        else:
            out[name] = INIT_STD * n
    return out


def hf_model(cfg, weights, dtype=torch.float32):
    model = BertForSequenceClassification(cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    # only the non-persistent buffers may be missing
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    model.eval()
    return model.to(dtype)


def module_names(cfg):
    return [
        f"bert.encoder.layer.{i}.attention.self.{k}" for i in range(cfg.num_hidden_layers) for k in KINDS
    ]


# ---------------------------------------------------------------------------
# Plain-torch BERT forward (independent of transformers' modules)


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def plain_linear(P, name, x, adapters):
    """x W^T + b, or for an adapted module x W_res^T + b + alpha ((x A^T) S^T) B^T."""
    if name in adapters:
        a = adapters[name]
        y = x @ a["W_res"].T + P[name + ".bias"]
        return y + ALPHA * (((x @ a["A"].T) @ a["S"].T) @ a["B"].T)
    return x @ P[name + ".weight"].T + P[name + ".bias"]


def plain_forward(P, cfg, ids, mask, types, adapters=None):
    """Returns last_hidden_state [b, s, d], pooled [b, d], logits (CLS) [b, L],
    mean-pool logits [b, L]. P: name -> tensor (HF names); adapters: module
    name -> {W_res, A, S, B}."""
    adapters = adapters or {}
    b, s = ids.shape
    d, nh = cfg.hidden_size, cfg.num_attention_heads
    hd = d // nh
    eps = cfg.layer_norm_eps
    pos = torch.arange(s)
    h = (
        P["bert.embeddings.word_embeddings.weight"][ids]
        + P["bert.embeddings.position_embeddings.weight"][pos][None]
        + P["bert.embeddings.token_type_embeddings.weight"][types]
    )
    h = layer_norm(h, P["bert.embeddings.LayerNorm.weight"], P["bert.embeddings.LayerNorm.bias"], eps)
    keep = mask.bool()[:, None, None, :]  # [b, 1, 1, s]: key j visible
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}."

        def heads(t):
            return t.view(b, s, nh, hd).transpose(1, 2)

        q = heads(plain_linear(P, p + "attention.self.query", h, adapters))
        k = heads(plain_linear(P, p + "attention.self.key", h, adapters))
        v = heads(plain_linear(P, p + "attention.self.value", h, adapters))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~keep, float("-inf"))
        scores = scores - scores.amax(-1, keepdim=True)
        e = torch.exp(scores)
        probs = e / e.sum(-1, keepdim=True)
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, d)
        a = plain_linear(P, p + "attention.output.dense", ctx, adapters)
        h = layer_norm(a + h, P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"], eps)
        m = gelu(plain_linear(P, p + "intermediate.dense", h, adapters))
        m = plain_linear(P, p + "output.dense", m, adapters)
        h = layer_norm(m + h, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"], eps)
    pooled = torch.tanh(h[:, 0] @ P["bert.pooler.dense.weight"].T + P["bert.pooler.dense.bias"])
    logits = pooled @ P["classifier.weight"].T + P["classifier.bias"]
    mf = mask.to(h.dtype)[:, :, None]
    mean = (h * mf).sum(1) / mf.sum(1)
    mean_logits = mean @ P["classifier.weight"].T + P["classifier.bias"]
    return h, pooled, logits, mean_logits


def cross_entropy(logits, labels):
    z = logits - logits.amax(-1, keepdim=True)
    logp = z - torch.log(torch.exp(z).sum(-1, keepdim=True))
    return -logp[torch.arange(len(labels)), labels].mean()


# ---------------------------------------------------------------------------
# LaMDA (SEMANTICS.md sections 2, 3)


def svd_init(W):
    """A = V[:, :r]^T, B = U[:, :r] (float64 SVD of the float32 W, sign rule,
    rounded to float32), sigma (f64), W_res = W - alpha B S A (float64, rounded
    once), and the margins of the leading singular vectors."""
    W64 = W.double()
    U, s, Vh = torch.linalg.svd(W64, full_matrices=False)
    V = Vh.T
    for i in range(U.shape[1]):
        absu = U[:, i].abs()
        j = int(torch.argmax(absu))  # first index of the maximum
        if U[j, i] < 0:
            U[:, i] = -U[:, i]
            V[:, i] = -V[:, i]
    A = V[:, :RANK].T.contiguous().float()
    B = U[:, :RANK].contiguous().float()
    S = torch.eye(RANK, dtype=torch.float32)
    W_res = (W64 - ALPHA * (B.double() @ S.double() @ A.double())).float()
    gap = min(float((s[i] - s[i + 1]) / s[0]) for i in range(RANK))
    margins = []
    for i in range(RANK):
        top2 = torch.topk(U[:, i].abs(), 2).values
        margins.append(float(top2[0] - top2[1]))
    return {"A": A, "S": S, "B": B, "W_res": W_res}, s, gap, min(margins)


class LamdaFn(torch.autograd.Function):
    """The LaMDA linear with the backward of SEMANTICS.md section 3 (saves z, u)."""

    @staticmethod
    def forward(ctx, x, W_res, bias, A, S, B):
        z = x @ A.T
        u = z @ S.T
        y = x @ W_res.T + bias + ALPHA * (u @ B.T)
        ctx.save_for_backward(z, u, W_res, A, S, B)
        return y

    @staticmethod
    def backward(ctx, g):
        z, u, W_res, A, S, B = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        z2 = z.reshape(-1, z.shape[-1])
        u2 = u.reshape(-1, u.shape[-1])
        gB = g2 @ B
        dS = ALPHA * (gB.T @ z2)
        dB = ALPHA * (g2.T @ u2)
        dx = (g2 @ W_res + ALPHA * ((gB @ S) @ A)).reshape(*g.shape[:-1], A.shape[1])
        return dx, None, None, None, dS, dB


class LamdaLinear(torch.nn.Module):
    def __init__(self, init, bias):
        super().__init__()
        self.register_buffer("W_res", init["W_res"].clone())
        self.register_buffer("bias", bias.clone())
        self.register_buffer("A", init["A"].clone())
        self.S = torch.nn.Parameter(init["S"].clone())
        self.B = torch.nn.Parameter(init["B"].clone())

    def forward(self, x):
        return LamdaFn.apply(x, self.W_res, self.bias, self.A, self.S, self.B)


def get_module(model, name):
    m = model
    for part in name.split("."):
        m = getattr(m, part)
    return m


def set_module(model, name, new):
    parent, _, last = name.rpartition(".")
    setattr(get_module(model, parent), last, new)


# ---------------------------------------------------------------------------
# Training runs


def lamda_hf_model(cfg, weights, inits, dtype):
    """transformers' BertForSequenceClassification with the adapted Linear
    modules replaced by LamdaLinear (SEMANTICS.md backward), everything frozen
    but S, B and the classifier. Returns the model and {name: parameter}."""
    model = hf_model(cfg, weights, dtype)
    names = module_names(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        lin = get_module(model, name)
        init = {k: v.to(dtype) for k, v in inits[name].items()}
        if dtype == torch.float64:  # the same case in float64: W_res not rounded
            init["W_res"] = weights[name + ".weight"].double() - ALPHA * init["B"] @ init["S"] @ init["A"]
        set_module(model, name, LamdaLinear(init, lin.bias.detach()).to(dtype))
    model.classifier.weight.requires_grad_(True)
    model.classifier.bias.requires_grad_(True)
    params = {}
    for name in names:
        mod = get_module(model, name)
        params[name + ".S"] = mod.S
        params[name + ".B"] = mod.B
    params["classifier.weight"] = model.classifier.weight
    params["classifier.bias"] = model.classifier.bias
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(params), trainable
    return model, params


def train_hf(cfg, weights, inits, batch, dtype):
    """Primary run: lamda_hf_model trained with torch's AdamW."""
    ids, mask, types, labels = batch
    model, params = lamda_hf_model(cfg, weights, inits, dtype)
    opt = torch.optim.AdamW(
        list(params.values()), lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD, foreach=False
    )
    rec = {"losses": [], "grad0": {}, "step1": {}}

    def forward():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        return out.loss, out.logits

    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss, logits = forward()
        if t == 0:
            rec["init.logits"] = logits.detach().clone()
        rec["losses"].append(loss.detach().clone())
        loss.backward()
        if t == 0:
            rec["grad0"] = {n: p.grad.detach().clone() for n, p in params.items()}
        opt.step()
        if t == 0:
            rec["step1"] = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        loss, logits = forward()
    rec["losses"].append(loss.detach().clone())
    rec["final.logits"] = logits.detach().clone()
    rec["final"] = {n: p.detach().clone() for n, p in params.items()}
    rec["exp_avg"] = {n: opt.state[p]["exp_avg"].detach().clone() for n, p in params.items()}
    rec["exp_avg_sq"] = {n: opt.state[p]["exp_avg_sq"].detach().clone() for n, p in params.items()}
    rec["losses"] = torch.stack(rec["losses"])
    return rec


def mean_pool_grad0(cfg, weights, inits, batch, dtype):
    """The `pool = mean` head at step 0: loss and gradients of the LaMDA model
    whose logits are classifier(masked mean of last_hidden_state) (no pooler).
    transformers' BertModel with LamdaLinear modules."""
    ids, mask, types, labels = batch
    model, params = lamda_hf_model(cfg, weights, inits, dtype)
    h = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    m = mask.to(dtype)[:, :, None]
    logits = model.classifier((h * m).sum(1) / m.sum(1))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return loss.detach(), logits.detach(), {n: p.grad.detach().clone() for n, p in params.items()}


def mean_pool_grad0_plain(cfg, weights, inits, batch):
    """The same with the plain-torch forward and plain autograd, float64."""
    ids, mask, types, labels = batch
    P = {k: v.double() for k, v in weights.items()}
    adapters, params = {}, {}
    for name in module_names(cfg):
        a = {k: v.double() for k, v in inits[name].items()}
        a["W_res"] = P[name + ".weight"] - ALPHA * a["B"] @ a["S"] @ a["A"]
        for k in ("S", "B"):
            a[k].requires_grad_(True)
            params[f"{name}.{k}"] = a[k]
        adapters[name] = a
    for k in ("classifier.weight", "classifier.bias"):
        P[k].requires_grad_(True)
        params[k] = P[k]
    loss = cross_entropy(plain_forward(P, cfg, ids, mask, types, adapters)[3], labels)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in params.items()}


def train_plain(cfg, weights, inits, batch):
    """Cross-check: the plain-torch forward with plain autograd through the
    LaMDA product (no custom backward), float32, the same AdamW."""
    ids, mask, types, labels = batch
    P = {k: v.clone() for k, v in weights.items()}
    adapters = {}
    params = {}
    for name in module_names(cfg):
        a = {k: v.clone() for k, v in inits[name].items()}
        a["S"].requires_grad_(True)
        a["B"].requires_grad_(True)
        adapters[name] = a
        params[name + ".S"] = a["S"]
        params[name + ".B"] = a["B"]
    for k in ("classifier.weight", "classifier.bias"):
        P[k].requires_grad_(True)
        params[k] = P[k]
    opt = torch.optim.AdamW(
        list(params.values()), lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD, foreach=False
    )
    losses, grad0 = [], {}
    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = cross_entropy(plain_forward(P, cfg, ids, mask, types, adapters)[2], labels)
        losses.append(loss.detach().clone())
        loss.backward()
        if t == 0:
            grad0 = {n: p.grad.detach().clone() for n, p in params.items()}
        opt.step()
    with torch.no_grad():
        losses.append(cross_entropy(plain_forward(P, cfg, ids, mask, types, adapters)[2], labels))
    return {
        "losses": torch.stack(losses),
        "grad0": grad0,
        "final": {n: p.detach().clone() for n, p in params.items()},
    }


def divergence(ref, other):
    """max abs / max rel (per tensor: |d|_max / |ref|_max) of losses, grad0, final params."""

    def worst(pairs):
        ab, rel = 0.0, 0.0
        for a, b in pairs:
            d = float((a.double() - b.double()).abs().max())
            ab = max(ab, d)
            rel = max(rel, d / max(float(a.double().abs().max()), 1e-30))
        return ab, rel

    g_abs, g_rel = worst((ref["grad0"][n], other["grad0"][n]) for n in ref["grad0"])
    p_abs, p_rel = worst((ref["final"][n], other["final"][n]) for n in ref["final"])
    return {
        "losses_max_abs": float((ref["losses"].double() - other["losses"].double()).abs().max()),
        "grad0_max_rel": g_rel,
        "grad0_max_abs": g_abs,
        "final_params_max_abs": p_abs,
        "final_params_max_rel": p_rel,
    }


def finite_differences(cfg, weights, inits, batch, grad0, names):
    """Central differences in float64 of the plain-forward loss w.r.t. a few
    entries of every trainable tensor; returns the worst relative mismatch
    against the float64 autograd gradient and against the stored float32 grad0."""
    ids, mask, types, labels = batch
    P = {k: v.double() for k, v in weights.items()}
    base_ad = {n: {k: v.double() for k, v in inits[n].items()} for n in names}
    for n in names:  # the float64 case: W_res from the float64 product
        a = base_ad[n]
        a["W_res"] = P[n + ".weight"] - ALPHA * a["B"] @ a["S"] @ a["A"]

    def tensor_of(key, P, ad):
        mod, _, which = key.rpartition(".")
        if key.startswith("classifier."):
            return P[key]
        return ad[mod][which]

    def loss_with(key, idx, delta):
        P2 = dict(P)
        ad = {n: dict(a) for n, a in base_ad.items()}
        t = tensor_of(key, P2, ad).clone()
        t[idx] += delta
        if key.startswith("classifier."):
            P2[key] = t
        else:
            mod, _, which = key.rpartition(".")
            ad[mod][which] = t
        with torch.no_grad():
            return float(cross_entropy(plain_forward(P2, cfg, ids, mask, types, ad)[2], labels))

    # float64 autograd gradient
    P_ag = dict(P)
    ad_ag = {n: dict(a) for n, a in base_ad.items()}
    leaves = {}
    for key in grad0:
        t = tensor_of(key, P_ag, ad_ag).clone().requires_grad_(True)
        leaves[key] = t
        if key.startswith("classifier."):
            P_ag[key] = t
        else:
            mod, _, which = key.rpartition(".")
            ad_ag[mod][which] = t
    cross_entropy(plain_forward(P_ag, cfg, ids, mask, types, ad_ag)[2], labels).backward()

    g = torch.Generator().manual_seed(3)
    h = 1e-6
    checked = []
    worst_ag, worst_f32 = 0.0, 0.0
    for key in grad0:
        shape = grad0[key].shape
        scale = float(leaves[key].grad.abs().max())
        # the largest entry plus two random ones
        flat = int(torch.argmax(leaves[key].grad.abs()))
        picks = [flat] + [int(i) for i in torch.randint(0, grad0[key].numel(), (2,), generator=g)]
        for f in picks:
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(f), shape))
            fd = (loss_with(key, idx, h) - loss_with(key, idx, -h)) / (2 * h)
            ag = float(leaves[key].grad[idx])
            st = float(grad0[key][idx])
            worst_ag = max(worst_ag, abs(fd - ag) / scale)
            worst_f32 = max(worst_f32, abs(fd - st) / scale)
            checked.append({"tensor": key, "index": list(idx), "fd": fd, "autograd_f64": ag, "grad0": st})
    return worst_ag, worst_f32, checked


# ---------------------------------------------------------------------------
# The training case


def make_case():
    cfg = make_config()
    ids, mask, types, labels = make_inputs()
    batch = (ids, mask, types, labels)
    names = module_names(cfg)
    d = cfg.hidden_size

    # Pick the first seed whose adapted weights have well-determined singular
    # vectors (like the Llama golden cases).
    seed = FIRST_INIT_SEED
    while True:
        weights = make_weights(cfg, seed)
        inits, sigmas, gaps, margins = {}, {}, {}, {}
        for n in names:
            inits[n], sigmas[n], gaps[n], margins[n] = svd_init(weights[n + ".weight"])
        if min(gaps.values()) >= 0.01 and min(margins.values()) >= 0.002:
            break
        seed += 1

    # Base model, both ways.
    model = hf_model(cfg, weights)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, output_hidden_states=True)
        hf_hidden = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    hidden, pooled, logits, mean_logits = plain_forward(weights, cfg, ids, mask, types)
    base_diff = {
        "logits": float((out.logits - logits).abs().max()),
        "hidden": float((hf_hidden.last_hidden_state - hidden).abs().max()),
        "pooled": float((hf_hidden.pooler_output - pooled).abs().max()),
        "loss": abs(float(out.loss) - float(cross_entropy(logits, labels))),
    }
    assert max(base_diff.values()) < 2e-6, base_diff
    # The float64 plain forward, as a sanity check of the float32 numbers.
    P64 = {k: v.double() for k, v in weights.items()}
    h64, p64, l64, m64 = plain_forward(P64, cfg, ids, mask, types)
    assert float((l64 - out.logits.double()).abs().max()) < 1e-5
    assert float((m64 - mean_logits.double()).abs().max()) < 1e-5

    # Saved checkpoint reloads through from_pretrained with nothing missing.
    case_dir = os.path.join(OUT, CASE)
    os.makedirs(case_dir, exist_ok=True)
    cfg.save_pretrained(case_dir)
    cfg_path = os.path.join(case_dir, "config.json")
    save_file(weights, os.path.join(case_dir, "model.safetensors"), metadata={"format": "pt"})
    reloaded, info = BertForSequenceClassification.from_pretrained(
        case_dir, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    reloaded.eval()
    with torch.no_grad():
        rl = reloaded(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert torch.equal(rl, out.logits), "from_pretrained of the written folder differs"

    # LaMDA training: primary (transformers + SEMANTICS backward), float64
    # re-run, float32 plain-autograd re-run.
    rec = train_hf(cfg, weights, inits, batch, torch.float32)
    rec64 = train_hf(cfg, weights, inits, batch, torch.float64)
    plain = train_plain(cfg, weights, inits, batch)
    div64 = divergence(rec, rec64)
    div_plain = divergence(rec, plain)
    init_vs_base = float((rec["init.logits"] - out.logits).abs().max())
    assert init_vs_base < 1e-5, init_vs_base
    for dv in (div64, div_plain):
        assert dv["grad0_max_rel"] < 1e-4 and dv["final_params_max_rel"] < 1e-4 and dv["losses_max_abs"] < 1e-4, dv
    fd_vs_ag, fd_vs_grad0, fd_checked = finite_differences(cfg, weights, inits, batch, rec["grad0"], names)
    assert fd_vs_ag < 1e-6 and fd_vs_grad0 < 1e-4, (fd_vs_ag, fd_vs_grad0)
    # The mean-pool head at step 0, transformers (float32) vs plain float64.
    mp_loss, mp_logits, mp_grad = mean_pool_grad0(cfg, weights, inits, batch, torch.float32)
    mp_loss64, mp_grad64 = mean_pool_grad0_plain(cfg, weights, inits, batch)
    mp_rel = max(
        float((mp_grad[n].double() - mp_grad64[n]).abs().max() / mp_grad64[n].abs().max()) for n in mp_grad
    )
    mp_loss_diff = abs(float(mp_loss) - float(mp_loss64))
    assert mp_rel < 1e-4 and mp_loss_diff < 1e-5, (mp_rel, mp_loss_diff)
    assert float((mp_logits - mean_logits).abs().max()) < 1e-5

    # expected.safetensors
    exp = {
        "base.logits": out.logits,
        "base.loss": out.loss.reshape(1),
        "base.hidden": hf_hidden.last_hidden_state,
        "base.pooled": hf_hidden.pooler_output,
        "base.mean_pool_logits": mean_logits,
        "base.mean_pool_loss": cross_entropy(mean_logits, labels).reshape(1),
        "init.logits": rec["init.logits"],
        "init.loss": rec["losses"][0].reshape(1),
        "losses": rec["losses"],
        "final.logits": rec["final.logits"],
    }
    for n in names:
        for k in ("A", "S", "B", "W_res"):
            exp[f"init.{n}.{k}"] = inits[n][k]
        exp[f"sigma.{n}"] = sigmas[n]
        exp[f"frozen_cols.{n}"] = torch.zeros(STEPS, dtype=torch.int64)
    for p in rec["grad0"]:
        exp[f"grad0.{p}"] = rec["grad0"][p]
        exp[f"step1.{p}"] = rec["step1"][p]
        exp[f"final.{p}"] = rec["final"][p]
        exp[f"final.{p}.exp_avg"] = rec["exp_avg"][p]
        exp[f"final.{p}.exp_avg_sq"] = rec["exp_avg_sq"][p]
    exp["mean_pool.init.loss"] = mp_loss.reshape(1)
    for p in mp_grad:
        exp[f"mean_pool.grad0.{p}"] = mp_grad[p]
    exp = {k: v.detach().clone().contiguous() for k, v in exp.items()}
    for k, v in exp.items():
        assert v.dtype in (torch.float32, torch.float64, torch.int64), (k, v.dtype)
        assert torch.isfinite(v.double()).all(), k
    save_file(exp, os.path.join(case_dir, "expected.safetensors"), metadata={"case": CASE})
    save_file(
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels},
        os.path.join(case_dir, "inputs.safetensors"),
    )

    with open(cfg_path) as f:
        written_cfg = json.load(f)
    modules = []
    for n in names:
        layer = int(n.split(".")[3])
        kind = n.rsplit(".", 1)[1]
        modules.append(
            {
                "name": n,
                "kind": {"query": "q", "value": "v"}[kind],
                "layer": layer,
                "d_out": d,
                "d_in": d,
                "rank": RANK,
                "bias": True,
                "trainable": ["S", "B"],
                "frozen_cols_per_step": [0] * STEPS,
                "trainable_at_step0": ["S", "B"],
                "spectral_gap_min": gaps[n],
                "sign_margin_min": margins[n],
            }
        )
    case = {
        "name": CASE,
        "kind": "train",
        "description": "LaMDA on the query and value Linear of both layers of a tiny BERT, rank 4, alpha 1, "
        "freeze_b never, classifier trained at full rank (CLS pooling through the frozen pooler), 5 steps.",
        "model": {
            "family": "bert",
            "config_file": "config.json",
            "weights_file": "model.safetensors",
            "dtype": "float32",
            **{k: written_cfg.get(k) for k in (
                "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "pad_token_id",
                "problem_type", "architectures")},
            "num_labels": MODEL["num_labels"],
            "head_dim": d // MODEL["num_attention_heads"],
            "gelu": "exact: 0.5 x (1 + erf(x / sqrt(2)))",
            "attention": "eager: softmax(q k^T / sqrt(head_dim) + mask) v, no causal mask; padded keys "
            "(attention_mask 0) masked out (transformers adds finfo(float32).min; -inf gives the same numbers)",
            "position_ids": "0..seq-1 for every row (absolute position embeddings)",
            "init_seed": seed,
            "init_std": INIT_STD,
            "weights_note": "random normal init (std init_std) for matrices and embeddings, LayerNorm weights "
            "1 + 0.1 N(0,1), every bias 0.1 N(0,1)",
        },
        "inputs": {
            "file": "inputs.safetensors",
            "batch": BATCH,
            "seq": SEQ,
            "lengths": LENGTHS,
            "padding": "right, pad id 0, attention_mask 0 and token_type_ids 0 on padding",
            "cls_id": CLS_ID,
            "sep_id": SEP_ID,
            "pad_id": PAD_ID,
            "pair_rows": [0],
            "note": "row 0 is a pair: segment A at positions 0..5 (type 0), segment B at 6..9 (type 1)",
            "labels": LABELS,
            "data_seed": DATA_SEED,
        },
        "head": {
            "name": "classifier",
            "pool": "cls",
            "pooled": "tanh(bert.pooler.dense(last_hidden_state[:, 0])) (pooler frozen)",
            "trainable": ["weight", "bias"],
            "d_out": MODEL["num_labels"],
            "d_in": d,
            "init": "from model.safetensors (classifier.weight, classifier.bias)",
            "mean_pool_variant": "base.mean_pool_logits: classifier(sum_j mask_j h_j / sum_j mask_j), no pooler; "
            "mean_pool.init.loss and mean_pool.grad0.*: the LaMDA model with that head at step 0",
        },
        "loss": "mean cross-entropy of logits [batch, num_labels] against labels (BertForSequenceClassification, "
        "problem_type single_label_classification)",
        "method": "lamda",
        "alpha": ALPHA,
        "targets": ["q", "v"],
        "modules": modules,
        "adapted_bias": "kept and frozen: y = x W_res^T + b + alpha ((x A^T) S^T) B^T",
        "frozen": "every base tensor (embeddings, LayerNorms, all Linear weights and biases, pooler); "
        "W_res replaces the weight of each adapted module",
        "rank": {"mode": "fixed", "value": RANK},
        "steps": STEPS,
        "optimizer": {"name": "adamw", "lr": LR, "beta1": BETA1, "beta2": BETA2, "eps": EPS, "weight_decay": WD},
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "grad_clip": None,
        "data": "the single batch of inputs.safetensors is used at every step",
        "reference_divergence": {"float64": div64, "float32_plain_autograd": div_plain},
        "finite_differences": {
            "h": 1e-6,
            "dtype": "float64",
            "max_rel_err_vs_autograd_f64": fd_vs_ag,
            "max_rel_err_vs_grad0": fd_vs_grad0,
            "note": "relative to the tensor's largest |gradient|; 3 entries per trainable tensor",
            "entries": fd_checked,
        },
        "base_check": {
            "transformers_vs_plain_torch_max_abs": base_diff,
            "note": "transformers BertForSequenceClassification (eager, eval) against the plain-torch forward "
            "of scripts/make_bert_fixtures.py, float32",
        },
        "mean_pool_check": {
            "grad0_max_rel_transformers_f32_vs_plain_f64": mp_rel,
            "loss_abs_diff": mp_loss_diff,
        },
        "init_vs_base_logits_max_abs_diff": init_vs_base,
        "base_logits_max_abs": float(out.logits.abs().max()),
        "generator": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": 1},
        "freeze_b": {"schedule": "never", "kind": "never", "p": None, "t_i": None},
        "lamda": {
            "A_init": "V[:, :r]^T",
            "S_init": "I_r",
            "B_init": "U[:, :r]",
            "W_res": "W - alpha * B S A",
            "svd": "float64 SVD of the float32 weight, sign rule applied, then rounded to float32",
        },
    }
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump({"cases": [{"name": CASE, "kind": "train", "description": case["description"]}]}, f, indent=2)
        f.write("\n")
    print(f"{case_dir}: init seed {seed}, losses {[round(float(x), 6) for x in rec['losses']]}")
    print(f"  base transformers vs plain: {base_diff}")
    print(f"  init vs base logits {init_vs_base:.3e}; fd vs autograd f64 {fd_vs_ag:.2e}, vs grad0 {fd_vs_grad0:.2e}")
    print(f"  divergence f64 {div64}")
    print(f"  divergence plain autograd {div_plain}")
    print(f"  spectral gaps {min(gaps.values()):.4f}, sign margins {min(margins.values()):.4f}")


# ---------------------------------------------------------------------------
# MiniLM tokenizer fixture

SENTENCES = [
    {"text": "The movie was great!"},
    {"text": "Café crème brûlée: a naïve résumé of ÉLAN."},
    {"text": "It cost $1,234.56 in 2023 -- about 15% more (or 1/3?)."},
    {"text": "Supercalifragilisticexpialidocious antidisestablishmentarianism qwzxv"},
    {"text": "I didn't like it... at ALL?! #overrated @critic"},
    {"text": "我爱 NLP 🤖 and\ttabs\u00a0and  spaces"},
    {"text_a": "A man is playing a guitar on stage.", "text_b": "Someone plays music."},
    {
        "text": "This is a deliberately long sentence about a film whose plot meanders through many scenes, "
        "characters and subplots, so that the tokenizer has to cut it off at thirty-two tokens "
        "and nothing after that point survives."
    },
    {
        "text_a": "The first part of a long pair keeps going and going with many words that fill the budget",
        "text_b": "while the second part is also rather long so that longest-first truncation trims both sides",
    },
]
MAX_LEN = 32


def make_tokens():
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MINILM)
    raw = Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    raw.enable_truncation(MAX_LEN)  # strategy longest_first, as in the file
    raw.enable_padding(length=MAX_LEN, pad_id=0, pad_token="[PAD]", pad_type_id=0)
    cases = []
    for s in SENTENCES:
        if "text" in s:
            enc = tok(s["text"], max_length=MAX_LEN, truncation=True, padding="max_length")
            r = raw.encode(s["text"])
            untrunc = len(tok(s["text"])["input_ids"])
        else:
            enc = tok(s["text_a"], s["text_b"], max_length=MAX_LEN, truncation=True, padding="max_length")
            r = raw.encode(s["text_a"], s["text_b"])
            untrunc = len(tok(s["text_a"], s["text_b"])["input_ids"])
        assert enc["input_ids"] == r.ids, (s, enc["input_ids"], r.ids)
        assert enc["token_type_ids"] == r.type_ids, s
        assert enc["attention_mask"] == r.attention_mask, s
        cases.append(
            {
                **s,
                "input_ids": enc["input_ids"],
                "token_type_ids": enc["token_type_ids"],
                "attention_mask": enc["attention_mask"],
                "tokens": tok.convert_ids_to_tokens(enc["input_ids"]),
                "length": sum(enc["attention_mask"]),
                "untruncated_length": untrunc,
                "truncated": untrunc > MAX_LEN,
            }
        )
    fixture = {
        "model": "all-MiniLM-L6-v2 (models/all-MiniLM-L6-v2, scripts/fetch-minilm.sh)",
        "made_by": "scripts/make_bert_fixtures.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": __import__("tokenizers").__version__},
        "tokenizer": "transformers AutoTokenizer.from_pretrained(folder) (fast, from tokenizer.json); "
        "identical to tokenizers.Tokenizer.from_file(tokenizer.json) with enable_truncation(32) and "
        "enable_padding(length=32, pad_id=0)",
        "call": "tok(text, max_length=32, truncation=True, padding='max_length'); pairs: tok(text_a, text_b, ...) "
        "(truncation longest_first)",
        "max_length": MAX_LEN,
        "special_ids": {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103},
        "cases": cases,
    }
    path = os.path.join(OUT, "minilm_tokens.json")
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{path}: {len(cases)} cases")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens-only", action="store_true", help="write only minilm_tokens.json")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if not args.tokens_only:
        make_case()
    if os.path.isdir(MINILM):
        make_tokens()
    elif args.tokens_only:
        sys.exit(f"{MINILM} is missing: run scripts/fetch-minilm.sh first")
    else:
        print(f"{MINILM} is missing: minilm_tokens.json not (re)written (scripts/fetch-minilm.sh)")


if __name__ == "__main__":
    main()
