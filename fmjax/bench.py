"""Training-step benchmark on synthetic data: one JSON line with step time, throughput, MFU,
compile time and peak memory.

    python -m fmjax.bench --config experiments/gpt.py:gpt2 --config.train.batch_size=16

It runs the real train step of the config (same model, optimizer, sharding, donation) on random
batches, so no dataset or tokenizer is prepared. `config.bench.steps` steps are timed after
`config.bench.warmup_steps` untimed ones, with one device sync at each end.
"""

import json
import resource
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from fmjax import host_memory

FLAGS = flags.FLAGS


def peak_memory_bytes(devices) -> int | None:
  """Peak device memory where the runtime reports it (GPU, TPU); the process's peak RSS on CPU."""
  stats = [d.memory_stats() or {} for d in devices]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use") is not None]
  if peaks:
    return int(max(peaks))
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_benchmark(config) -> dict:
  import jax

  from fmjax import metrics, objectives, parallel, train

  objective = objectives.get(config.objective)
  train.validate(config, objective)
  mesh = parallel.make_mesh(config.mesh)
  assets = objective.stand_in_assets(config)
  setup = train.build(config, objective, assets, mesh)
  batch_size = config.train.batch_size
  with jax.set_mesh(mesh):
    state = train.init_state(setup)
    batch = parallel.global_batch(objective.synthetic_batch(config, assets, batch_size // jax.process_count()), mesh)
    t0 = time.perf_counter()
    step = train.jit_train_step(setup, batch).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(config.bench.warmup_steps):
      state, _ = step(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(config.bench.steps):
      state, out = step(state, batch)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - t0) / config.bench.steps

  units = objective.units_per_example(config) * batch_size / step_s
  flops = objective.flops_per_example(config, assets) * batch_size / step_s
  mfu = metrics.mfu(flops, jax.device_count(), metrics.peak_flops_per_device())
  return {
      "objective": objective.name, "variant": config.get("variant", ""),
      "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "params": objective.param_count(config, assets), "batch_size": batch_size,
      "seq_len": config.data.get("seq_len"), "dtype": config.model.get("dtype") or config.model.get("image", {}).get("dtype"),
      "step_time_s": round(step_s, 5), f"{objective.unit}_per_s": round(units, 1),
      "examples_per_s": round(batch_size / step_s, 2), "tflops_per_s": round(flops / 1e12, 3),
      "mfu": None if mfu is None else round(mfu, 4), "compile_time_s": round(compile_s, 2),
      "peak_memory_bytes": peak_memory_bytes(jax.local_devices()),
      "final_loss": float(out["train/loss"]),
  }


def define_flags():
  # Flags are defined only when run as a program, so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  config_flags.DEFINE_config_file("config", None, "experiment config: path/to/file.py:variant", lock_config=True)
  flags.mark_flags_as_required(["config"])


def main(argv):
  host_memory.keep_freed_memory()  # before jax makes its CPU client
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, tfds) drown the progress lines
  del argv
  from fmjax import config_checks
  try:
    result = run_benchmark(FLAGS.config)
  except config_checks.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result))


if __name__ == "__main__":
  define_flags()
  app.run(main)
