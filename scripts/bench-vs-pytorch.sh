#!/usr/bin/env bash
# lamdac vs the reference users run (transformers + PEFT), side by side in one
# run on one machine, as shared/BENCH.md describes:
#
#   - lamdac: the README's build (cargo build --release, no RUSTFLAGS), one
#     process per variant (`lamdac bench --variant ...`): this spec fused
#     (LaMDA), and LoRA at the same ranks fused;
#   - transformers `LlamaForCausalLM.from_pretrained` on the same folder +
#     PEFT `get_peft_model` LoRA and LoRA-FA (rank R, alpha 2R, all seven
#     linears), AdamW, random tokens of the same batch x seq
#     (scripts/bench_peft.py), one process per method;
#   - ROUNDS (default 2) rounds of all four, alternated; per variant its
#     fastest round (the others' ms/step printed below the table);
#   - median ms/step of STEPS steps after WARMUP, tokens/s, trainable
#     parameters, time from start to the first step, peak RSS of the process;
#   - ratios (PEFT LoRA time / row time, row peak RSS / PEFT LoRA peak RSS);
#   - model FLOPs per step (2 x linear weights incl. lm_head per token
#     forward, the same again for the input gradients, plus attention:
#     4 b s^2 (heads x head_dim) per layer forward, the same again backward)
#     over the median step time, and as a share of this machine's f32 GEMM
#     rate (a 1024^3 matmul in torch and in lamdac's GEMM, same threads).
#
# Usage (from anywhere):
#   scripts/bench-vs-pytorch.sh                      # quickstart model
#   SPEC=scripts/bench-smollm2.lamda MODEL=models/SmolLM2-135M-Instruct \
#     BATCH=4 SEQ=256 STEPS=5 WARMUP=1 scripts/bench-vs-pytorch.sh
# (SmolLM2: scripts/fetch-smollm2.sh and `lamdac convert` first, see README.)
#
# PYTHON: a Python with scripts/bench-requirements.txt; by default a venv in
# ~/.cache/lamdac/bench-venv, created on first use (a few GB: torch).
# EAGER=1 adds a hand-written eager PyTorch LaMDA and LoRA (bench_torch.py).
# Timings compare only within one run on one machine.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-2}"
LAMDAC="${LAMDAC:-target/release/lamdac}"
SPEC="${SPEC:-scripts/bench-quickstart.lamda}"
MODEL="${MODEL:-examples/models/austen-tiny}"
BATCH="${BATCH:-8}"
SEQ="${SEQ:-192}"
RANK="${RANK:-16}"
THREADS="${THREADS:-$(nproc)}"
ROUNDS="${ROUNDS:-2}"
OUT="${OUT:-$(mktemp -d)}"

if [ -z "${PYTHON:-}" ]; then
  VENV="${HOME:-/tmp}/.cache/lamdac/bench-venv"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
    echo "creating $VENV from scripts/bench-requirements.txt ..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench-requirements.txt
  fi
  PYTHON="$VENV/bin/python"
fi
[ -x "$LAMDAC" ] || cargo build --release
cargo build --quiet --release -p lamda-runtime --example gemm_rate

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

# ROUNDS rounds, each running every variant once in turn; each variant's row
# is its fastest round (a shared VM's speed drifts by 10-40% over minutes;
# alternating gives every variant the same chances).
for r in $(seq 1 "$ROUNDS"); do
  for v in spec-fused lora-fused; do
    echo "round $r: lamdac $v ..." >&2
    "$LAMDAC" bench "$SPEC" --variant "$v" --steps "$STEPS" --warmup "$WARMUP" --json > "$OUT/lamdac-$v-$r.json"
  done
  for m in lora lora_fa; do
    echo "round $r: transformers + peft $m ..." >&2
    "$PYTHON" scripts/bench_peft.py --model "$MODEL" --method "$m" --rank "$RANK" --batch "$BATCH" \
      --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" 2>/dev/null > "$OUT/peft-$m-$r.json"
  done
done
if [ "${EAGER:-0}" = 1 ]; then
  "$PYTHON" scripts/bench_torch.py --model "$MODEL" --rank "$RANK" --batch "$BATCH" --seq "$SEQ" \
    --steps "$STEPS" --warmup "$WARMUP" > "$OUT/eager.jsonl"
fi
# The machine's f32 GEMM rate: the best of 3 rounds x 50 products of 1024^3
# for each side, rounds alternated (a VM's rate drifts by 10-30% between
# seconds; the best of many is the rate the hardware can give).
: > "$OUT/gemm-lamdac.json"
: > "$OUT/gemm-torch.json"
for _ in 1 2 3; do
  GEMM_REPS=50 target/release/examples/gemm_rate 1024 1024 1024 >> "$OUT/gemm-lamdac.json"
  "$PYTHON" - "$THREADS" >> "$OUT/gemm-torch.json" <<'PY'
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
for _ in range(3):
    a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(50))
