#!/usr/bin/env bash
# Every throughput figure of the GPU comparison in ONE device call: GPT-2 124M (batch 16 and 32),
# CLIP ViT-B/16 (batch 128) and BERT-base (batch 64), each beside its PyTorch peer on the same GPU;
# MFU; the share of step time a real (non-synthetic) run waits for data; the image pipeline's
# images/s per host core; and, last, where the step's time goes (benchmarks/step_profile.py). The one-paradigm scripts (gpu_gpt2.sh, gpu_clip.sh, gpu_bert.sh) stay
# for focused reruns.
#
# On this machine, once, in the project root:
#   bash ../shared/device/fetch_wheels.sh
#   mkdir -p benchmarks/.peer && cp ../shared/bench/torch_gpt.py ../shared/bench/torch_peers.py benchmarks/.peer/
# Then one call (about 9 minutes; runs go most important first and optional ones are skipped when
# they could end past BUDGET_S):
#   run(command="bash benchmarks/gpu_throughput.sh", carry=[".whl", "benchmarks/.peer"], timeout_s=600)
# Logs and one JSON line per run come back under $OUT; the last lines are the markdown table.
#
# What each fmjax run is: `python -m fmjax.bench` on the config named, random batches, the real
# train step (same model, optimizer, donation). Variants differ in one knob each:
#   *_scan    layers scanned (lax.scan over a stacked block), as the pod configs have it
#   *_unroll  layers unrolled (one GPU: no compile-time pressure, XLA fuses across layers); for
#             GPT-2 this is experiments/gpt.py:gpt2-1gpu as it is
#   *_xla     the unrolled run with XLA GPU flags FLAGS_XLA (cuBLAS for every GEMM, latency-hiding
#             scheduler)
# FMJAX_BENCH_SMOKE=1 runs the same logic at toy sizes on CPU (FMJAX_PYTHON, TORCH_PYTHON pick the
# interpreters; the peers run eager there).
set -u
source "$(dirname "$0")/device_env.sh"
SMOKE=${FMJAX_BENCH_SMOKE:-0}
BUDGET_S=${BUDGET_S:-540}
export FMJAX_PEAK_TFLOPS=${FMJAX_PEAK_TFLOPS:-989}
FLAGS_XLA=${FLAGS_XLA:---xla_gpu_enable_triton_gemm=false --xla_gpu_enable_latency_hiding_scheduler=true}
PEERS=benchmarks/.peer
[[ -f $PEERS/torch_gpt.py ]] || PEERS=../shared/bench

if [[ $SMOKE == 1 ]]; then
  GPT=(--config.model.num_layers=2 --config.model.num_heads=2 --config.model.embed_dim=64
       --config.model.mlp_dim=256 --config.data.seq_len=64 --config.data.vocab_size=512)
  GPT_PEER=(--vocab 512 --seq 64 --layers 2 --heads 2 --dim 64 --no-compile)
  CLIP=(--config.model.image.num_layers=1 --config.model.text.num_layers=1 --config.data.image_size=32)
  CLIP_PEER=(--layers 1 --image 32 --no-compile)
  BERT=(--config.model.num_layers=1 --config.data.seq_len=32)
  BERT_PEER=(--layers 1 --seq 32 --no-compile)
  B16=4 B32=8 BCLIP=8 BBERT=8 STEPS=2 WARMUP=1 REAL_STEPS=6 LIMIT=200
  PIPE=(--images 16 --seconds 2 --workers 1 --batch 8)
else
  GPT=() GPT_PEER=(--vocab 50304 --seq 1024 --layers 12 --heads 12 --dim 768)
  CLIP=() CLIP_PEER=() BERT=(--config.data.seq_len=128) BERT_PEER=(--seq 128)
  B16=16 B32=32 BCLIP=128 BBERT=64 STEPS=20 WARMUP=5 REAL_STEPS=60 LIMIT=150
  PIPE=(--seconds 8 --workers 1,4,8,12)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
"$TORCH_PY" -c 'import torch; print("torch", torch.__version__)' || true
echo "host: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"

bench() {  # bench NAME CONFIG BATCH [overrides...]
  local name=$1 config=$2 batch=$3; shift 3
  launch "$name" "$LIMIT" "$optional" "$PY" -m fmjax.bench --config "$config" --config.train.batch_size="$batch" \
    --config.train.grad_accum_steps=1 --config.mesh.data=-1 --config.mesh.fsdp=1 \
    --config.bench.steps="$STEPS" --config.bench.warmup_steps="$WARMUP" "$@"
}
gpt() { local name=$1 batch=$2; shift 2
  bench "$name" experiments/gpt.py:gpt2-1gpu "$batch" "${GPT[@]}" --config.data.segment_ids=False "$@"; }
clip() { local name=$1; shift; bench "$name" experiments/clip.py:bench-b16 "$BCLIP" "${CLIP[@]}" "$@"; }
bert() { local name=$1; shift
  bench "$name" experiments/bert.py:bert-base "$BBERT" "${BERT[@]}" --config.data.segment_ids=False "$@"; }
