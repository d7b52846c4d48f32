"""The one training loop every paradigm shares.

    config -> mesh -> objective assets -> sharded state -> jit(train_step), compiled once
           -> loop: step, log (the only host syncs), evaluate, checkpoint (async), SIGTERM-safe

What differs between paradigms is behind `fmjax.objectives.Objective`; nothing here names one.
The train step is a pure function of (state, batch): the model's graph definition is closed
over, parameters and optimizer state are plain pytrees sharded by `fmjax.parallel` rules.
"""

import dataclasses
import json
import signal
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from fmjax import (checkpointing, config_checks, metrics as metrics_lib, nonfinite, objectives, optim,
                   param_transfer, parallel, paths, resume_checks, storage_checks, workdir_lock)


@dataclasses.dataclass
class Setup:
  """What a run needs before its first step: built once, cheap (no arrays allocated)."""
  config: Any
  mesh: jax.sharding.Mesh
  objective: objectives.Objective
  assets: Any
  graphdef: Any
  tx: optax.GradientTransformation
  schedule: Callable
  abstract_state: dict           # ShapeDtypeStructs carrying their shardings
  state_shardings: dict
  ema_decay: float = 0.0         # > 0: the state also holds 'ema_params', an average of params


def validate(config, objective: objectives.Objective) -> None:
  config_checks.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
  objective.validate(config)


def _check_param_sharding(abstract_params, specs, mesh) -> None:
  """Every sharded parameter dimension must divide by its mesh axes (a config error, not a
  crash inside XLA)."""
  def check(path, x, spec):
    for dim, axes in zip(x.shape, tuple(spec) + (None,) * (len(x.shape) - len(spec))):
      if axes is None:
        continue
      size = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
      if dim % size:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise config_checks.ConfigError(
            f"parameter {name} of shape {x.shape} does not divide over mesh axes {axes} (size {size}); "
            f"change config.model sizes or config.mesh")
  jax.tree_util.tree_map_with_path(check, abstract_params, specs, is_leaf=lambda s: isinstance(s, P))


def build(config, objective: objectives.Objective, assets, mesh) -> Setup:
  with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.LOGICAL_RULES):
    abstract_model = nnx.eval_shape(lambda: objective.make_model(config, assets, nnx.Rngs(config.seed)))
    graphdef, abstract_model_state = nnx.split(abstract_model)
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_model_state))
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 nnx.to_pure_dict(abstract_model_state))
  _check_param_sharding(abstract_params, specs, mesh)
  param_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))
  replicated = NamedSharding(mesh, P())

  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # Optimizer moments shard like their parameters (jit would otherwise replicate them).
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, NamedSharding))
  state_shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": replicated,
                     "rng": replicated}
  abstract_state = {"params": abstract_params, "opt_state": abstract_opt,
                    "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
  ema_decay = float(objective.ema_decay(config))
  if ema_decay > 0:
    state_shardings["ema_params"] = param_shardings
    abstract_state["ema_params"] = abstract_params
  abstract_state = checkpointing.abstract_like(abstract_state, state_shardings)
  return Setup(config, mesh, objective, assets, graphdef, tx, schedule, abstract_state, state_shardings,
               ema_decay)


def init_state(setup: Setup) -> dict:
  config, objective = setup.config, setup.objective

  def init():
    with nnx.logical_axis_rules(parallel.LOGICAL_RULES):
      model = objective.make_model(config, setup.assets, nnx.Rngs(config.seed))
    params = nnx.to_pure_dict(nnx.state(model))
    state = {"params": params, "opt_state": setup.tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(config.seed + 1)}
    if setup.ema_decay > 0:
      state["ema_params"] = jax.tree.map(jnp.copy, params)
    return state

  with jax.set_mesh(setup.mesh):
    return jax.jit(init, out_shardings=setup.state_shardings)()


def _micro_batches(batch, accum_steps: int):
  """(B, ...) -> (A, B/A, ...), micro-batch a = rows a, a+A, a+2A...: every device holds an equal
  share of every micro-batch, so no micro-batch lives on a subset of the mesh."""
  def split(x):
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)
    return parallel.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """The averaging weight of update number `step` (0-based): min(decay, (1 + step) / (10 + step)).

  The warm-up term keeps early averages from being dominated by the random initialisation
  (with decay 0.9999 the plain average would still be 90% init after 1,000 steps)."""
  step = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay_t: jax.Array):
  """decay_t * ema + (1 - decay_t) * params, leaf by leaf, in the params' dtype."""
  return jax.tree.map(lambda e, p: (decay_t * e + (1.0 - decay_t) * p).astype(p.dtype), ema_params, params)


