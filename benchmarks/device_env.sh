# shellcheck shell=bash disable=SC2034  # (PY, TORCH_PY, OUT are for the scripts that source this)
# Sourced by the GPU benchmark scripts: run from the project root, logs under $OUT, and the wheels
# the device image lacks (.whl/, from ../shared/device/fetch_wheels.sh) installed beside it.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PY=${FMJAX_PYTHON:-python3}
TORCH_PY=${TORCH_PYTHON:-python3}
# Not in the CPU dry run (FMJAX_BENCH_SMOKE=1): the wheels are for the device's Python 3.12.
if [[ -d .whl && ${FMJAX_BENCH_SMOKE:-0} != 1 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    2> >(grep -v "already exists" >&2) || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi

# launch NAME LIMIT OPTIONAL cmd...: runs cmd under `timeout` into $OUT/NAME.log and its last JSON
# line into $OUT/NAME.json. Runs go most important first; an optional one (OPTIONAL=1) is skipped
# when, at its time limit, it could finish after BUDGET_S.
launch() {
  local name=$1 limit=$2 optional=$3; shift 3
  if (( optional && SECONDS + limit > ${BUDGET_S:-600} )); then
    echo "skip $name: ${SECONDS}s used of ${BUDGET_S:-600}s"; return
  fi
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  (( rc == 0 )) || { echo "$name failed (rc $rc; 124 = timed out, 2 = setup error), log tail:"; tail -5 "$OUT/$name.log"; }
  grep '^{' "$OUT/$name.log" | tail -1 >"$OUT/$name.json"
  echo "$name ($((SECONDS - t0))s): $(cat "$OUT/$name.json")"
}
