"""Loading a finished (or running) run for inference: its config, assets and latest params.

Every paradigm's inference tool (generate, fill-mask, classify, ...) starts here, so a workdir
is all a user needs to keep. Loading comes in two steps so that a request can be checked
against the run before any parameter is read:

    files = open_run(workdir, expect_objective="causal_lm")  # config.json and assets: no JAX
    ...check the request against files.config / files.assets...
    run = restore(files)                                     # the model, from the checkpoint

A workdir that is missing, holds no run, holds another paradigm's run, has a config.json that
does not read, or has no checkpoint yet is a ValueError or FileNotFoundError saying which.
"""

import dataclasses
import json
from typing import Any, Optional

import jax
import ml_collections
from etils import epath
from flax import nnx

from fmjax import checkpointing, objectives, paths

CONFIG_FILE = "config.json"


@dataclasses.dataclass
class RunFiles:
  """What a run's workdir says about it without its checkpoint: enough to check a request."""
  workdir: str
  config: ml_collections.ConfigDict
  objective: objectives.Objective
  assets: Any


@dataclasses.dataclass
class LoadedRun(RunFiles):
  model: nnx.Module
  step: int


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir` (the trainer writes config.json before training)."""
  path = paths.join(paths.absolute(workdir), CONFIG_FILE)
  if not paths.exists(path):
    raise FileNotFoundError(_no_config(workdir, path))
  try:
    saved = json.loads(paths.read_text(path))
  except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError both are
    raise ValueError(f"{path} is not valid JSON ({e}): the run's config file is damaged") from None
  if not isinstance(saved, dict) or not isinstance(saved.get("objective"), str):
    raise ValueError(f"{path} is not a run's config: expected a JSON object with an 'objective' field")
  return ml_collections.ConfigDict(saved)


def _no_config(workdir: str, path: str) -> str:
  if not paths.is_remote(workdir):  # object stores have no folders to tell apart from files
    if not paths.exists(workdir):
      return f"workdir {workdir!r} does not exist: --workdir must be the workdir of a training run"
    if not paths.isdir(workdir):
      return f"workdir {workdir!r} is a file, not a folder: --workdir must be the workdir of a training run"
  return f"{path} not found: workdir {workdir!r} holds no training run"


def open_run(workdir: str, expect_objective: Optional[str] = None) -> RunFiles:
  """The run's config, objective and assets (tokenizer, class names): files only, no JAX."""
  config = load_config(workdir)
  if expect_objective is not None and config.objective != expect_objective:
    raise ValueError(f"workdir {workdir!r} holds a {config.objective!r} run; "
                     f"this tool needs a {expect_objective!r} run")
  objective = objectives.get(config.objective)
  return RunFiles(workdir, config, objective, objective.load_assets(config, workdir))


def restore(files: RunFiles, use_ema: bool = True) -> LoadedRun:
  """The run on one device, from its newest complete checkpoint: its moving average of the
  parameters where it keeps one (and use_ema), else the parameters themselves."""
  if not _has_step_folder(files.workdir):
    raise FileNotFoundError(f"workdir {files.workdir!r} holds no checkpoint yet "
                            f"({checkpointing.checkpoint_dir(files.workdir)} has no step saved): "
                            "wait for the run's first save")
  config, objective, assets = files.config, files.objective, files.assets
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: objective.make_model(config, assets, nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  targets = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                         nnx.to_pure_dict(abstract_state))
  params, step = checkpointing.latest_params(files.workdir, targets, prefer_ema=use_ema)
  return LoadedRun(files.workdir, config, objective, assets, nnx.merge(graphdef, params), step)


def load_run(workdir: str, expect_objective: Optional[str] = None, use_ema: bool = True) -> LoadedRun:
  return restore(open_run(workdir, expect_objective), use_ema)


def _has_step_folder(workdir: str) -> bool:
  """Whether checkpoints/ holds a folder named by a step number. Saves in progress have other
  names; whether a step folder is complete is Orbax's to say (checkpointing.latest_params).
  This only spares a run that has saved nothing the model build and JAX's start-up."""
  folder = checkpointing.checkpoint_dir(workdir)
  if not paths.isdir(folder):
    return False
  return any(child.name.isdigit() for child in epath.Path(folder).iterdir())