def eval_params(state: dict):
  """The parameters evaluation and inference use: the moving average when the run keeps one."""
  return state.get("ema_params", state["params"])


def initial_params(setup: Setup, fresh_params) -> tuple[Any, int]:
  """The params `config.checkpoint.init_from` seeds this run with: the source run's whole model,
  or (config.checkpoint.init_subtrees) only the named parts of it, the rest as initialised."""
  config = setup.config
  mapping = param_transfer.parse_mapping(config.checkpoint.init_subtrees)
  if not mapping:
    return checkpointing.latest_params(config.checkpoint.init_from, setup.abstract_state["params"])
  source, from_step = checkpointing.latest_params_as_saved(config.checkpoint.init_from,
                                                           NamedSharding(setup.mesh, P()))
  params, _ = param_transfer.transfer(source, fresh_params, mapping)
  # Copied parts arrive replicated; every leaf goes back to the sharding this run gives it.
  params = jax.jit(lambda p: p, out_shardings=setup.state_shardings["params"])(params)
  return params, from_step


def make_train_step(setup: Setup) -> Callable:
  objective, graphdef, tx, schedule = setup.objective, setup.graphdef, setup.tx, setup.schedule
  accum_steps = setup.config.train.grad_accum_steps
  skip_nonfinite = setup.config.train.get("on_nonfinite", "stop") == "skip"

  def grads_and_metrics(params, batch, rng):
    def loss_fn(p):
      return objective.loss(nnx.merge(graphdef, p), batch, rng)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, metrics

  def train_step(state, batch):
    params = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    if accum_steps == 1:
      grads, metrics = grads_and_metrics(params, batch, rng)
    else:
      def accumulate(carry, xs):
        micro, index = xs
        out = grads_and_metrics(params, micro, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, out), None
      micro = _micro_batches(batch, accum_steps)
      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(grads_and_metrics, params, first, rng))
      total, _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum_steps)))
      # Mean over micro-batches of each micro-batch's mean loss.
      grads, metrics = jax.tree.map(lambda x: x / accum_steps, total)
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      new_params = optax.apply_updates(params, updates)
    new_state = {"params": new_params, "opt_state": opt_state, "rng": state["rng"]}
    if setup.ema_decay > 0:
      new_state["ema_params"] = ema_update(state["ema_params"], new_params, ema_decay_at(setup.ema_decay, state["step"]))
    metrics = {f"train/{k}": v for k, v in metrics.items()}
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    # A bad update shows in its own step's metrics (the loss was computed before it).
    metrics["train/param_norm"] = optax.tree.norm(new_params)
    metrics["train/learning_rate"] = schedule(state["step"])
    if skip_nonfinite:
      finite = nonfinite.all_finite(metrics)
      new_state = nonfinite.keep_if(finite, new_state, {k: state[k] for k in new_state})
      metrics[nonfinite.SKIPPED] = 1 - finite.astype(jnp.int32)
    new_state["step"] = state["step"] + 1
    return new_state, metrics

  return train_step


def make_eval_step(setup: Setup) -> Callable:
  """jit(objective.eval_outputs), outputs replicated so every host can read them."""
  objective, graphdef = setup.objective, setup.graphdef
  return jax.jit(lambda params, batch: objective.eval_outputs(nnx.merge(graphdef, params), batch),
                 out_shardings=NamedSharding(setup.mesh, P()))


def jit_train_step(setup: Setup, batch_example) -> Any:
  batch_shardings = jax.tree.map(lambda x: parallel.batch_sharding(setup.mesh, np.ndim(x)), batch_example)
  return jax.jit(make_train_step(setup), in_shardings=(setup.state_shardings, batch_shardings),
                 out_shardings=(setup.state_shardings, NamedSharding(setup.mesh, P())),
                 donate_argnums=(0,))


def evaluate(setup: Setup, eval_step, params, eval_batches) -> dict:
  """The objective's metrics over the fixed validation set; one host sync, at the end."""
  outputs = [eval_step(params, batch) for batch in eval_batches]
  return setup.objective.finish_eval(jax.device_get(outputs), setup.assets)


