"""The tail every training pipeline shares: threaded reads, fixed-size batches, prefetching.

Each stage stays a grain dataset, so the iterator's state (what has been read, what sits in
the buffers) is checkpointed with the run and a resume continues at the same example.
"""

import os

import grain


def read_options(batch_size: int, max_threads: int) -> grain.ReadOptions:
  """Threads for the per-example work (decoding, resampling, resizing: libraries that release
  the GIL) and a read-ahead buffer of at least two batches."""
  return grain.ReadOptions(num_threads=min(max_threads, os.cpu_count() or 1),
                           prefetch_buffer_size=max(64, 2 * batch_size))


def prefetched(batches: grain.IterDataset, prefetch: int) -> grain.IterDataset:
  """`prefetch` batches made ahead in a background thread (config.data.prefetch; 0 = none)."""
  prefetch = int(prefetch)
  if prefetch < 0:
    raise ValueError(f"config.data.prefetch={prefetch} must be >= 0 (0 = no prefetching).")
  if not prefetch:
    return batches
  return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)


def training_batches(examples: grain.MapDataset, batch_size: int, *, prefetch: int,
                     max_threads: int) -> grain.IterDataset:
  """Endless examples -> batches of `batch_size` (a partial batch never happens: the stream
  repeats) -> prefetch."""
  batches = examples.to_iter_dataset(read_options(batch_size, max_threads)).batch(batch_size, drop_remainder=True)
  return prefetched(batches, prefetch)
