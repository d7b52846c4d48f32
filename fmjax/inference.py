"""Loading a finished (or running) run for inference: its config, assets and latest params.

Every paradigm's inference tool (generate, fill-mask, classify, ...) starts here, so a workdir
is all a user needs to keep.
"""

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from flax import nnx

from fmjax import checkpointing, objectives, paths


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  objective: objectives.Objective
  assets: Any
  model: nnx.Module
  step: int


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = paths.join(paths.absolute(workdir), "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be the workdir of a training run")
  return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


def load_run(workdir: str, expect_objective: str | None = None, use_ema: bool = True) -> LoadedRun:
  """The run in `workdir` on one device, from its newest complete checkpoint: its moving average
  of the parameters where it keeps one (and use_ema), else the parameters themselves."""
  config = load_config(workdir)
  if expect_objective is not None and config.objective != expect_objective:
    raise ValueError(f"{workdir} holds a {config.objective!r} run; this tool needs a {expect_objective!r} run")
  objective = objectives.get(config.objective)
  assets = objective.load_assets(config, workdir)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: objective.make_model(config, assets, nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  targets = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                         nnx.to_pure_dict(abstract_state))
  params, step = checkpointing.latest_params(workdir, targets, prefer_ema=use_ema)
  return LoadedRun(config, objective, assets, nnx.merge(graphdef, params), step)
