"""Compile a config's train step for a TPU slice on this host (no TPU needed): does it fit, and
how fast could it be?

    python -m fmjax.aot --config experiments/gpt.py:gpt2 [--topology v5e:4x4] [--json] [--config.x=...]

The topology defaults to `config.topology`. The step compiled is the one training runs (same
model, optimizer, shardings, donation, gradient accumulation, remat, scan), on the slice's
abstract devices, with a stand-in tokenizer and a global batch that exist only as shapes. It
prints, per chip: the memory the step needs against the chip's HBM, FLOPs and bytes accessed
per step, the roofline bound on step time and the MFU that bound allows, and the compile time.
A config that does not fit exits with status 2, naming what it needs.

Where the figures come from: memory from XLA's `memory_analysis()` of the compiled step;
FLOPs and bytes from its `cost_analysis()`, which counts each loop body once, so they are
scaled up to the traced step's matmul FLOPs with every loop trip counted (fmjax.jaxpr_flops;
the bytes by the same factor, an estimate). XLA's bytes accessed sum every fused op's inputs
and outputs, more than the HBM traffic where data stays on chip: the memory side of the
roofline is pessimistic, the MFU bound modest.

Needs libtpu: pip install 'jax[tpu]==<the installed jax version>'.
"""

import json
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from fmjax import tpu  # first: it readies libtpu's environment before anything loads it

FLAGS = flags.FLAGS
GiB = 2**30


class DoesNotFit(ValueError):
  """The step needs more memory per chip than the chip has; `report` holds the figures (None
  when the TPU compiler itself gave up)."""

  def __init__(self, message: str, report: dict | None = None):
    super().__init__(message)
    self.report = report


def _config_error(message: str):
  from fmjax import config_checks
  return config_checks.ConfigError(message)


def abstract_batch(objective, config, assets, mesh) -> dict:
  """The global batch as shapes sharded over the mesh's batch axes: one synthetic example gives
  each field's trailing shape and dtype, so no batch is ever built."""
  import jax
  from fmjax import parallel
  example = objective.synthetic_batch(config, assets, 1)
  return {k: jax.ShapeDtypeStruct((config.train.batch_size,) + v.shape[1:], v.dtype,
                                  sharding=parallel.batch_sharding(mesh, v.ndim))
          for k, v in example.items()}


def _hint(batch_size: int, grad_accum_steps: int, fsdp_over_all_chips: bool) -> str:
  ways = [] if fsdp_over_all_chips else ["shard parameters and optimizer state over all chips "
                                          "(config.mesh.fsdp=-1, config.mesh.data=1)"]
  ways += ["rematerialise activations (remat 'dots' or 'full' in config.model)",
           f"shrink the per-chip batch (config.train.batch_size={batch_size}, or more micro-batches: "
           f"config.train.grad_accum_steps={grad_accum_steps})"]
  return "; ".join(ways)


def fit_error(report: dict) -> str | None:
  """Why the step of `report` does not fit its chip's memory; None when it fits."""
  if report["fits"]:
    return None
  hint = _hint(report["batch_size"], report["grad_accum_steps"], report["mesh"]["fsdp"] == report["chips"])
  return (f"{report['variant'] or 'the config'} does not fit on {report['topology']}: it needs "
          f"{report['memory_needed_bytes'] / GiB:.2f} GiB per chip, a {report['chip']} chip has "
          f"{report['hbm_bytes'] / GiB:.1f} GiB of HBM; {hint}")


