"""Relaunching in a workdir that holds a run: the same run may resume, another may not.

A resume restores the checkpoint's parameters, optimizer state and data position; a config that
builds another model, objective, tokenizer, data stream or optimizer would either crash inside
Orbax on a shape or, worse, silently continue a different experiment from the wrong state. So the
new config is compared with the one saved in the newest checkpoint, before anything in the
workdir is written, and every differing field is named.

Fields that say how the run executes rather than what it computes may change: the mesh (the
state is resharded on restore), logging, evaluation and checkpoint cadence, prefetching, where
the data lives, the step budget (extending a run). `checkpoint.allow_config_change=True` accepts
any other difference too, for a deliberate change of recipe mid-run (each is logged).
"""

from typing import Any

# field_checks, not config_checks: the comparison is importable without JAX (fmjax.sweep decides
# whether a run is finished without starting JAX). Both name the same ConfigError.
from fmjax import config_diff
from fmjax.field_checks import ConfigError

# Dotted names (or prefixes ending in '.') that may differ between launches of one run.
MAY_CHANGE = (
    "mesh.", "topology", "train.steps", "train.log_every", "train.eval_every", "train.on_nonfinite",
    "checkpoint.every", "checkpoint.keep", "checkpoint.async_save", "checkpoint.allow_config_change",
    "data.data_dir", "data.prefetch", "data.eval_batches",
)
# Kernel choices inside any model section (model.remat, model.text.remat, ...): same parameters.
ATTENTION_KERNELS = ("auto", "xla", "einsum", "cudnn")


def may_change(name: str, old: Any = None, new: Any = None) -> bool:
  if any(name == allowed or (allowed.endswith(".") and name.startswith(allowed)) for allowed in MAY_CHANGE):
    return True
  if name.startswith("model.") and name.endswith(".remat"):
    return True
  # 'attention' names a kernel in transformer configs but a block switch (a bool) in the U-Net's.
  return (name.startswith("model.") and name.endswith(".attention")
          and old in ATTENTION_KERNELS and new in ATTENTION_KERNELS)


def differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """(field, saved value, current value) for each field that differs and may not. A field the
  saved config lacks was added to fmjax after that run started: its default is assumed."""
  old, new = config_diff.flatten(saved), config_diff.flatten(current)
  found = []
  for name in sorted(set(old) | set(new)):
    if name not in old or may_change(name, old.get(name), new.get(name)):
      continue
    if _normalise(old.get(name, "<absent>")) != _normalise(new.get(name, "<absent>")):
      found.append((name, old.get(name, "<absent>"), new.get(name, "<absent>")))
  return found


def check_same_run(saved: dict, current: dict, *, workdir: str, step: int, allow_change: bool) -> list[str]:
  """Raises ConfigError naming every differing field unless `allow_change`; returns the lines
  describing what differs (empty when nothing does) for the log."""
  found = differences(saved, current)
  lines = [f"config.{name}: {old!r} in the run, {new!r} now" for name, old, new in found]
  if found and not allow_change:
    shown = "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
    raise ConfigError(
        f"workdir {workdir} holds a different run (checkpoint step {step}): {shown}. Use another "
        f"--workdir, or --config.checkpoint.allow_config_change=True to resume it under the new config")
  return lines


def _normalise(value):
  # JSON turns tuples into lists; a config read back from JSON must equal the one that wrote it.
  if isinstance(value, tuple):
    return list(value)
  return value
