"""Orbax checkpoints of a run: params, optimizer state, step/rng, data-iterator state, config.

Each part is its own item, so fine-tuning (`init_from`) and inference restore params alone.
Saves are asynchronous: `save` returns once arrays are copied to host, files are written in the
background and renamed into place when complete, so a half-written step (`*.orbax-checkpoint-tmp`)
is never taken as the latest. Every host calls every method (Orbax coordinates multi-host writes).

Faults: a save that fails (full disk, lost permission), now or in the background, is raised as
CheckpointSaveFailed naming its step, at the latest by the next save or `close`; the steps saved
before it are complete and untouched. A complete step that no longer restores (truncated or
altered files) is skipped for the one before it, and moved aside to `checkpoints_unreadable/`
(kept, never deleted) so that the run can save that step number again.
"""

import os
import re
import time
from typing import Any, Callable, Optional

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from fmjax import paths, run_errors

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.absolute(workdir), CHECKPOINT_DIR)  # Orbax writes gs:// itself


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self.workdir = paths.absolute(workdir)
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unfinished_step: Optional[int] = None  # an async save not yet known to have succeeded

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def _failed(self, step: int, error: BaseException) -> run_errors.CheckpointSaveFailed:
    self._unfinished_step = None
    complete = [s for s in self.manager.all_steps(read=True) if s != step]
    kept = (f"the newest complete checkpoint, step {max(complete)}, is untouched" if complete
            else "no complete checkpoint exists yet")
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return run_errors.CheckpointSaveFailed(f"saving checkpoint step {step} to {self.directory} failed ({reason}); {kept}")

  def _check_unfinished(self, wait: bool) -> None:
    """Raises the error of the last async save, if it failed (after waiting for it, if `wait`)."""
    if self._unfinished_step is None:
      return
    step = self._unfinished_step
    try:
      self.manager.wait_until_finished() if wait else self.manager.check_for_errors()
    except Exception as e:  # Orbax re-raises whatever the background writer hit
      raise self._failed(step, e) from e
    if wait:
      self._unfinished_step = None

  def save(self, step: int, state: dict, data_iterator: Any, config_dict: dict) -> None:
    self._check_unfinished(wait=False)
    try:
      self._save(step, state, data_iterator, config_dict)
    except Exception as e:
      raise self._failed(step, e) from e
    self._unfinished_step = step

  def _save(self, step: int, state: dict, data_iterator: Any, config_dict: dict) -> None:
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
    if data_iterator is not None and self.data_saved_by(step) in (None, jax.process_count()):
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = {"params": restored["params"], "opt_state": restored["opt_state"],
             "step": restored["train"]["step"], "rng": restored["train"]["rng"]}
    if "ema_params" in abstract_state:
      state["ema_params"] = restored["ema_params"]
    return state

  def data_saved_by(self, step: int) -> Optional[int]:
    """How many processes saved the data position of `step` (each saves its own iterator as
    `process_<i>-of-<n>.json`); None when the step has none."""
    folder = paths.join(self.directory, str(step), "data")
    if not paths.isdir(folder):
      return None
    for name in epath.Path(folder).iterdir():
      match = re.fullmatch(r"process_\d+-of-(\d+)\.json", name.name)
      if match:
        return int(match.group(1))
    return None

  def restore_newest(self, abstract_state: dict, data_iterator: Any,
                     say: Callable[[str], None]) -> tuple[Optional[int], Optional[dict]]:
    """(step, state) of the newest checkpoint that restores, or (None, None) when there is none.

    Steps newer than it that failed to restore are moved to `checkpoints_unreadable/` and
    named in the log. When none restores, nothing is moved (a failure shared by every step is a
    mismatch with this run rather than damage) and NoReadableCheckpoint says why."""
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # damaged files surface as many types (JSON, tensorstore, OS)
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        say(f"checkpoint step {step} in {self.directory} cannot be restored ({reason}); trying the one before")
        failed.append((step, reason))
        continue
      saved_by = self.data_saved_by(step)
      if data_iterator is not None and saved_by not in (None, jax.process_count()):
        # Each host reads its own share of the data: n shares' positions do not map onto m.
        say(f"the data position of step {step} was saved by {saved_by} processes and does not carry over to "
            f"{jax.process_count()}: the data stream starts again from its beginning (parameters and "
            f"optimizer state are resumed)")
      for bad_step, _ in failed:
        say(f"moved unreadable checkpoint step {bad_step} to {self._set_aside(bad_step)}; resuming from step {step}")
      if failed:
        self.manager.reload()
      return step, state
    if failed:
      step, reason = failed[0]
      raise run_errors.NoReadableCheckpoint(
          f"no checkpoint in {self.directory} restores (newest, step {step}: {reason}); move the folder "
          f"away to start afresh, or fix the config if it no longer matches the run")
    return None, None

  def _set_aside(self, step: int) -> str:
    """Moves a step's folder out of Orbax's sight (kept for inspection); process 0 moves it."""
    target = paths.join(self.workdir, UNREADABLE_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      source = paths.join(self.directory, str(step))
      if paths.is_remote(target):
        epath.Path(source).rename(target)
      else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"fmjax set aside checkpoint {step}")
    return target

  def has_item(self, step: int, item: str) -> bool:
    """Whether the checkpoint at `step` holds `item` (e.g. 'ema_params')."""
    return paths.isdir(paths.join(self.directory, str(step), item))

  def restore_params(self, step: int, abstract_params: Any, item: str = "params") -> Any:
    restored = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)}))
    return restored[item]

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait(self) -> None:
    """Blocks until the last save is on disk; raises CheckpointSaveFailed if it failed."""
    self._check_unfinished(wait=True)
    self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
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
