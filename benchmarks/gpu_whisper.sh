#!/usr/bin/env bash
# Whisper-base train step on one GPU: fmjax.bench (experiments/speech.py:bench-whisper: 6 + 6
# layers, 512 wide, 30 s of 16 kHz audio -> 3000 log-mel frames -> 1500 encoder frames, 64 label
# tokens, vocabulary 51,865, batch 16, bf16) vs the transformers WhisperForConditionalGeneration
# peer (../shared/bench/torch_peers.py whisper: same sizes), same call, same device; then, while
# the budget allows, fmjax's BEST-RQ base encoder (bench-best-rq), which has no peer.
#
# fmjax's step starts from the waveform and computes the log-mel spectrogram on the device; the
# peer is handed ready features. The comparison counts that against fmjax.
#
# Run from the project root on the device machine, with .whl/ and benchmarks/.peer/torch_peers.py
# (a copy of ../shared/bench/torch_peers.py) sent along:
#   run(command="bash benchmarks/gpu_whisper.sh", carry=[".whl", "benchmarks/.peer"], timeout_s=600)
# Logs and JSON lines go to ${OUT:-/tmp/out}; the last line is the ratio of examples/s.
# FMJAX_BENCH_SMOKE=1 runs the same logic at toy sizes on CPU (the peer is skipped without torch).
set -u
source "$(dirname "$0")/device_env.sh"
SMOKE=${FMJAX_BENCH_SMOKE:-0}
BUDGET_S=${BUDGET_S:-480}
PEER=benchmarks/.peer/torch_peers.py
[[ -f $PEER ]] || PEER=../shared/bench/torch_peers.py
export FMJAX_PEAK_TFLOPS=${FMJAX_PEAK_TFLOPS:-989}

if [[ $SMOKE == 1 ]]; then
  STEPS=(--config.bench.steps=2 --config.bench.warmup_steps=1)
  SIZES=(--config.train.batch_size=2 --config.data.max_seconds=2.0 --config.model.encoder.num_layers=1
         --config.model.decoder.num_layers=1 --config.data.vocab_size=1024)
  PEER_SIZES=(--batch 2 --frames 200 --layers 1 --steps 2 --warmup 1 --no-compile)
  RQ_SIZES=(--config.train.batch_size=2 --config.data.max_seconds=2.0 --config.model.encoder.num_layers=1)
  T_FMJAX=300 T_PEER=300 T_RQ=300
else
  STEPS=(--config.bench.steps=20 --config.bench.warmup_steps=5)
  SIZES=() RQ_SIZES=()
  PEER_SIZES=(--batch 16 --frames 3000 --steps 20 --warmup 8)
  T_FMJAX=${T_FMJAX:-240} T_PEER=${T_PEER:-240} T_RQ=${T_RQ:-150}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

launch fmjax_whisper "$T_FMJAX" 0 "$PY" -m fmjax.bench --config experiments/speech.py:bench-whisper \
  "${SIZES[@]}" "${STEPS[@]}"
if "$TORCH_PY" -c 'import torch, transformers' 2>/dev/null; then
  launch peer_whisper "$T_PEER" 0 "$TORCH_PY" "$PEER" whisper "${PEER_SIZES[@]}"
else
  echo "peer_whisper skipped: no torch + transformers for $TORCH_PY"
fi
launch fmjax_best_rq "$T_RQ" 1 "$PY" -m fmjax.bench --config experiments/speech.py:bench-best-rq \
  "${RQ_SIZES[@]}" "${STEPS[@]}"
echo "total ${SECONDS}s"

"$PY" - "$OUT" <<'PY'
import json, os, sys

def load(name):
  try:
    return json.loads(open(os.path.join(sys.argv[1], name + ".json")).read())
  except (OSError, ValueError):
    return None

fmjax, peer, rq = load("fmjax_whisper"), load("peer_whisper"), load("fmjax_best_rq")
if rq:
  print(f"best-rq-base b{rq['batch_size']}: fmjax {rq['examples_per_s']:,.1f} utterances/s, no peer")
if fmjax and peer:
  print(f"whisper-base b{fmjax['batch_size']} 30 s: fmjax {fmjax['examples_per_s']:,.1f} examples/s, "
        f"peer {peer['examples_per_s']:,.1f} examples/s, ratio {fmjax['examples_per_s'] / peer['examples_per_s']:.2f}")
else:
  print(f"whisper-base: no ratio (fmjax {'ok' if fmjax else 'missing'}, peer {'ok' if peer else 'missing'})")
PY
