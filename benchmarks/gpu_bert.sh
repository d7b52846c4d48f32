#!/usr/bin/env bash
# BERT-base MLM train step (seq 128, batch 64) on one GPU: fmjax.bench vs the transformers peer.
#
# Run from the project root on the device machine, with .whl/ and benchmarks/.peer/torch_peers.py
# (a copy of ../shared/bench/torch_peers.py) sent along:
#   bash benchmarks/gpu_bert.sh
# Logs and JSON lines go to ${OUT:-/tmp/out}; the last line is the ratio of examples/s.
set -u
source "$(dirname "$0")/device_env.sh"
PEER=benchmarks/.peer/torch_peers.py
[[ -f $PEER ]] || PEER=../shared/bench/torch_peers.py

# One sequence per row (no per-document mask), as the peer; the head runs at the masked positions
# only (bert-base's own setting, config.mlm.sparse_predictions), which the peer does not do.
timeout -k 10 240 "$PY" -m fmjax.bench --config experiments/bert.py:bert-base \
  --config.train.batch_size=64 --config.data.seq_len=128 --config.data.segment_ids=False \
  --config.mesh.data=-1 --config.mesh.fsdp=1 --config.bench.steps=30 --config.bench.warmup_steps=5 \
  >"$OUT/fmjax_bert.log" 2>&1 || { echo "fmjax bert failed:"; tail -5 "$OUT/fmjax_bert.log"; }
timeout -k 10 240 python3 "$PEER" bert --batch 64 --seq 128 >"$OUT/peer_bert.log" 2>&1 \
  || { echo "peer bert failed:"; tail -5 "$OUT/peer_bert.log"; }
grep '^{' "$OUT/fmjax_bert.log" | tail -1 | tee "$OUT/fmjax_bert.json"
grep '^{' "$OUT/peer_bert.log" | tail -1 | tee "$OUT/peer_bert.json"
"$PY" - "$OUT" <<'PY'
import json, os, sys
try:
    f = json.load(open(os.path.join(sys.argv[1], "fmjax_bert.json")))
    p = json.load(open(os.path.join(sys.argv[1], "peer_bert.json")))
    print(f"bert-base b64 s128: fmjax {f['examples_per_s']:,.0f} seq/s, peer {p['examples_per_s']:,.0f} seq/s, "
          f"ratio {f['examples_per_s'] / p['examples_per_s']:.2f}")
except (OSError, ValueError, KeyError) as e:
    print("no ratio:", e)
PY
