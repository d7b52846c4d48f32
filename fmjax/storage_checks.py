"""What the workdir must offer before a run spends time: to be writable, and to have room.

Known before training: a workdir that cannot be created or written (a path through a file, a
read-only mount, no permission) and a local disk with less free space than one checkpoint of
this run. A disk that fills later is a failed save, reported by `fmjax.checkpointing`. A gs://
workdir is checked by the first write (object stores report neither free space nor permissions
up front).
"""

import os
import shutil

import jax
import numpy as np

from fmjax import paths, run_errors

PROBE_FILE = ".write-probe"


def ensure_writable(workdir: str) -> None:
  """Creates a local `workdir` if needed and writes, then removes, a small file in it."""
  if paths.is_remote(workdir):
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f"{PROBE_FILE}-{os.getpid()}")
    with open(probe, "wb") as handle:
      handle.write(b"fmjax")
    os.remove(probe)
  except OSError as e:
    raise run_errors.StorageError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def checkpoint_bytes(abstract_state) -> int:
  """Bytes one checkpoint of the state takes (arrays uncompressed; the metadata is small)."""
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract_state)))


def ensure_room(workdir: str, abstract_state, keep: int, say) -> None:
  """An error when the local disk cannot hold one more checkpoint; a warning when it cannot
  hold the `keep` checkpoints (plus one being written) the run will reach."""
  if paths.is_remote(workdir):
    return
  needed = checkpoint_bytes(abstract_state)
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise run_errors.StorageError(
        f"workdir {workdir} has {_size(free)} free, less than one checkpoint of this run "
        f"({_size(needed)}); free space or pass another --workdir")
  if free < needed * (keep + 1):
    say(f"warning: {workdir} has {_size(free)} free; {keep + 1} checkpoints of {_size(needed)} "
        f"(config.checkpoint.keep={keep}, plus one being written) will not fit")


def _size(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} B"
