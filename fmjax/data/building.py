"""Where prepared data lives, and building a tfds dataset once per machine.

Both builders of this package are offline and cheap, so they are prepared on first use instead
of needing a separate preparation step. A file lock (fcntl) makes a second process on the
same machine wait for the first one's build instead of building the same files again.
"""

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from absl import logging
import tensorflow_datasets as tfds

from fmjax import paths

DATA_DIR_ENV = "FMJAX_DATA_DIR"


def resolve_data_dir(data_config) -> str:
  """config.data.data_dir, else $FMJAX_DATA_DIR, else ~/tensorflow_datasets (tfds' default).
  A gs:// URL stays one: tfds reads it through etils.epath."""
  data_dir = data_config.data_dir or os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets"
  return paths.absolute(data_dir)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """Holds an exclusive lock on `path` (created if missing) for the duration of the block.

  fcntl locks are per machine: on a shared network filesystem they may not exclude other
  hosts, which is why multi-host runs should prepare data (and tokenizers) before starting.
  A lock for a gs:// path is a local file named after it (object stores have no locks): it
  orders this machine's processes just the same, and other hosts no less than a network
  filesystem does. Across hosts, process 0 makes the tokenizer before the others look
  (objectives.text_assets), and catalog datasets are prepared before the run.
  """
  path = paths.local_lock_file(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def prepared_builder(make_builder: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  """Returns a builder whose data is on disk, building it first (under a lock) if needed.

  `make_builder` is called again after a build so that the returned builder reads the
  finished dataset_info from disk, whoever built it.
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  lock = os.path.join(str(builder.data_dir_root), ".locks", builder.info.full_name.replace("/", "+") + ".lock")
  with file_lock(lock):
    builder = make_builder()
    if not builder.is_prepared():  # nobody built it while we waited for the lock
      logging.info("Building %s into %s (once; later runs reuse it).", builder.info.full_name, builder.data_dir)
      tfds.disable_progress_bar()  # a one-off build of seconds: bars only clutter the run log
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              # Statistics would read every example back a second time; nothing here uses them.
              compute_stats=tfds.download.ComputeStatsMode.SKIP,
          ),
      )
    return make_builder()
