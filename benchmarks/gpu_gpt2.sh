#!/usr/bin/env bash
# GPT-2 124M train-step throughput on one GPU: fmjax.bench vs the PyTorch nanoGPT-recipe peer.
#
# Run from the project root on the device machine, with .whl/ (bash ../shared/device/fetch_wheels.sh)
# and benchmarks/.peer/torch_gpt.py (a copy of ../shared/bench/torch_gpt.py) sent along:
#   bash benchmarks/gpu_gpt2.sh
# Logs and one JSON line per run go to ${OUT:-/tmp/out}; a markdown table is printed last.
#
# Runs are ordered by importance and each one sits under `timeout`; optional ones are skipped once
# BUDGET_S (default 460 s, so the whole call fits ~8 minutes) would be overrun.
# FMJAX_BENCH_SMOKE=1 dry-runs the same logic with tiny sizes on CPU (FMJAX_PYTHON, TORCH_PYTHON
# pick the interpreters; the peer runs eager there).
set -u
source "$(dirname "$0")/device_env.sh"
SMOKE=${FMJAX_BENCH_SMOKE:-0}
BUDGET_S=${BUDGET_S:-460}
PEER=benchmarks/.peer/torch_gpt.py
[[ -f $PEER ]] || PEER=../shared/bench/torch_gpt.py
# fmjax's MFU peak for H100/H200 is 989 TFLOP/s dense bf16; pass the same to the peer so the MFU
# columns share a denominator.
export FMJAX_PEAK_TFLOPS=${FMJAX_PEAK_TFLOPS:-989}

if [[ $SMOKE == 1 ]]; then
  # Tiny sizes, few steps: exercises flags, logs and the table, not the GPU.
  DIMS=(--config.model.num_layers=2 --config.model.num_heads=2 --config.model.embed_dim=64
        --config.model.mlp_dim=256 --config.data.seq_len=64 --config.data.vocab_size=512)
  PEER_DIMS=(--vocab 512 --seq 64 --layers 2 --heads 2 --dim 64 --no-compile)
  STEPS=2 WARMUP=1 T_MAIN=120 T_EXTRA=120
else
  DIMS=() PEER_DIMS=(--vocab 50304 --seq 1024 --layers 12 --heads 12 --dim 768)
  STEPS=20 WARMUP=5 T_MAIN=150 T_EXTRA=120
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

# fmjax NAME BATCH TIMEOUT [overrides...]; peer NAME BATCH TIMEOUT. Each writes NAME.log and NAME.json.
fmjax() {
  local name=$1 batch=$2 limit=$3; shift 3
  launch "$name" "$limit" "$optional" "$PY" -m fmjax.bench --config experiments/gpt.py:gpt2 "${DIMS[@]}" \
    --config.train.batch_size="$batch" --config.train.grad_accum_steps=1 --config.mesh.data=-1 --config.mesh.fsdp=1 \
    --config.data.segment_ids=False \
    --config.bench.steps="$STEPS" --config.bench.warmup_steps="$WARMUP" "$@"
}
peer() {
  local name=$1 batch=$2 limit=$3
  launch "$name" "$limit" "$optional" "$TORCH_PY" "$PEER" "${PEER_DIMS[@]}" --batch "$batch" \
    --steps "$STEPS" --warmup "$WARMUP" --peak-tflops "$FMJAX_PEAK_TFLOPS"
}
# Most important first: the like-for-like pairs (scan over layers, no remat) at batch 16 and 32.
optional=0
fmjax fmjax_b16 16 "$T_MAIN" --config.model.remat=none
peer peer_b16 16 "$T_MAIN"
fmjax fmjax_b32 32 "$T_MAIN" --config.model.remat=none
peer peer_b32 32 "$T_MAIN"
# Then the knobs: unrolled layers, and the variant's own remat policy ('dots').
optional=1
fmjax fmjax_b16_noscan 16 "$T_EXTRA" --config.model.remat=none --config.model.scan_layers=False
fmjax fmjax_b16_dots 16 "$T_EXTRA" --config.model.remat=dots
fmjax fmjax_b32_noscan 32 "$T_EXTRA" --config.model.remat=none --config.model.scan_layers=False
fmjax fmjax_b32_dots 32 "$T_EXTRA" --config.model.remat=dots
echo "total ${SECONDS}s"

"$PY" - "$OUT" <<'PY'
import json, os, sys
def load(name):
    try:
        return json.loads(open(os.path.join(sys.argv[1], name + ".json")).read())
    except (OSError, ValueError):
        return None
rows = [("b16 scan remat=none", "fmjax_b16", "peer_b16"), ("b32 scan remat=none", "fmjax_b32", "peer_b32"),
        ("b16 no-scan remat=none", "fmjax_b16_noscan", "peer_b16"), ("b16 scan remat=dots", "fmjax_b16_dots", "peer_b16"),
        ("b32 no-scan remat=none", "fmjax_b32_noscan", "peer_b32"), ("b32 scan remat=dots", "fmjax_b32_dots", "peer_b32")]
fmt = lambda v, spec: "-" if v is None else format(v, spec)
print("\n| config | fmjax tokens/s | fmjax MFU | peer tokens/s | peer MFU | ratio |\n|---|---|---|---|---|---|")
for label, f, p in rows:
    f, p = load(f), load(p)
    if f is None and p is None:
        continue
    ft, pt = f and f["tokens_per_s"], p and p["tokens_per_s"]
    print(f"| {label} | {fmt(ft, ',.0f')} | {fmt(f and f['mfu'], '.1%')} | {fmt(pt, ',.0f')} | "
          f"{fmt(p and p['mfu'], '.1%')} | {fmt(ft and pt and ft / pt, '.2f')} |")
PY