print(json.dumps({"gflops": 2 * 1024**3 / best / 1e9}))
PY
done

"$PYTHON" - "$OUT" "$MODEL" "$BATCH" "$SEQ" "$THREADS" "$SPEC" <<'PY'
import json, os, platform, sys
out, model, b, s, threads, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
import glob
def fastest(pattern, read):
    runs = [read(p) for p in sorted(glob.glob(pattern))]
    best = min(runs, key=lambda r: r["ms_per_step"])
    best["rounds"] = [round(r["ms_per_step"], 1) for r in runs]
    return best
rows = []
for v in ["spec-fused", "lora-fused"]:
    r = fastest(f"{out}/lamdac-{v}-*.json", lambda p: json.load(open(p))[0])
    r["variant"] = "lamdac " + {"spec-fused": "lamda (this spec)", "lora-fused": "lora (same ranks)"}[v]
    rows.append(r)
peft = {}
for m in ["lora", "lora_fa"]:
    r = fastest(f"{out}/peft-{m}-*.json", lambda p: json.loads(open(p).read().strip().splitlines()[-1]))
    peft[m] = r
    rows.append(r)
if os.path.exists(f"{out}/eager.jsonl"):
    for line in open(f"{out}/eager.jsonl"):
        if line.strip():
            r = json.loads(line)
            r["variant"] = r["variant"].replace("pytorch", "eager torch")
            rows.append(r)

cfg = json.load(open(os.path.join(model, "config.json")))
d, L, f, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
h = cfg["num_attention_heads"]
hd = cfg.get("head_dim") or d // h
kv = cfg.get("num_key_value_heads", h)
lin = L * (d * h * hd * 2 + 2 * d * kv * hd + 3 * d * f) + d * v
tokens = b * s
flops = 2 * (2 * lin * tokens + 4 * b * s * s * h * hd * L)
g_torch = max(json.loads(l)["gflops"] for l in open(f"{out}/gemm-torch.json") if l.strip())
g_lamdac = max(json.loads(l)["gflops"] for l in open(f"{out}/gemm-lamdac.json") if l.strip())

cpu = "?"
flags = set()
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and cpu == "?":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
except OSError:
    pass
ext = [x for x in ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"] if x in flags]
vers = peft["lora"].get("versions", {})
print(f"machine: {cpu} ({', '.join(ext) or 'no AVX'}), {threads} threads, {platform.system()}")
print(f"versions: torch {vers.get('torch')}, transformers {vers.get('transformers')}, peft {vers.get('peft')}; lamdac plain `cargo build --release`")
print(f"spec: {spec}; model {model}; batch {b} x seq {s}; model FLOPs/step {flops / 1e9:.1f} G")
print(f"f32 GEMM 1024^3 (best of 3 x 50): torch {g_torch:.0f} GFLOP/s, lamdac (faer) {g_lamdac:.0f} GFLOP/s")
print()
ref = peft["lora"]
hdr = f"{'variant':<30} {'ms/step':>9} {'tokens/s':>9} {'trainable':>10} {'start s':>8} {'peak RSS':>9} {'speed vs PEFT LoRA':>19} {'RSS vs PEFT LoRA':>17} {'GFLOP/s':>8} {'of torch GEMM':>14}"
print(hdr)
for r in rows:
    rss = r.get("peak_rss_bytes")
    rss_s = f"{rss / 2**20:.0f} MiB" if rss else "-"
    rss_r = f"{rss / ref['peak_rss_bytes']:.2f}x" if rss and ref.get("peak_rss_bytes") else "-"
    gf = flops / (r["ms_per_step"] / 1e3) / 1e9
    st = r.get("startup_s")
    print(
        f"{r['variant']:<30} {r['ms_per_step']:>9.1f} {r['tokens_per_s']:>9.0f} {r['trainable_params']:>10} "
        f"{(f'{st:.1f}' if st is not None else '-'):>8} {rss_s:>9} {ref['ms_per_step'] / r['ms_per_step']:>18.2f}x "
        f"{rss_r:>17} {gf:>8.0f} {gf / g_torch:>13.0%}"
    )
print()
print("ms/step of every round: " + "; ".join(f"{r['variant']} {r['rounds']}" for r in rows))
lam = rows[0]
if lam.get("startup_phases"):
    print()
    print("lamdac lamda start-up: " + ", ".join(f"{n} {t:.2f} s" for n, t in lam["startup_phases"]))
PY
