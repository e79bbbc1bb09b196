#!/usr/bin/env bash
# gpu-check.sh: checks lamdac's CUDA backend on a machine with an NVIDIA GPU, against the CPU.
#
# NOT YET RUN: written in a session without a GPU. It is built to be robust
# rather than proven: every step reports what it did and the script moves on
# when a step fails, then prints a compact report. Expected machine: an H200
# (or any GPU of compute capability >= 7.0) with a CUDA 12+ driver, no
# internet, python3 with numpy.
#
# It builds nothing. It expects the repository with
#   - target/release/lamdac (or $LAMDAC), built elsewhere;
#   - optionally the prebuilt test binaries target/*/deps/cuda_backend-* and
#     cuda_nvrtc-* (cargo test --no-run), run from runtime/ as cargo would;
#   - libnvrtc: $LAMDAC_NVRTC_LIB, else .whl/ (a nvidia-cuda-nvrtc-cu12 wheel
#     or a `pip install --target .whl/nvrtc` of it), else the system's.
# cudarc loads libcuda, libnvrtc and libcublas by name (libX.so, libX.so.12,
# ...; not .so.13), so the script puts their folders on LD_LIBRARY_PATH and,
# for a CUDA 13 system, links libX.so -> libX.so.13 in a shim folder.
#
# Steps: 1. GPU and libraries; 2. the prebuilt GPU tests (kernels vs the
# interpreter, ops at awkward shapes, the golden case forward + backward on
# both backends, the golden case in bf16); 3. `lamdac train --device cpu|cuda`
# on the golden specs, per step losses compared: `--precision f32` within
# rtol 1e-4, `--precision bf16` within rtol 3e-2; 4. a training step of a
# SmolLM2-135M-sized Llama with deterministic random weights (LaMDA on q, v,
# batch 4 x 256) timed on the CPU and on the GPU in f32 and in bf16. On the
# GPU that step is device-resident: parameters, gradients and AdamW moments
# stay on the device (runtime/src/train/device.rs); only the batch goes in and
# the loss and gradient norm come back, so the timing is the device's.
#
# Usage: scripts/gpu-check.sh [--no-timing]
#   env: LAMDAC (binary), LAMDAC_NVRTC_LIB (folder of libnvrtc.so*), OUT (work
#   folder, default a new /tmp folder), STEPS (timed run length, default 6).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$(mktemp -d /tmp/lamdac-gpu-check.XXXXXX)}
mkdir -p "$OUT"
LAMDAC=${LAMDAC:-$ROOT/target/release/lamdac}
STEPS=${STEPS:-6}
TIMING=1
[ "${1:-}" = "--no-timing" ] && TIMING=0
REPORT=()
note() { echo "== $*"; }
add() { REPORT+=("$*"); echo ">> $*"; }

# ---------------------------------------------------------------- 1. GPU and libraries
note "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  add "gpu: ${gpu:-nvidia-smi gave nothing}"
else
  add "gpu: no nvidia-smi"
fi

SHIM="$OUT/libshim"
mkdir -p "$SHIM"
LIBDIRS=()
search_dirs() {
  echo /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/lib/x86_64-linux-gnu /usr/lib64 /opt
  python3 - <<'PY' 2>/dev/null
import site, sys
print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))
PY
}
# find_lib NAME: the first file libNAME.so* (not the NVRTC builtins) on the system.
find_lib() {
  local name=$1 hit
  hit=$(ldconfig -p 2>/dev/null | awk -v n="lib$name.so" 'index($1, n) == 1 {print $NF}' | grep -v builtins | head -1)
  if [ -z "$hit" ]; then
    # shellcheck disable=SC2046
    hit=$(find $(search_dirs) -maxdepth 7 -name "lib$name.so*" 2>/dev/null | grep -v builtins | sort | head -1)
  fi
  echo "$hit"
}
# use_lib NAME FILE: makes libNAME loadable under a name cudarc tries.
use_lib() {
  local name=$1 file=$2 dir
  dir=$(dirname "$file")
  LIBDIRS+=("$dir")
  if [ ! -e "$dir/lib$name.so" ] && ! ls "$dir/lib$name.so.12" >/dev/null 2>&1 && ! ls "$dir/lib$name.so.1" >/dev/null 2>&1; then
    ln -sf "$(readlink -f "$file")" "$SHIM/lib$name.so"
  fi
}

nvrtc=""
if [ -n "${LAMDAC_NVRTC_LIB:-}" ]; then
  nvrtc=$(ls "$LAMDAC_NVRTC_LIB"/libnvrtc.so* 2>/dev/null | grep -v builtins | head -1)
fi
if [ -z "$nvrtc" ]; then
  nvrtc=$(find "$ROOT/.whl" -maxdepth 6 -name 'libnvrtc.so*' 2>/dev/null | grep -v builtins | head -1)
