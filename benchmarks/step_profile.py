"""Where a config's train step spends its time: a profiler trace of the real step, each op's time
added up under the part of the model it belongs to.

    python benchmarks/step_profile.py --config experiments/gpt.py:tiny [--config.x=...] \
        [--steps 5] [--top 15] [--json-out PATH]

It compiles the config's train step (as `python -m fmjax.bench` does: the same model, optimizer,
shardings and donation, on random batches), runs a few warm-up steps, records `--steps` steps
with `jax.profiler` (a Perfetto trace, read back as JSON) and maps every op the trace names to
the compiled HLO's `op_name`, which carries the `jax.named_scope` the model code opened:
attention, attention_projections, mlp, layernorm, output_head, cross_entropy, optimizer (the
backward pass keeps its forward op's scope; a fused op counts under its root op's scope, so the
output head's matmul, fused with the loss, can show as cross_entropy). Ops outside these go to
'other', split by op kind.

It prints a JSON line per part (ms per step, share of the summed op time, op count) and a
markdown table, then the `--top` slowest ops with their shapes. About 30 s for the tiny GPT on 2
CPU cores. On a CPU the runtime runs independent ops at once, so the summed op time can exceed
the step's wall time (both are printed); the shares still say what costs what. The same script
runs on a GPU, where the trace's ops are the device kernels XLA launched.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_flags

from fmjax import host_memory

FLAGS = flags.FLAGS
# The jax.named_scope names fmjax's model and train step open, most specific first.
SCOPES = ("cross_entropy", "output_head", "attention_projections", "attention", "mlp", "layernorm", "optimizer")
_RUNTIME_EVENTS = re.compile(r"^(ThunkExecutor|\$|SlinkyThreadPool|end: )")
_ASYNC_DOT = re.compile(r"^dot(_general)?(\.\d+)?$")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (result shape, op_name metadata)} of a compiled module's text."""
  ops = {}
  for match in re.finditer(r"\n\s*(?:ROOT )?%?([\w.\-]+) = (\S+)[^\n]*", hlo_text):
    op_name = re.search(r'op_name="([^"]*)"', match.group(0))
    ops[match.group(1)] = (match.group(2), op_name.group(1) if op_name else "")
  return ops


def part_of(op_name: str, instruction: str) -> str:
  """The named scope an op belongs to, else 'other: <kind of op>'."""
  for scope in SCOPES:
    if re.search(rf"(^|[/(]){scope}([/)]|$)", op_name):
      return scope
  kind = re.sub(r"\.\d+$", "", instruction)
  return f"other: {kind}"


