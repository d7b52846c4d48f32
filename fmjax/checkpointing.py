"""Orbax checkpoints of a run: params, optimizer state, step/rng, data-iterator state, config.

Each part is its own item, so fine-tuning (`init_from`) and inference restore params alone.
Saves are asynchronous: `save` returns once arrays are copied to host, files are written in the
background and renamed into place when complete, so a half-written step (`*.orbax-checkpoint-tmp`)
is never taken as the latest. Every host calls every method (Orbax coordinates multi-host writes).
"""

from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp

from fmjax import paths

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.absolute(workdir), CHECKPOINT_DIR)  # Orbax writes gs:// itself


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_iterator: Any, config_dict: dict) -> None:
    items = dict(
        params=ocp.args.StandardSave(state["params"]),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        train=ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]}),
        config=ocp.args.JsonSave(config_dict))
    if "ema_params" in state:
      items["ema_params"] = ocp.args.StandardSave(state["ema_params"])
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: dict, data_iterator: Any) -> dict:
    """The full train state at `step` onto the shardings of `abstract_state` (any mesh), and the
    data iterator moved to where it was."""
    items = dict(
        params=ocp.args.StandardRestore(abstract_state["params"]),
        opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
        train=ocp.args.StandardRestore({"step": abstract_state["step"], "rng": abstract_state["rng"]}))
    if "ema_params" in abstract_state:
      items["ema_params"] = ocp.args.StandardRestore(abstract_state["ema_params"])
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = {"params": restored["params"], "opt_state": restored["opt_state"],
             "step": restored["train"]["step"], "rng": restored["train"]["rng"]}
    if "ema_params" in abstract_state:
      state["ema_params"] = restored["ema_params"]
    return state

  def has_item(self, step: int, item: str) -> bool:
    """Whether the checkpoint at `step` holds `item` (e.g. 'ema_params')."""
    return paths.isdir(paths.join(self.directory, str(step), item))

  def restore_params(self, step: int, abstract_params: Any, item: str = "params") -> Any:
    restored = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)}))
    return restored[item]

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_params(workdir: str, abstract_params: Any, prefer_ema: bool = False) -> tuple[Any, int]:
  """Params of the newest complete checkpoint in another run's workdir (fine-tuning, inference);
  with prefer_ema, its moving average of the params where the run keeps one."""
  if not paths.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(workdir)}: is {workdir!r} the workdir of a run?")
  ckpt = Checkpointer(workdir, keep=1, async_save=False, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"{checkpoint_dir(workdir)} holds no complete checkpoint")
  item = "ema_params" if prefer_ema and ckpt.has_item(step, "ema_params") else "params"
  try:
    return ckpt.restore_params(step, abstract_params, item), step
  finally:
    ckpt.close()


def latest_params_as_saved(workdir: str, sharding: jax.sharding.Sharding) -> tuple[Any, int]:
  """Params of another run's newest complete checkpoint in the shapes it saved them, whatever
  model this run builds, placed with `sharding` (replicated: any part can then move anywhere).
  For seeding a part of a different model (fmjax.param_transfer)."""
  if not paths.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(workdir)}: is {workdir!r} the workdir of a run?")
  ckpt = Checkpointer(workdir, keep=1, async_save=False, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)} holds no complete checkpoint")
    metadata = ckpt.manager.item_metadata(step)["params"]
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), metadata,
                            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    return ckpt.restore_params(step, abstract), step
  finally:
    ckpt.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStruct targets carrying the shardings to restore onto."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