fi
if [ -z "$nvrtc" ]; then
  whl=$(ls "$ROOT"/.whl/nvidia_cuda_nvrtc*.whl 2>/dev/null | head -1)
  if [ -n "$whl" ]; then
    python3 -m zipfile -e "$whl" "$OUT/nvrtc" >/dev/null 2>&1
    nvrtc=$(find "$OUT/nvrtc" -name 'libnvrtc.so*' | grep -v builtins | head -1)
  fi
fi
[ -z "$nvrtc" ] && nvrtc=$(find_lib nvrtc)
for pair in "nvrtc:$nvrtc" "cublas:$(find_lib cublas)" "cublasLt:$(find_lib cublasLt)" "cuda:$(find_lib cuda)"; do
  name=${pair%%:*}
  file=${pair#*:}
  if [ -n "$file" ]; then
    use_lib "$name" "$file"
    add "lib$name: $file"
  else
    add "lib$name: NOT FOUND"
  fi
done
LD_LIBRARY_PATH="$SHIM$(printf ':%s' "${LIBDIRS[@]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# ---------------------------------------------------------------- 2. prebuilt GPU tests
note "prebuilt GPU tests"
found=0
for t in "$ROOT"/target/*/deps/cuda_backend-* "$ROOT"/target/*/deps/cuda_nvrtc-*; do
  [ -f "$t" ] && [ -x "$t" ] || continue
  case "$t" in *.d) continue ;; esac
  found=1
  name=$(basename "$t")
  log="$OUT/$name.log"
  if (cd "$ROOT/runtime" && timeout 900 "$t" --nocapture --test-threads 1) >"$log" 2>&1; then
    add "test $name: PASS ($(grep -E '^test result' "$log" | tail -1))"
  else
    add "test $name: FAIL (see $log)"
    grep -E 'panicked|FAILED|error' "$log" | head -5 | sed 's/^/     /'
  fi
  grep -E '^skipping' "$log" | sort -u | head -2 | sed 's/^/     /'
done
[ "$found" = 0 ] && add "tests: no prebuilt cuda_backend/cuda_nvrtc binaries under target/*/deps (cargo test --no-run elsewhere)"

# run_args RUN: sets args to the device flags of run cpu, cuda-f32 or cuda-bf16.
run_args() {
  case $1 in
    cpu) args=(--device cpu) ;;
    cuda-f32) args=(--device cuda --precision f32) ;;
    cuda-bf16) args=(--device cuda --precision bf16) ;;
  esac
}

# ---------------------------------------------------------------- 3. golden specs, CPU vs CUDA
note "golden specs through lamdac train"
# losses FILE: the per-step losses of a metrics.jsonl, one per line.
# compare_losses CPU CUDA [RTOL]: per-step losses of two metrics.jsonl files.
compare_losses() {
  python3 - "$1" "$2" "${3:-1e-4}" <<'PY'
import json, sys
def losses(path):
    out = []
    for line in open(path):
        d = json.loads(line)
        if "step" in d and "loss" in d:
            out.append(float(d["loss"]))
    return out
a, b, tol = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3])
if not a or len(a) != len(b):
    print(f"FAIL ({len(a)} cpu vs {len(b)} cuda steps)")
    sys.exit(1)
rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
print(("PASS" if rel <= tol else "FAIL") + f" ({len(a)} steps, max rel loss diff {rel:.2e} <= {tol:g}?, cpu {a[0]:.5f}->{a[-1]:.5f}, cuda {b[0]:.5f}->{b[-1]:.5f})")
sys.exit(0 if rel <= tol else 1)
PY
}
if [ -x "$LAMDAC" ]; then
  for spec in "$ROOT"/tests/golden_specs/lamda_qv_r4_linear03.lamda "$ROOT"/tests/golden_specs/lamda_all7_r2_never.lamda \
    "$ROOT"/tests/golden_specs/lora_qv_r4_a8.lamda; do
    [ -f "$spec" ] || continue
    name=$(basename "$spec" .lamda)
    for run in cpu cuda-f32 cuda-bf16; do
      run_args "$run"
      if ! timeout 600 "$LAMDAC" train "$spec" "${args[@]}" --out "$OUT/$name-$run" --quiet >"$OUT/$name-$run.log" 2>&1; then
        add "golden $name: lamdac train ${args[*]} FAILED: $(grep -v '^\s*$' "$OUT/$name-$run.log" | tail -n 2 | tr '\n' ' ')"
      fi
    done
    [ -f "$OUT/$name-cpu/metrics.jsonl" ] || continue
    [ -f "$OUT/$name-cuda-f32/metrics.jsonl" ] &&
      add "golden $name f32: $(compare_losses "$OUT/$name-cpu/metrics.jsonl" "$OUT/$name-cuda-f32/metrics.jsonl")"
    [ -f "$OUT/$name-cuda-bf16/metrics.jsonl" ] &&
      add "golden $name bf16: $(compare_losses "$OUT/$name-cpu/metrics.jsonl" "$OUT/$name-cuda-bf16/metrics.jsonl" 3e-2)"
  done
