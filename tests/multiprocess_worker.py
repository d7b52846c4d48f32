"""One process of a multi-process CPU run (launched by test_multiprocess.py).

    python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS OUT_DIR
"""

import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(__file__))
from conftest import small_config  # noqa: E402  (sets 8 fake devices; overridden just below)

process_id, num_processes, port, local_devices, out_dir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                                           int(sys.argv[4]), sys.argv[5])
jax.config.update("jax_num_cpu_devices", local_devices)
if num_processes > 1:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402

from fmjax import data as fmdata, objectives, parallel, train  # noqa: E402


def fixed_batch_losses(config, steps=3):
  """Train on one fixed global batch; each process feeds only its own rows."""
  objective = objectives.get(config.objective)
  setup = train.build(config, objective, fmdata.ByteTokenizer(), parallel.make_mesh(config.mesh))
  rng = np.random.default_rng(0)
  full = objective.synthetic_batch(config, fmdata.ByteTokenizer(), config.train.batch_size)
  full["inputs"] = rng.integers(5, 261, full["inputs"].shape).astype(np.int32)
  full["targets"] = rng.integers(5, 261, full["targets"].shape).astype(np.int32)
  rows = config.train.batch_size // jax.process_count()
  local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in full.items()}
  losses = []
  with jax.set_mesh(setup.mesh):
    state = train.init_state(setup)
    batch = parallel.global_batch(local, setup.mesh)
    step = train.jit_train_step(setup, batch)
    for _ in range(steps):
      state, metrics = step(state, batch)
      losses.append(float(metrics["train/loss"]))
  return losses


def main():
  import pathlib
  tmp = pathlib.Path(out_dir)
  config = small_config(tmp, train__steps=4, checkpoint__every=2, train__eval_every=2)
  config.mesh.data = -1
  losses = fixed_batch_losses(config)
  # The whole loop on real data: per-host reading, multi-host Orbax saves, process-0 logging.
  result = train.train_and_evaluate(config, str(tmp / "run"))
  with open(tmp / f"result_{jax.process_index()}.json", "w") as f:
    json.dump({"fixed_batch_losses": losses, "eval_loss": result.get("eval/loss"), "step": result["step"],
               "devices": jax.device_count(), "processes": jax.process_count()}, f)


if __name__ == "__main__":
  main()
