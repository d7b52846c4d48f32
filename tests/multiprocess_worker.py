"""One process of a multi-process CPU run (launched by test_multiprocess.py).

    python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS OUT_DIR DATA_DIR PARTS

PARTS, comma-separated, from:
  fixed   losses of a fixed batch on the flat mesh and on each hybrid (dcn_data) mesh the
          process count allows, and the eval loss of the initial params;
  loop    the training loop, 4 steps, in OUT_DIR/straight (checkpoints at 2 and 4);
  resume  (after loop) a copy of that run's step-2 checkpoint, written by all hosts, resumed in
          OUT_DIR/resumed up to step 4;
  rehost  the step-2 checkpoint of a run written by another process count (the workdir named by
          $FMJAX_REHOST_FROM), resharded onto these processes' mesh and resumed up to step 4.
Each process writes what it measured to OUT_DIR/result_<process>.json.

The test process imports `worker_config` and `fixed_batch_run` for its one-process reference,
so the process set-up below runs only when this file is the program.
"""

import json
import os
import pathlib
import shutil
import sys

import jax

sys.path.insert(0, os.path.dirname(__file__))
from conftest import small_config  # noqa: E402  (sets 8 fake devices; a worker overrides it below)

if __name__ == "__main__":
  # Before anything touches the backend: this process's devices, then the peers.
  _PROCESS_ID, _NUM_PROCESSES, _PORT, _LOCAL_DEVICES = (int(a) for a in sys.argv[1:5])
  jax.config.update("jax_num_cpu_devices", _LOCAL_DEVICES)
  if _NUM_PROCESSES > 1:
    jax.distributed.initialize(f"127.0.0.1:{_PORT}", num_processes=_NUM_PROCESSES, process_id=_PROCESS_ID)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from fmjax import checkpointing, data as fmdata, objectives, parallel, train  # noqa: E402


def worker_config(out_dir, data_dir, **overrides):
  """The config every process count runs (4 steps, checkpoints at 2 and 4), on one data dir."""
  config = small_config(pathlib.Path(out_dir), train__steps=4, checkpoint__every=2, train__eval_every=2,
                        model__num_layers=1, **overrides)
  config.data.data_dir = str(data_dir)
  config.mesh.data = -1
  return config


def fixed_batch_run(config, devices=None, steps=3, with_eval=True) -> dict:
  """Train on one fixed global batch, each process feeding only its own rows (global rows
  p*B_local ... of process p, the order `parallel.global_batch` assembles). With `with_eval`,
  first the eval loss of the initial params over this process's share of the eval set: equal
  across process counts only if the hosts' shares together are the same set."""
  objective = objectives.get(config.objective)
  tokenizer = fmdata.ByteTokenizer()
  setup = train.build(config, objective, tokenizer, parallel.make_mesh(config.mesh, devices))
  rng = np.random.default_rng(0)
  full = objective.synthetic_batch(config, tokenizer, config.train.batch_size)
  full["inputs"] = rng.integers(5, 261, full["inputs"].shape).astype(np.int32)
  full["targets"] = rng.integers(5, 261, full["targets"].shape).astype(np.int32)
  rows = config.train.batch_size // jax.process_count()
  local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in full.items()}
  result = {}
  with jax.set_mesh(setup.mesh):
    state = train.init_state(setup)
    if with_eval:
      result["initial_eval_loss"] = _eval_loss(setup, state["params"], objective.eval_data(
          config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()))
    batch = parallel.global_batch(local, setup.mesh)
    step = train.jit_train_step(setup, batch)
    result["losses"] = []
    for _ in range(steps):
      state, metrics = step(state, batch)
      result["losses"].append(float(metrics["train/loss"]))
  return result


def _eval_loss(setup, params, local_batches) -> float:
  """The trainer's evaluation over these batches (each process passes its own rows)."""
  batches = [parallel.global_batch(local, setup.mesh) for local in local_batches]
  with jax.set_mesh(setup.mesh):
    return float(train.evaluate(setup, train.make_eval_step(setup), params, batches)["eval/loss"])


def copy_checkpoint(run_dir: pathlib.Path, step: int, to_dir: pathlib.Path) -> None:
  """A new workdir holding only `step` of run_dir's checkpoints (process 0 copies; every host
  waits for it)."""
  if jax.process_index() == 0:
    source = run_dir / checkpointing.CHECKPOINT_DIR / str(step)
    shutil.copytree(source, to_dir / checkpointing.CHECKPOINT_DIR / str(step))
  multihost_utils.sync_global_devices(f"copied checkpoint {step} to {to_dir}")


def params_sum_of_squares(config, workdir, step) -> float:
  """The checkpoint's params restored onto this process layout's mesh, reduced to one number."""
  objective = objectives.get(config.objective)
  setup = train.build(config, objective, fmdata.ByteTokenizer(), parallel.make_mesh(config.mesh))
  ckpt = checkpointing.Checkpointer(str(workdir), keep=1, async_save=False, read_only=True)
  try:
    params = ckpt.restore_params(step, setup.abstract_state["params"])
  finally:
    ckpt.close()
  with jax.set_mesh(setup.mesh):
    return float(jax.jit(lambda p: sum(jax.numpy.sum(x.astype(jax.numpy.float32) ** 2) for x in jax.tree.leaves(p)))(params))


def main(out_dir, data_dir, parts):
  out = pathlib.Path(out_dir)
  config = worker_config(out, data_dir)
  result = {"devices": jax.device_count(), "processes": jax.process_count()}
  if "fixed" in parts:
    result["fixed"] = {1: fixed_batch_run(config)}
    # Slices the data axis can span here: one per process, or two processes each.
    for slices in (2, 4):
      if slices <= jax.process_count() and jax.process_count() % slices == 0:
        hybrid = worker_config(out, data_dir, mesh__dcn_data=slices)
        result["fixed"][slices] = fixed_batch_run(hybrid, with_eval=False)
  if "loop" in parts:
    # The whole loop on real data: per-host reading, multi-host Orbax saves, process-0 logging.
    result["straight"] = train.train_and_evaluate(config, str(out / "straight"))
  if "resume" in parts:
    copy_checkpoint(out / "straight", 2, out / "resumed")
    result["resumed"] = train.train_and_evaluate(config, str(out / "resumed"))
  if "rehost" in parts:
    copy_checkpoint(pathlib.Path(os.environ["FMJAX_REHOST_FROM"]), 2, out / "rehosted")
    result["rehosted_params_sq"] = params_sum_of_squares(config, out / "rehosted", 2)
    log = []
    result["rehosted"] = train.train_and_evaluate(config, str(out / "rehosted"), log=log.append)
    result["rehosted_log"] = log
  with open(out / f"result_{jax.process_index()}.json", "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[5], sys.argv[6], sys.argv[7].split(","))
