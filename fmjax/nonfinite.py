"""NaN and Inf in training: found at the host syncs the loop already has, never saved.

The train step reports the loss, the gradient norm and the norm of the updated parameters, so a
step that poisons the parameters shows in that step's own metrics (a finite loss computed before
a bad update would not). The loop looks at every step's metrics at each log step and before each
checkpoint save: a bad state is caught before it can become the newest checkpoint.

`config.train.on_nonfinite`:
  'stop'  the run ends with NonFiniteMetric naming the first bad step and metric; nothing of the
          bad state is written, the newest checkpoint stays the last good one;
  'skip'  the train step keeps the previous params, optimizer state and average instead of a
          non-finite update (`train/skipped_updates` counts them per log interval), and the run
          goes on, as large-scale recipes do for rare loss spikes.
"""

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from fmjax import run_errors

MODES = ("stop", "skip")
SKIPPED = "train/skipped_updates"


def all_finite(metrics: dict) -> jax.Array:
  """True when every scalar metric of this step is finite (inside the jitted step)."""
  flags = [jnp.all(jnp.isfinite(jnp.asarray(v, jnp.float32))) for v in jax.tree.leaves(metrics)]
  return jnp.stack(flags).all()


def keep_if(ok: jax.Array, new_tree, old_tree):
  """new_tree where ok, else old_tree, leaf by leaf (a skipped update)."""
  return jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_tree, old_tree)


def first_bad(history: Sequence[dict], first_step: int) -> Optional[tuple[int, str, float]]:
  """(step, metric, value) of the first non-finite metric in per-step host metrics whose first
  row is step `first_step`; rows whose update was skipped do not count."""
  for offset, row in enumerate(history):
    if row.get(SKIPPED, 0):
      continue
    for name in sorted(row):
      value = float(row[name])
      if not math.isfinite(value):
        return first_step + offset, name, value
  return None


def raise_if_bad(history: Sequence[dict], first_step: int, newest_checkpoint: Optional[int]) -> None:
  found = first_bad(history, first_step)
  if found is None:
    return
  step, name, value = found
  kept = (f"the newest checkpoint, step {newest_checkpoint}, is untouched" if newest_checkpoint is not None
          else "no checkpoint was written")
  raise run_errors.NonFiniteMetric(
      f"{name} is {value} at step {step}: stopped before saving the bad state; {kept}. Lower "
      f"config.optim.learning_rate, or set config.train.on_nonfinite='skip' to skip such updates")


def skipped_steps(history: Sequence[dict], first_step: int) -> list[int]:
  return [first_step + i for i, row in enumerate(history) if row.get(SKIPPED, 0)]