def op_durations(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  """Total microseconds and occurrences per op name in the Perfetto trace under `trace_dir`.

  A plain `dot` on XLA:CPU (its Eigen path, which the weight-gradient matmuls take there) runs
  asynchronously on the thread pool: its own event covers the dispatch only, about a tenth of
  the matmul, and an `end: <op>` marker follows when it completes. Such a dot counts from its
  start to that marker. Fusions keep their own event's duration: their completion can wait
  behind other work on the pool, which is not their cost."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1]) as handle:
    trace = json.load(handle)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X":
      continue
    if name.startswith("end: ") and _ASYNC_DOT.match(name[5:]):
      ends[name[5:]].append(event["ts"] + event.get("dur", 0))
    elif not _RUNTIME_EVENTS.match(name):
      starts[name].append((event["ts"], event.get("dur", 0)))
  micros, counts = collections.Counter(), collections.Counter()
  for name, runs in starts.items():
    runs.sort()
    finishes = sorted(ends.get(name, ()))
    for ts, dur in runs:
      # Each run's completion is the first marker after it starts (runs of one op never overlap).
      while finishes and finishes[0] < ts:
        finishes.pop(0)
      micros[name] += (finishes.pop(0) - ts) if finishes else dur
      counts[name] += 1
  return micros, counts


def breakdown(micros: collections.Counter, counts: collections.Counter, ops: dict, steps: int) -> list[dict]:
  """Per part: ms per step, share of the summed op time, ops per step; only ops of the step."""
  parts, part_counts = collections.Counter(), collections.Counter()
  for name, us in micros.items():
    if name in ops:
      part = part_of(ops[name][1], name)
      parts[part] += us
      part_counts[part] += counts[name]
  total = sum(parts.values()) or 1
  return [{"part": part, "ms_per_step": round(us / steps / 1e3, 2), "share": round(us / total, 3),
           "ops_per_step": round(part_counts[part] / steps, 1)} for part, us in parts.most_common()]


def slowest(micros: collections.Counter, ops: dict, steps: int, top: int) -> list[dict]:
  rows = [(us, name) for name, us in micros.items() if name in ops]
  return [{"op": name, "ms_per_step": round(us / steps / 1e3, 3), "shape": ops[name][0],
           "op_name": ops[name][1][:120]} for us, name in sorted(rows, reverse=True)[:top]]


def profile(config, steps: int, trace_dir: str) -> dict:
  import jax

  from fmjax import objectives, parallel, train

  objective = objectives.get(config.objective)
  train.validate(config, objective)
  mesh = parallel.make_mesh(config.mesh)
  assets = objective.stand_in_assets(config)
  setup = train.build(config, objective, assets, mesh)
  with jax.set_mesh(mesh):
    state = train.init_state(setup)
    batch = parallel.global_batch(objective.synthetic_batch(config, assets, config.train.batch_size // jax.process_count()), mesh)
    compiled = train.jit_train_step(setup, batch).lower(state, batch).compile()
    for _ in range(3):
      state, out = compiled(state, batch)
    jax.block_until_ready(out)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      t0 = time.perf_counter()
      for _ in range(steps):
        state, out = compiled(state, batch)
      jax.block_until_ready(out)
      wall_ms = (time.perf_counter() - t0) / steps * 1e3  # before the trace is written out
  return {"hlo": compiled.as_text(), "wall_ms_per_step": wall_ms, "device": jax.devices()[0].device_kind}


def markdown(parts: list[dict], min_share: float = 0.01) -> str:
  """The table; 'other' parts under `min_share` each are summed into one row."""
  shown = [p for p in parts if p["share"] >= min_share or not p["part"].startswith("other")]
  rest = [p for p in parts if p not in shown]
  if rest:
    shown.append({"part": f"other ({len(rest)} kinds of op)", "ms_per_step": sum(p["ms_per_step"] for p in rest),
                  "share": sum(p["share"] for p in rest), "ops_per_step": sum(p["ops_per_step"] for p in rest)})
  lines = ["| part | ms/step | share | ops/step |", "|---|---:|---:|---:|"]
  lines += [f"| {p['part']} | {p['ms_per_step']:.2f} | {p['share']:.1%} | {p['ops_per_step']:g} |" for p in shown]
  return "\n".join(lines)


def define_flags():
  config_flags.DEFINE_config_file("config", None, "experiment config: path/to/file.py:variant", lock_config=True)
  flags.mark_flags_as_required(["config"])
  flags.DEFINE_integer("steps", 5, "steps recorded in the trace")
  flags.DEFINE_integer("top", 15, "slowest ops listed")
  flags.DEFINE_string("json_out", "", "also write the JSON lines here")
  flags.DEFINE_string("trace_dir", "", "where the trace goes ('' = a temporary folder)")


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # as the trainer does: before jax makes its CPU client
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.steps < 1 or FLAGS.top < 0:
    print(f"error: --steps must be >= 1 and --top >= 0 (got {FLAGS.steps}, {FLAGS.top})", file=sys.stderr)
    sys.exit(2)
  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="fmjax_profile_")
  run = profile(FLAGS.config, FLAGS.steps, trace_dir)
  ops = hlo_ops(run["hlo"])
  micros, counts = op_durations(trace_dir)
  parts = breakdown(micros, counts, ops, FLAGS.steps)
  header = {"config": FLAGS["config"].config_filename if hasattr(FLAGS["config"], "config_filename") else "",
            "device": run["device"], "wall_ms_per_step": round(run["wall_ms_per_step"], 2),
            "summed_op_ms_per_step": round(sum(p["ms_per_step"] for p in parts), 2), "trace_dir": trace_dir}
  lines = [header, *parts, *({"slowest": row} for row in slowest(micros, ops, FLAGS.steps, FLAGS.top))]
  for line in lines:
    print(json.dumps(line))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as handle:
      handle.write("".join(json.dumps(line) + "\n" for line in lines))
  print()
  print(markdown(parts))


if __name__ == "__main__":
  define_flags()
  app.run(main)