def _compile_error(error: Exception, config, mesh, topology: str) -> Exception:
  """The TPU compiler may itself refuse a program far over its memory; say so in our terms."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
    lines = [line.strip() for line in text.splitlines() if "memory" in line.lower()]
    detail = (lines[0] if lines else text[:300]).rstrip(".")
    hint = _hint(config.train.batch_size, config.train.grad_accum_steps, mesh.shape["fsdp"] == mesh.size)
    return DoesNotFit(f"{config.get('variant') or 'the config'} does not fit on {topology}: the TPU "
                      f"compiler ran out of HBM ({detail}); {hint}")
  return error


def compile_for_topology(config, topology: str = "", *, require_fit: bool = True) -> dict:
  """Compile the train step of `config` for TPU slice `topology` (default `config.topology`)
  and report its per-chip figures. Raises ConfigError for a bad config or topology, before
  compiling, and DoesNotFit (unless `require_fit` is False) when the step needs more memory
  per chip than the chip's HBM."""
  from fmjax import config_checks, jaxpr_flops, objectives, parallel, train
  import jax

  name = topology or config.get("topology", "")
  field = "--topology" if topology else "config.topology"
  if not name:
    raise _config_error("no TPU topology to compile for: config.topology is empty and no --topology "
                        "was given; name one, e.g. --topology=v5e:4x4")
  objective = objectives.get(config.objective)
  try:
    tpu_slice = tpu.load_slice(name)
  except tpu.TopologyError as e:
    raise _config_error(f"{field}: {e}") from None
  config_checks.validate(config, num_devices=tpu_slice.num_chips, process_count=tpu_slice.num_hosts)
  objective.validate(config)

  mesh = parallel.make_mesh(config.mesh, devices=tpu_slice.devices)
  assets = objective.stand_in_assets(config)
  setup = train.build(config, objective, assets, mesh)
  batch = abstract_batch(objective, config, assets, mesh)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    traced = train.jit_train_step(setup, batch).trace(setup.abstract_state, batch)
    try:
      compiled = traced.lower().compile()
    except Exception as e:  # the compiler's errors have no common public type across versions
      raise _compile_error(e, config, mesh, name) from e
    compile_s = time.perf_counter() - start

  report = _report(config, objective, assets, tpu_slice, mesh, compiled, compile_s,
                   jaxpr_flops.matmul_flops(traced.jaxpr))
  if require_fit and not report["fits"]:
    raise DoesNotFit(fit_error(report), report)
  return report


def _report(config, objective, assets, tpu_slice, mesh, compiled, compile_s: float,
            traced_matmul_flops: float) -> dict:
  chip, chips = tpu_slice.chip, tpu_slice.num_chips
  memory = compiled.memory_analysis()
  # Donated state comes back in place (aliased): counted once. The program itself sits in HBM too.
  needed = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes + memory.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # one dict per program on older jax
    cost = cost[0]
  xla_flops, xla_bytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  # XLA counts each loop body once (fmjax.jaxpr_flops): where the traced matmuls alone exceed
  # its count, scale its FLOPs up to them, and its bytes by the same factor (an estimate: the
  # loop bodies' share of the traffic taken to be their share of the FLOPs).
  undercount = max(1.0, traced_matmul_flops / (xla_flops * chips)) if xla_flops else 1.0
  flops_per_chip, bytes_per_chip = xla_flops * undercount, xla_bytes * undercount
  model_flops = float(objective.flops_per_example(config, assets)) * config.train.batch_size
  compute_s = flops_per_chip / chip.peak_flops
  memory_s = bytes_per_chip / chip.hbm_bandwidth
  step_s = max(compute_s, memory_s)
  return {
      "variant": config.get("variant", ""), "objective": objective.name, "topology": tpu_slice.name,
      "chip": chip.generation, "chips": chips, "hosts": tpu_slice.num_hosts, "mesh": dict(mesh.shape),
      "batch_size": config.train.batch_size, "grad_accum_steps": config.train.grad_accum_steps,
      "params": objective.param_count(config, assets),
      "compile_time_s": round(compile_s, 2),
      "memory_arguments_bytes": memory.argument_size_in_bytes,
      "memory_outputs_bytes": memory.output_size_in_bytes,
      "memory_temp_bytes": memory.temp_size_in_bytes,
      "memory_aliased_bytes": memory.alias_size_in_bytes,
      "memory_code_bytes": memory.generated_code_size_in_bytes,
      "memory_needed_bytes": needed, "hbm_bytes": chip.hbm_bytes, "fits": needed <= chip.hbm_bytes,
      "xla_flops_per_chip": xla_flops, "xla_bytes_per_chip": xla_bytes,
      "traced_matmul_flops_total": traced_matmul_flops, "xla_undercount": round(undercount, 3),
      "flops_per_chip": flops_per_chip, "flops_total": flops_per_chip * chips,
      "model_flops_total": model_flops,
      "flops_vs_model": flops_per_chip * chips / model_flops if model_flops else None,
      "bytes_accessed_per_chip": bytes_per_chip,
      "compute_time_s": compute_s, "memory_time_s": memory_s, "step_time_bound_s": step_s,
      "bound": "compute" if compute_s >= memory_s else "memory",
      "mfu_bound": model_flops / (chips * chip.peak_flops * step_s) if step_s else None,
  }