unrolled_clip=(--config.model.image.scan_layers=False --config.model.text.scan_layers=False)
peer() {  # peer NAME SCRIPT ARGS...
  local name=$1 script=$2; shift 2
  launch "$name" "$LIMIT" "$optional" "$TORCH_PY" "$PEERS/$script" "$@" --steps "$STEPS" --warmup "$WARMUP"
}

optional=0
peer peer_gpt_b16 torch_gpt.py "${GPT_PEER[@]}" --batch "$B16" --peak-tflops "$FMJAX_PEAK_TFLOPS"
gpt fmjax_gpt_b16_unroll "$B16"
gpt fmjax_gpt_b16_scan "$B16" --config.model.scan_layers=True
peer peer_clip torch_peers.py clip "${CLIP_PEER[@]}" --batch "$BCLIP"
clip fmjax_clip_scan
clip fmjax_clip_unroll "${unrolled_clip[@]}"
peer peer_bert torch_peers.py bert "${BERT_PEER[@]}" --batch "$BBERT"
bert fmjax_bert
optional=1
peer peer_gpt_b32 torch_gpt.py "${GPT_PEER[@]}" --batch "$B32" --peak-tflops "$FMJAX_PEAK_TFLOPS"
gpt fmjax_gpt_b32_unroll "$B32"
XLA_FLAGS="${XLA_FLAGS:-} $FLAGS_XLA" gpt fmjax_gpt_b16_xla "$B16"
XLA_FLAGS="${XLA_FLAGS:-} $FLAGS_XLA" clip fmjax_clip_xla "${unrolled_clip[@]}"
# A real run: the GPT-2 body on the offline default corpus (byte tokens, so nothing to train
# first), through the whole input pipeline; perf/data_wait_fraction is read from its log rows.
rm -rf /tmp/fmjax_real_gpt
launch real_gpt "$LIMIT" 1 "$PY" -m fmjax.main --config experiments/gpt.py:gpt2-1gpu --workdir /tmp/fmjax_real_gpt \
  "${GPT[@]}" --config.data.tokenizer=byte --config.data.vocab_size=0 --config.train.batch_size="$B16" \
  --config.train.grad_accum_steps=1 --config.train.steps="$REAL_STEPS" --config.train.log_every=10 \
  --config.train.eval_every=0 --config.data.eval_batches=1 --config.checkpoint.every=100000 --config.optim.warmup_steps=2
cp /tmp/fmjax_real_gpt/metrics.jsonl "$OUT/real_gpt_metrics.jsonl" 2>/dev/null
launch image_pipeline "$LIMIT" 1 "$PY" benchmarks/image_pipeline.py "${PIPE[@]}"
# Where the GPU time goes, per named scope of the model (attention, mlp, output head + loss, ...).
for model in gpt clip; do
  if [[ $model == gpt ]]; then
    args=(--config experiments/gpt.py:gpt2-1gpu "${GPT[@]}" --config.train.batch_size="$B16" --config.data.segment_ids=False)
  else
    args=(--config experiments/clip.py:bench-b16 "${CLIP[@]}" --config.train.batch_size="$BCLIP")
  fi
  launch "profile_$model" "$LIMIT" 1 "$PY" benchmarks/step_profile.py "${args[@]}" --config.train.grad_accum_steps=1 \
    --config.mesh.data=-1 --config.mesh.fsdp=1 --json_out "$OUT/profile_$model.jsonl"
  grep -A 30 '^| part' "$OUT/profile_$model.log"
done
echo "total ${SECONDS}s"

"$PY" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name + ".json")).read())
    except (OSError, ValueError):
        return None
fmt = lambda v, spec: "-" if v is None else format(v, spec)
rows = [("gpt2 124M s1024 b16", "peer_gpt_b16", ["fmjax_gpt_b16_unroll", "fmjax_gpt_b16_scan", "fmjax_gpt_b16_xla"], "tokens_per_s"),
        ("gpt2 124M s1024 b32", "peer_gpt_b32", ["fmjax_gpt_b32_unroll"], "tokens_per_s"),
        ("clip b16 224px b128", "peer_clip", ["fmjax_clip_scan", "fmjax_clip_unroll", "fmjax_clip_xla"], "examples_per_s"),
        ("bert-base s128 b64", "peer_bert", ["fmjax_bert"], "examples_per_s")]
print("\n| config | run | fmjax /s | fmjax MFU | peer /s | peer MFU | fmjax / peer |\n|---|---|---|---|---|---|---|")
for label, peer_name, runs, key in rows:
    p = load(peer_name)
    pv = p and p.get(key)
    for run in runs:
        f = load(run)
        if f is None:
            continue
        fv = f.get(key)
        print(f"| {label} | {run} | {fmt(fv, ',.0f')} | {fmt(f.get('mfu'), '.1%')} | {fmt(pv, ',.0f')} | "
              f"{fmt(p and p.get('mfu'), '.1%')} | {fmt(fv and pv and fv / pv, '.2f')} |")
try:
    waits = [json.loads(l) for l in open(os.path.join(out, "real_gpt_metrics.jsonl")) if "data_wait" in l]
    print("real run (gpt2 body, default corpus): perf/data_wait_fraction per log row:",
          [round(r["perf/data_wait_fraction"], 4) for r in waits],
          "tokens/s:", [round(r["perf/units_per_s"]) for r in waits])
except OSError:
    print("real run: no metrics")
PY
