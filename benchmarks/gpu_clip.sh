#!/usr/bin/env bash
# CLIP ViT-B/16 train step (12-layer 512-wide text tower, 224 px, batch 128) on one GPU:
# fmjax.bench vs the transformers CLIPModel peer, same call, same device.
#
# Run from the project root on the device machine, with .whl/ and benchmarks/.peer/torch_peers.py
# (a copy of ../shared/bench/torch_peers.py) sent along:
#   bash benchmarks/gpu_clip.sh
# Logs and JSON lines go to ${OUT:-/tmp/out}; the last line is the ratio of images/s.
# FMJAX_BENCH_SMOKE=1 runs the same logic at toy sizes on CPU (FMJAX_PYTHON, TORCH_PYTHON pick the
# interpreters).
set -u
source "$(dirname "$0")/device_env.sh"
PEER=benchmarks/.peer/torch_peers.py
[[ -f $PEER ]] || PEER=../shared/bench/torch_peers.py
if [[ ${FMJAX_BENCH_SMOKE:-0} == 1 ]]; then
  SIZES=(--config.model.image.num_layers=1 --config.model.text.num_layers=1 --config.data.image_size=32
         --config.train.batch_size=8 --config.bench.steps=2 --config.bench.warmup_steps=1)
  PEER_SIZES=(--layers 1 --image 32 --batch 8 --steps 2 --warmup 1 --no-compile)
else
  SIZES=(--config.train.batch_size=128 --config.bench.steps=20 --config.bench.warmup_steps=5)
  PEER_SIZES=(--batch 128)
fi

# fmjax NAME [overrides...]: the bench-b16 variant (bf16, no remat) with extra overrides.
fmjax() {
  local name=$1; shift
  timeout -k 10 "${T_FMJAX:-240}" "$PY" -m fmjax.bench --config experiments/clip.py:bench-b16 "${SIZES[@]}" "$@" \
    >"$OUT/$name.log" 2>&1 || { echo "$name failed:"; tail -5 "$OUT/$name.log"; }
  grep '^{' "$OUT/$name.log" | tail -1 | tee "$OUT/$name.json"
}
fmjax fmjax_clip
timeout -k 10 "${T_PEER:-240}" "$TORCH_PY" "$PEER" clip "${PEER_SIZES[@]}" >"$OUT/peer_clip.log" 2>&1 \
  || { echo "peer clip failed:"; tail -5 "$OUT/peer_clip.log"; }
grep '^{' "$OUT/peer_clip.log" | tail -1 | tee "$OUT/peer_clip.json"
# Knobs, while the call has time: layers unrolled instead of scanned.
fmjax fmjax_clip_noscan --config.model.image.scan_layers=False --config.model.text.scan_layers=False
"$PY" - "$OUT" <<'PY'
import json, os, sys
def load(name):
    try:
        return json.load(open(os.path.join(sys.argv[1], name + ".json")))
    except (OSError, ValueError):
        return None
peer = load("peer_clip")
for name in ("fmjax_clip", "fmjax_clip_noscan"):
    f = load(name)
    if f and peer:
        print(f"clip b16 b128 ({name}): fmjax {f['examples_per_s']:,.0f} images/s (MFU {f['mfu'] or 0:.1%}), "
              f"peer {peer['examples_per_s']:,.0f} images/s, ratio {f['examples_per_s'] / peer['examples_per_s']:.2f}")
PY