def _scaled(value: float, unit: str) -> str:
  """1.23e13, 'FLOP' -> '12.3 TFLOP'."""
  for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.3g} {prefix}{unit}"
  return f"{value:.3g} {unit}"


def _memory(n: float) -> str:
  return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
  return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def format_report(r: dict) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
  micro = r["batch_size"] // r["grad_accum_steps"]
  source = (f"XLA's count x{r['xla_undercount']:.3g}, the traced matmuls with every loop trip"
            if r["xla_undercount"] > 1 else "XLA's count")
  return "\n".join([
      f"{r['variant'] or r['objective']} ({r['objective']}, {r['params'] or 0:,} params) on {r['topology']}: "
      f"{r['chips']} {r['chip']} chip(s) on {r['hosts']} host(s), mesh {mesh}",
      f"  batch {r['batch_size']} = {r['grad_accum_steps']} x {micro}; traced and compiled in "
      f"{r['compile_time_s']:.1f} s on this host",
      f"  memory per chip  {_memory(r['memory_needed_bytes'])} of {_memory(r['hbm_bytes'])} HBM "
      f"({r['memory_needed_bytes'] / r['hbm_bytes']:.0%}) = arguments {_memory(r['memory_arguments_bytes'])} "
      f"+ outputs {_memory(r['memory_outputs_bytes'])} + temp {_memory(r['memory_temp_bytes'])} "
      f"- aliased {_memory(r['memory_aliased_bytes'])} + code {_memory(r['memory_code_bytes'])}",
      f"  FLOPs per step   {_scaled(r['flops_per_chip'], 'FLOP')} per chip, {_scaled(r['flops_total'], 'FLOP')} "
      f"in all ({source}); the model's estimate is {_scaled(r['model_flops_total'], 'FLOP')} "
      f"(compiled / estimate = {r['flops_vs_model']:.2f})",
      f"  bytes accessed   {_scaled(r['bytes_accessed_per_chip'], 'B')} per chip"
      + (" (XLA's count, scaled like its FLOPs: an estimate)" if r["xla_undercount"] > 1 else " (XLA's count)"),
      f"  roofline         compute {_duration(r['compute_time_s'])}, HBM traffic {_duration(r['memory_time_s'])}: "
      f"step >= {_duration(r['step_time_bound_s'])} ({r['bound']}-bound), MFU <= {r['mfu_bound']:.0%}",
  ])


def define_flags():
  # Flags are defined only when run as a program, so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  config_flags.DEFINE_config_file("config", None, "experiment config: path/to/file.py:variant", lock_config=True)
  flags.DEFINE_string("topology", "", "TPU topology, e.g. v5e:4x4, v6e:2x2, v4:2x2x2; default config.topology")
  flags.DEFINE_bool("json", False, "print the report as one JSON line")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  # Nothing runs here: keep JAX's runtime on the CPU, so it never tries to claim a TPU of this
  # host (or to load libtpu as a runtime); the TPU compiler is loaded for the topology alone.
  jax.config.update("jax_platforms", "cpu")
  from fmjax import config_checks
  try:
    report = compile_for_topology(FLAGS.config, FLAGS.topology)
  except DoesNotFit as e:
    if e.report is not None:
      print(json.dumps(e.report) if FLAGS.json else format_report(e.report))
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (config_checks.ConfigError, ValueError) as e:
    if FLAGS.verbosity > 0:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(report) if FLAGS.json else format_report(report))


if __name__ == "__main__":
  define_flags()
  app.run(main)
