#!/usr/bin/env bash
# fmjax's GPT train step vs the PyTorch nanoGPT-recipe peer, same dimensions, on this CPU.
#
#   TORCH_PYTHON=/work/torchvenv/bin/python bash benchmarks/cpu_gpt.sh
#
# Sizes are fmjax's `tiny` config (4 layers, 4 heads, dim 128, mlp 512, seq 128, batch 32,
# float32); the peer gets --vocab 384, the byte vocabulary (261) padded to fmjax's multiple of
# 128, so both models have the same parameters. The peer runs in four modes: bf16 autocast (its
# recipe) and float32, each eager and torch.compile'd. Machines shared with other jobs are noisy,
# so each run happens ROUNDS times, interleaved, and the best run that had the CPUs to itself
# (see `run`) is reported.
#
# Env: FMJAX_PYTHON, TORCH_PYTHON, PEER (path to torch_gpt.py), ROUNDS (2), STEPS (20), WARMUP (5),
#      PEER_MODES ("amp-eager amp-compile fp32-eager fp32-compile"), OUT (logs: $OUT/cpu_gpt),
#      QUIET_WAIT_S (0): wait up to this long before each run for other jobs to leave the CPUs.
set -u
cd "$(dirname "$0")/.." || exit 1
FMJAX_PYTHON=${FMJAX_PYTHON:-/work/venv/bin/python}
TORCH_PYTHON=${TORCH_PYTHON:-/work/torchvenv/bin/python}
PEER=${PEER:-benchmarks/.peer/torch_gpt.py}
[[ -f $PEER ]] || PEER=../shared/bench/torch_gpt.py
ROUNDS=${ROUNDS:-2} STEPS=${STEPS:-20} WARMUP=${WARMUP:-5}
PEER_MODES=${PEER_MODES:-amp-eager amp-compile fp32-eager fp32-compile}
QUIET_WAIT_S=${QUIET_WAIT_S:-0}
LOGS=${OUT:-/tmp/out}/cpu_gpt
mkdir -p "$LOGS"
rm -f "$LOGS"/*.json

# The peer hard-codes bf16 autocast; fp32 modes swap torch.autocast for a no-op context before
# running it unchanged, so the only difference between the modes is the compute dtype.
NO_AUTOCAST='import contextlib, runpy, sys, torch
torch.autocast = lambda *a, **k: contextlib.nullcontext()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")'

# Other jobs on the machine slow torch far more than fmjax (its OpenMP threads wait at every
# barrier for a descheduled peer thread), so each run records how many cores *other* processes
# kept busy meanwhile: all CPU time the kernel counted, less this run's own user+sys time.
busy_s() { awk '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100}' /proc/stat; }
others_cores() {
  local t0; t0=$(busy_s)
  sleep 1
  awk -v a="$t0" -v b="$(busy_s)" 'BEGIN {printf "%.2f", b - a}'
}

# run NAME CMD...: stdout+stderr into NAME.rN.log; the JSON line, with "others_cores" added,
# appended to NAME.json.
run() {
  local name=$1 waited=0 b0 b1 log=$LOGS/$1.r$round.log; shift
  while (( waited < QUIET_WAIT_S )) && awk -v c="$(others_cores)" 'BEGIN {exit !(c > 0.2)}'; do
    waited=$((waited + 5)); sleep 4
  done
  b0=$(busy_s)
  /usr/bin/time -f '%e %U %S' -o "$log.time" "$@" >"$log" 2>&1 || echo "$name (round $round) failed: see $log" >&2
  b1=$(busy_s)
  local others
  others=$(awk -v a="$b0" -v b="$b1" '{printf "%.2f", (b - a - $2 - $3) / $1}' "$log.time")
  grep '^{' "$log" | tail -1 | sed "s/^{/{\"others_cores\": $others, /" | tee -a "$LOGS/$name.json" | sed "s/^/$name: /"
}

# fmjax sets glibc's malloc to keep freed memory (fmjax/host_memory.py); the peer gets the same
# setting through the environment as a mode of its own ("+keepmem"), and its best counts.
KEEPMEM=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647
peer() {
  local mode=$1 tunables=${2:-} name=peer-$1 args=(--vocab 384 --seq 128 --layers 4 --heads 4 --dim 128 --batch 32
                                                   --steps "$STEPS" --warmup "$WARMUP")
  [[ -n $tunables ]] && name+=+keepmem
  [[ $mode == *eager ]] && args+=(--no-compile)
  if [[ $mode == fp32* ]]; then
    run "$name" env GLIBC_TUNABLES="$tunables" "$TORCH_PYTHON" -c "$NO_AUTOCAST" "$PEER" "${args[@]}"
  else
    run "$name" env GLIBC_TUNABLES="$tunables" "$TORCH_PYTHON" "$PEER" "${args[@]}"
  fi
}

echo "cpu: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  run fmjax "$FMJAX_PYTHON" -m fmjax.bench --config experiments/gpt.py:tiny \
      --config.model.dtype=float32 --config.data.segment_ids=False --config.bench.steps="$STEPS" --config.bench.warmup_steps="$WARMUP"
  for mode in $PEER_MODES; do peer "$mode"; peer "$mode" "$KEEPMEM"; done
done

# Best per side, among runs where other jobs used under 0.25 cores if there are any; the ratio
# is fmjax over each peer mode, and over the fastest.
"$FMJAX_PYTHON" - "$LOGS" <<'PY'
import glob, json, os, sys
best = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    quiet = [r for r in rows if r["others_cores"] < 0.25]
    if rows:
        r = max(quiet or rows, key=lambda r: r["tokens_per_s"])
        best[os.path.basename(path)[:-5]] = (r["tokens_per_s"], r["others_cores"])
fm = best.pop("fmjax", None)
print("best tokens/s (others' cores):", json.dumps({"fmjax": fm, **best}))
if fm and best:
    for name, (tok, _) in best.items():
        print(f"ratio fmjax/{name}: {fm[0] / tok:.2f}")
    fastest = max(best, key=lambda n: best[n][0])
    print(f"ratio fmjax/fastest peer ({fastest}): {fm[0] / best[fastest][0]:.2f}")
PY
