#!/usr/bin/env bash
# lamdac vs PyTorch on the same training step, side by side in one run:
# the quickstart spec (austen-tiny, LaMDA rank 16 on all 28 linear layers,
# batch 8 x 192 tokens) with `lamdac bench`, and the same model, adapters,
# ranks and shapes in eager PyTorch (scripts/bench_torch.py), LaMDA and LoRA.
#
# Needs a release build (cargo build --release) and a Python with torch,
# numpy and safetensors (PYTHON=/path/to/python; default python3).
# Timings compare only within one run on one machine.
#
# SmolLM2-135M instead (after scripts/fetch-smollm2.sh and `lamdac convert`):
#   SPEC=scripts/bench-smollm2.lamda MODEL=models/SmolLM2-135M-Instruct BATCH=4 SEQ=256 \
#     STEPS=3 WARMUP=1 scripts/bench-vs-pytorch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-2}"
LAMDAC="${LAMDAC:-target/release/lamdac}"
SPEC="${SPEC:-examples/quickstart.lamda}"
MODEL="${MODEL:-examples/models/austen-tiny}"
BATCH="${BATCH:-8}"
SEQ="${SEQ:-192}"
echo "machine: $(nproc) cores; $($PY -c 'import torch; print("torch", torch.__version__)'); spec $SPEC"
"$LAMDAC" bench "$SPEC" --steps "$STEPS" --warmup "$WARMUP" --json > /tmp/lamdac-bench.json
"$PY" scripts/bench_torch.py --model "$MODEL" --rank 16 --batch "$BATCH" --seq "$SEQ" \
  --steps "$STEPS" --warmup "$WARMUP" > /tmp/torch-bench.jsonl
"$PY" - <<'PY'
import json
rows = json.load(open("/tmp/lamdac-bench.json"))
rows += [json.loads(l) for l in open("/tmp/torch-bench.jsonl") if l.strip()]
print(f"{'variant':<40} {'ms/step':>9} {'tokens/s':>10} {'trainable':>10}")
for r in rows:
    print(f"{r['variant']:<40} {r['ms_per_step']:>9.1f} {r['tokens_per_s']:>10.0f} {r['trainable_params']:>10}")
PY
