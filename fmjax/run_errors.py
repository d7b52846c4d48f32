"""Failures of a run that are not bugs: each says what happened and what is safe, in one line.

`fmjax.main` prints the message (no traceback) and exits with `exit_status`: 2 for a run that
refused to start (nothing was touched), 1 for a run that stopped part way (what was saved before
stays good).
"""


class RunError(Exception):
  exit_status = 1


class WorkdirInUse(RunError):
  """Another live process trains in this workdir."""
  exit_status = 2


class StorageError(RunError):
  """The workdir cannot hold the run (unwritable, too little space), known before training."""
  exit_status = 2


class CheckpointSaveFailed(RunError):
  """A save failed part way; the checkpoints saved before it are untouched."""


class NoReadableCheckpoint(RunError):
  """Every checkpoint in the workdir failed to restore (each was moved aside, not deleted)."""
  exit_status = 2


class NonFiniteMetric(RunError):
  """The loss (or the gradient or parameter norm) went NaN or Inf; the bad state is not saved."""
