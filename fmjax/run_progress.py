"""Where a run stands, read from its workdir without JAX or Orbax: its saved config, its newest
complete checkpoint and its logged metrics.

A sweep asks this of every run before launching it, so that a finished run costs a few file
reads, not a JAX start. A checkpoint is complete once Orbax has renamed its temporary folder
(`3.orbax-checkpoint-tmp-...`) to the bare step number; on object stores, where Orbax writes
in place, once its `commit_success.txt` marker exists.
"""

import dataclasses
from typing import Any, Optional

from etils import epath

from fmjax import paths, run_records

CHECKPOINT_DIR = "checkpoints"      # as fmjax.checkpointing lays a workdir out
COMMIT_MARKER = "commit_success.txt"
# The eval metric a summary shows when a run logs it; otherwise the first eval/ name in order.
PREFERRED_EVAL = "eval/loss"


@dataclasses.dataclass(frozen=True)
class Progress:
  config: Optional[dict]            # config.json, None before the run has written it
  checkpoint_step: Optional[int]    # the newest complete checkpoint
  rows: tuple                       # metrics.jsonl rows that parse, in order

  @property
  def logged_step(self) -> Optional[int]:
    """The step of the last row of train or eval metrics. The last in the file, not the largest:
    a run killed after logging past its newest checkpoint logs those steps again on resume."""
    for row in reversed(self.rows):
      if "train/loss" in row or any(k.startswith("eval/") for k in row):
        return row["step"]
    return None

  @property
  def reached_step(self) -> int:
    """How far the run got: its newest checkpoint or its last logged step, whichever is later."""
    return max(self.checkpoint_step or 0, self.logged_step or 0)

  def finished(self, steps: int) -> bool:
    """Trained to `steps`: a checkpoint there and metrics logged up to it (the last save
    happens after the last metrics row, so both are needed)."""
    return (self.config is not None and self.checkpoint_step is not None and self.checkpoint_step >= steps
            and self.logged_step is not None and self.logged_step >= steps)

  def last(self, key: str) -> Any:
    for row in reversed(self.rows):
      if key in row:
        return row[key]
    return None

  def final_eval(self) -> Optional[tuple[str, Any]]:
    """(name, value) of the last evaluation's headline metric."""
    for row in reversed(self.rows):
      names = sorted(k for k in row if k.startswith("eval/"))
      if names:
        name = PREFERRED_EVAL if PREFERRED_EVAL in names else names[0]
        return name, row[name]
    return None


def read(workdir: str) -> Progress:
  problems = []  # what the report notes; a sweep only needs what did parse
  return Progress(config=run_records.read_config(paths.join(workdir, run_records.CONFIG_FILE), problems),
                  checkpoint_step=newest_checkpoint(workdir),
                  rows=tuple(run_records.read_rows(paths.join(workdir, run_records.METRICS_FILE), problems)))


def newest_checkpoint(workdir: str) -> Optional[int]:
  directory = epath.Path(paths.join(workdir, CHECKPOINT_DIR))
  if not directory.is_dir():
    return None
  steps = [int(child.name) for child in directory.iterdir()
           if child.name.isdigit() and child.is_dir()
           and (not paths.is_remote(workdir) or (child / COMMIT_MARKER).exists())]
  return max(steps) if steps else None