else
  add "golden: no lamdac binary at $LAMDAC"
fi

# ---------------------------------------------------------------- 4. timing, SmolLM2-135M-sized
if [ "$TIMING" = 1 ] && [ -x "$LAMDAC" ]; then
  note "timing a SmolLM2-135M-sized step (random weights, seed 0)"
  SMOL="$OUT/smol"
  mkdir -p "$SMOL/model"
  if python3 - "$SMOL" <<'PY'; then
import json, struct, sys
import numpy as np
root = sys.argv[1]
cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
           intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
           head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
           max_position_embeddings=2048, hidden_act="silu", torch_dtype="float32")
json.dump(cfg, open(f"{root}/model/config.json", "w"), indent=1)
rng = np.random.default_rng(0)
d, f, v, L = 576, 1536, 49152, 30
hd, kv = 64, 3
tensors = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
for i in range(L):
    p = f"model.layers.{i}."
    tensors.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                    p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv * hd, d),
                    p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, d),
                    p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                    p + "mlp.down_proj.weight": (d, f)})
header, blobs, off = {}, [], 0
for name in sorted(tensors):
    shape = tensors[name]
    a = np.ones(shape, np.float32) if name.endswith("norm.weight") else (rng.standard_normal(shape, np.float32) * 0.02)
    b = a.astype("<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(f"{root}/model/model.safetensors", "wb") as fh:
    fh.write(struct.pack("<Q", len(h)))
    fh.write(h)
    for b in blobs:
        fh.write(b)
ids = rng.integers(0, v, size=(64, 256), dtype=np.int64)
h = json.dumps({"input_ids": {"dtype": "I64", "shape": [64, 256], "data_offsets": [0, ids.nbytes]}}).encode()
h += b" " * (-len(h) % 8)
with open(f"{root}/inputs.safetensors", "wb") as fh:
    fh.write(struct.pack("<Q", len(h)))
    fh.write(h)
    fh.write(ids.astype("<i8").tobytes())
print(f"{sum(int(np.prod(s)) for s in tensors.values()) / 1e6:.1f}M parameters")
PY
    cat >"$SMOL/smol.lamda" <<EOF
use "model" as smol
adapt smol.attn.{q,v} rank 16 freeze_b linear(0.3)
train {
  data "inputs.safetensors"
  steps $STEPS  batch 4  seq 256
  lr 1e-3  schedule constant  seed 0
}
EOF
    # median step time after the first step (which includes NVRTC and warm-up)
    step_time() {
      python3 - "$1" <<'PY'
import json, statistics, sys
tps = [float(d["tokens_per_s"]) for d in map(json.loads, open(sys.argv[1])) if "tokens_per_s" in d]
tps = tps[1:] or tps
if not tps:
    print("no steps"); sys.exit(1)
t = statistics.median(tps)
print(f"{1024 / t * 1000:.1f} ms/step ({t:.0f} tokens/s, median of {len(tps)})")
PY
    }
    for run in cpu cuda-f32 cuda-bf16; do
      run_args "$run"
      start=$(date +%s)
      if timeout 900 "$LAMDAC" train "$SMOL/smol.lamda" "${args[@]}" --out "$SMOL/run-$run" --quiet >"$SMOL/$run.log" 2>&1; then
        add "smollm2-135m step on $run: $(step_time "$SMOL/run-$run/metrics.jsonl") [run $(($(date +%s) - start)) s]"
        grep -m1 '^device:' "$SMOL/$run.log" | sed 's/^/     /'
      else
        add "smollm2-135m on $run: FAILED: $(grep -v '^\s*$' "$SMOL/$run.log" | tail -n 2 | tr '\n' ' ')"
      fi
    done
    if [ -f "$SMOL/run-cpu/metrics.jsonl" ] && [ -f "$SMOL/run-cuda-f32/metrics.jsonl" ]; then
      add "smollm2-135m losses f32: $(compare_losses "$SMOL/run-cpu/metrics.jsonl" "$SMOL/run-cuda-f32/metrics.jsonl")"
    fi
    if [ -f "$SMOL/run-cpu/metrics.jsonl" ] && [ -f "$SMOL/run-cuda-bf16/metrics.jsonl" ]; then
      add "smollm2-135m losses bf16: $(compare_losses "$SMOL/run-cpu/metrics.jsonl" "$SMOL/run-cuda-bf16/metrics.jsonl" 3e-2)"
    fi
  else
    add "timing: could not write the random checkpoint (python3 with numpy needed)"
  fi
fi

# ---------------------------------------------------------------- report
echo
echo "==================== lamdac GPU check ($(date -u +%Y-%m-%dT%H:%MZ), work folder $OUT)"
for line in "${REPORT[@]}"; do echo "  $line"; done
if printf '%s\n' "${REPORT[@]}" | grep -q -E 'FAIL|NOT FOUND'; then
  exit 1
fi
exit 0