class _Preemption:
  """SIGTERM (preemptible TPU VMs, schedulers) asks the loop to save and stop at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, as in tests run from threads
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _interval_metrics(rows: list) -> dict:
  """Means over a log interval's per-step host metrics; skipped updates are counted, and their
  (non-finite) metrics left out of the means."""
  kept = [r for r in rows if not r.get(nonfinite.SKIPPED, 0)] or rows
  values = {k: float(np.mean([r[k] for r in kept])) for k in rows[0]}
  if nonfinite.SKIPPED in rows[0]:
    values[nonfinite.SKIPPED] = float(sum(r[nonfinite.SKIPPED] for r in rows))
  return values


def _saved_config(ckpt: checkpointing.Checkpointer) -> tuple[Optional[int], Optional[dict]]:
  """The config saved with the newest checkpoint whose config reads (damage is dealt with by
  the restore, which falls back the same way)."""
  for step in sorted(ckpt.manager.all_steps(), reverse=True):
    try:
      return step, ckpt.restore_config(step)
    except Exception:  # pylint: disable=broad-except  (unreadable: the restore will say so)
      continue
  return None, None


def train_and_evaluate(config, workdir: str, *, stop_at: Optional[int] = None,
                       log: Optional[Callable[[str], None]] = None) -> dict:
  """Train `config` in `workdir`, resuming from its latest checkpoint. Returns the last logged
  train metrics merged with the last evaluation.

  `stop_at` ends this invocation early (saving a checkpoint) without changing the schedule,
  which is still laid out over `config.train.steps`: a time-boxed slice of a longer run.

  Before anything in the workdir changes, the run takes the workdir's lock (one run at a time),
  checks it can write there, and compares its config with the one of the run the workdir holds
  (`fmjax.resume_checks`); these refusals are `fmjax.run_errors` and ConfigError."""
  objective = objectives.get(config.objective)
  validate(config, objective)
  workdir = paths.absolute(workdir)  # gs:// stays a URL (abspath would make it a local folder)
  is_main = jax.process_index() == 0
  if is_main:
    storage_checks.ensure_writable(workdir)
  lock = workdir_lock.WorkdirLock(workdir).acquire() if is_main else None
  try:
    return _train_locked(config, objective, workdir, stop_at=stop_at, log=log)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config, objective, workdir: str, *, stop_at: Optional[int],
                  log: Optional[Callable[[str], None]]) -> dict:
  paths.makedirs(workdir)
  config_dict = config.to_dict()
  ckpt = checkpointing.Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  try:
    saved_step, saved_config = _saved_config(ckpt)
    changes = []
    if saved_config is not None:
      changes = resume_checks.check_same_run(saved_config, config_dict, workdir=workdir, step=saved_step,
                                             allow_change=bool(config.checkpoint.get("allow_config_change", False)))
    return _train(config, objective, workdir, ckpt, config_dict, changes, stop_at=stop_at, log=log)
  except BaseException:
    _close_quietly(ckpt)  # the error that stopped the run is the one to report
    raise


def _close_quietly(ckpt: checkpointing.Checkpointer) -> None:
  try:
    ckpt.close()
  except Exception:  # pylint: disable=broad-except
    pass


def _train(config, objective, workdir: str, ckpt: checkpointing.Checkpointer, config_dict: dict,
           config_changes: list, *, stop_at: Optional[int], log: Optional[Callable[[str], None]]) -> dict:
  is_main = jax.process_index() == 0
  mesh = parallel.make_mesh(config.mesh)
  assets = objective.prepare_assets(config, workdir)
  setup = build(config, objective, assets, mesh)

  if is_main:  # before the first file of the run is written
    storage_checks.ensure_room(workdir, setup.abstract_state, config.checkpoint.keep,
                               log or (lambda text: print(text, flush=True)))
  writer = metrics_lib.MetricsWriter(workdir, config.train.steps, enabled=is_main, unit=objective.unit)
  say = log or writer.message
  for line in config_changes:
    say(f"resuming under a changed config (checkpoint.allow_config_change): {line}")
  if is_main:
    paths.write_atomically(paths.join(workdir, "config.json"), json.dumps(config_dict, indent=2, sort_keys=True))

  train_iter = iter(objective.train_data(config, assets, process_index=jax.process_index(),
                                         process_count=jax.process_count()))
  try:
    return _loop(setup, workdir, ckpt, train_iter, writer, say, config_dict, stop_at=stop_at)
  finally:
    train_iter.close()  # stop the prefetch thread before the interpreter tears down
    writer.close()


def _loop(setup: Setup, workdir: str, ckpt: checkpointing.Checkpointer, train_iter, writer, say,
          config_dict: dict, *, stop_at: Optional[int]) -> dict:
  config, objective, mesh, assets = setup.config, setup.objective, setup.mesh, setup.assets
  latest, state = ckpt.restore_newest(setup.abstract_state, train_iter, say)
  writer.forget_after(latest or 0)  # rows a killed attempt logged past its last save come again
  if latest is not None:
    say(f"resumed from {ckpt.directory} at step {latest}")
  else:
    state = init_state(setup)
    if config.checkpoint.init_from:
      params, from_step = initial_params(setup, state["params"])
      state["params"] = params
      if "ema_params" in state:  # the average starts from the loaded weights, not the random ones
        state["ema_params"] = jax.tree.map(jnp.copy, params)
      say(f"params initialised from {config.checkpoint.init_from} (step {from_step})")

  eval_batches = [parallel.global_batch(b, mesh) for b in
                  objective.eval_data(config, assets, process_index=jax.process_index(),
                                      process_count=jax.process_count())]
  eval_step = make_eval_step(setup)

  step = int(jax.device_get(state["step"]))
  total = config.train.steps
  stop_on_nonfinite = config.train.get("on_nonfinite", "stop") == "stop"
  units_per_step = objective.units_per_example(config) * config.train.batch_size
  throughput = metrics_lib.Throughput(units_per_step, objective.flops_per_example(config, assets) * config.train.batch_size,
                                      jax.device_count())
  n_params = objective.param_count(config, assets)
  say(f"{objective.name}: {n_params or 0:,} params, mesh {dict(mesh.shape)}, "
      f"{jax.device_count()} devices on {jax.process_count()} processes, steps {step} -> {total}")

  result: dict = {}
  pending: list = []     # this interval's per-step metrics, still on the device
  checked: list = []     # ... and those already read to the host and checked
  last_eval: dict = {}
  compiled = None
  with _Preemption() as preemption, jax.set_mesh(mesh):
    throughput.start(step)
    while step < total:
      t0 = time.perf_counter()
      batch = parallel.global_batch(next(train_iter), mesh)
      throughput.waited_for_data(time.perf_counter() - t0)
      if compiled is None:
        t0 = time.perf_counter()
        compiled = jit_train_step(setup, batch).lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        writer.write(step, {"perf/compile_time_s": compile_s})
        say(f"compiled the train step in {compile_s:.1f} s")
        throughput.start(step)
      state, step_metrics = compiled(state, batch)
      pending.append(step_metrics)
      step += 1

      logging_now = step % config.train.log_every == 0 or step == total
      evaluating = _is_eval_step(config, step, total)
      preempted = (ckpt.manager.reached_preemption(step) if jax.process_count() > 1 else preemption.requested)
      stopping = preempted or step == stop_at
      saving = step % config.checkpoint.every == 0 or step == total or stopping
      if logging_now or evaluating or saving:
        # The host syncs of the loop: read the steps since the last one and look for NaN/Inf
        # before the state is evaluated or saved.
        first = step - len(pending) + 1
        rows = jax.device_get(pending)
        pending = []
        if stop_on_nonfinite:
          nonfinite.raise_if_bad(rows, first, ckpt.latest_step())
        skipped = nonfinite.skipped_steps(rows, first)
        if skipped:
          say(f"skipped {len(skipped)} non-finite update(s) at step(s) {skipped[:10]}")
        checked += rows

      values = {}
      if logging_now:
        values = _interval_metrics(checked)
        checked = []
        values.update(throughput.measure(step))
      if evaluating:
        t0 = time.perf_counter()
        last_eval = evaluate(setup, eval_step, eval_params(state), eval_batches)
        # Evaluators may return images (np.ndarray, H x W x C uint8) beside scalars: sample grids.
        writer.write_images(step, {k: v for k, v in last_eval.items() if isinstance(v, np.ndarray)})
        last_eval = {k: v for k, v in last_eval.items() if not isinstance(v, np.ndarray)}
        throughput.exclude(time.perf_counter() - t0)
        values.update(last_eval)
      if values:
        writer.write(step, values)
        if "train/loss" in values:
          writer.progress(step, values, values.get("perf/step_time_s", 0.0) * (total - step))
        result.update(values)

      if saving:
        t0 = time.perf_counter()
        ckpt.save(step, state, train_iter, config_dict)
        throughput.exclude(time.perf_counter() - t0)
      if preempted:
        say(f"preempted: saved step {step} to {ckpt.directory}; run the same command to resume")
      if stopping:
        break

  ckpt.close()  # waits for the last save; raises CheckpointSaveFailed if it failed
  result["step"] = step
  return result


def _is_eval_step(config, step: int, total: int) -> bool:
  return bool(config.train.eval_every and step % config.train.eval_every == 0) or step == total
