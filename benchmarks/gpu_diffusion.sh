#!/usr/bin/env bash
# DDPM train step on one GPU: fmjax.bench (experiments/diffusion.py:bench-ddpm, the DDPM CIFAR-10
# U-Net, 35.7M params, 32 px RGB, batch 128, bf16) vs the diffusers UNet2DModel peer
# (benchmarks/torch_ddpm.py, same layout, size, batch and image size), same call, same device;
# then, while the budget allows, fmjax's DiT-B/2 at 32 px (bench-dit), which has no peer.
#
# Run from the project root on the device machine, with .whl/ sent along (fetch_wheels.sh plus the
# diffusers wheels: see benchmarks/README.md); device_env.sh installs every .whl/*.whl:
#   bash benchmarks/gpu_diffusion.sh
# Logs and one JSON line per run go to ${OUT:-/tmp/out}; the last line is
#   ddpm cifar10 b128: fmjax N images/s (MFU x%), peer M images/s, ratio R
#
# Each run sits under `timeout`; the DiT run only starts if it would end within BUDGET_S (default
# 480 s) even at its time limit, so the whole call stays under ~9 minutes, compilation included.
# FMJAX_BENCH_SMOKE=1 runs the same logic at toy sizes on CPU (FMJAX_PYTHON, TORCH_PYTHON pick the
# interpreters; the peer runs eager there).
set -u
source "$(dirname "$0")/device_env.sh"
SMOKE=${FMJAX_BENCH_SMOKE:-0}
BUDGET_S=${BUDGET_S:-480}
PEER=benchmarks/torch_ddpm.py
# fmjax's MFU peak for H100/H200 is 989 TFLOP/s dense bf16; the peer gets the same denominator.
export FMJAX_PEAK_TFLOPS=${FMJAX_PEAK_TFLOPS:-989}

if [[ $SMOKE == 1 ]]; then
  # Toy sizes, few steps: exercises flags, logs and the summary, not the GPU.
  STEPS=(--config.bench.steps=2 --config.bench.warmup_steps=1)
  DDPM_SIZES=(--config.data.image_size=16 --config.train.batch_size=8 --config.model.unet.base_channels=32)
  PEER_SIZES=(--image 16 --batch 8 --base-channels 32 --steps 2 --warmup 1 --no-compile)
  DIT_SIZES=(--config.model.dit.num_layers=1 --config.model.dit.embed_dim=64 --config.model.dit.num_heads=2
             --config.model.dit.mlp_dim=128 --config.data.image_size=16 --config.train.batch_size=8)
  T_FMJAX=300 T_PEER=300 T_DIT=300
else
  STEPS=(--config.bench.steps=20 --config.bench.warmup_steps=5)
  DDPM_SIZES=(--config.train.batch_size=128)
  PEER_SIZES=(--batch 128 --steps 20 --warmup 5)
  DIT_SIZES=(--config.train.batch_size=128)
  T_FMJAX=${T_FMJAX:-240} T_PEER=${T_PEER:-270} T_DIT=${T_DIT:-150}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

launch fmjax_ddpm "$T_FMJAX" 0 "$PY" -m fmjax.bench --config experiments/diffusion.py:bench-ddpm \
  "${DDPM_SIZES[@]}" "${STEPS[@]}"
launch peer_ddpm "$T_PEER" 0 "$TORCH_PY" "$PEER" "${PEER_SIZES[@]}" --peak-tflops "$FMJAX_PEAK_TFLOPS"
launch fmjax_dit "$T_DIT" 1 "$PY" -m fmjax.bench --config experiments/diffusion.py:bench-dit \
  "${DIT_SIZES[@]}" "${STEPS[@]}"
echo "total ${SECONDS}s"

"$PY" - "$OUT" <<'PY'
import json, os, sys

def load(name):
  try:
    return json.loads(open(os.path.join(sys.argv[1], name + ".json")).read())
  except (OSError, ValueError):
    return None

def mfu(result):
  return "MFU -" if result.get("mfu") is None else f"MFU {result['mfu']:.1%}"

fmjax, peer, dit = load("fmjax_ddpm"), load("peer_ddpm"), load("fmjax_dit")
if dit:
  print(f"dit-b2 32px b{dit['batch_size']}: fmjax {dit['examples_per_s']:,.0f} images/s ({mfu(dit)}), no peer")
if peer:
  print(f"peer: {peer['params'] / 1e6:.1f}M params, {peer['tflops_per_s']} TFLOP/s counted ({mfu(peer)}), "
        f"warm-up {peer['warmup_s']} s")
if fmjax and peer:
  print(f"ddpm cifar10 b{fmjax['batch_size']}: fmjax {fmjax['examples_per_s']:,.0f} images/s ({mfu(fmjax)}), "
        f"peer {peer['examples_per_s']:,.0f} images/s, ratio {fmjax['examples_per_s'] / peer['examples_per_s']:.2f}")
else:
  print(f"ddpm cifar10: no ratio (fmjax {'ok' if fmjax else 'missing'}, peer {'ok' if peer else 'missing'}; see the logs)")
PY
