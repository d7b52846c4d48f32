"""grain pipelines: host-local training batches (endless, resumable) and the fixed eval set.

Training: source -> this host's records -> seeded shuffle -> repeat -> [bos] doc [eos]
-> ConcatThenSplit packing -> per-row segment ids / positions -> transforms -> window shuffle of
rows -> batch -> prefetch.

Every stage is a grain dataset with checkpointable state, so the iterator of
make_train_dataset saves with grain.checkpoint.CheckpointSave and resumes exactly. Only
threads are used (no worker processes: they need spawn-safe entry points in every caller).
"""

import functools
import os
from collections.abc import Callable, Sequence

import grain
import numpy as np

from fmjax.data import batching
from fmjax.data import packing
from fmjax.data import sources
from fmjax.data import tokenizers

Transform = Callable[[dict], dict] | grain.transforms.Map | grain.transforms.RandomMap

# Documents read and tokenized ahead, in threads, before packing. Tokenizing (SentencePiece
# in C++, bytes in numpy) is light; a few threads hide the ArrayRecord reads.
_READ_OPTIONS = grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1), prefetch_buffer_size=128)


def shard_for_process(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
  """Records process_index, process_index + process_count, ...: disjoint across hosts, and
  together exactly the dataset. Each host reads only its own records."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  return ds[process_index::process_count]


def local_batch_size(config, process_count: int) -> int:
  batch_size = int(config.train.batch_size)
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"config.train.batch_size={batch_size} must be a positive multiple of the number of "
        f"processes ({process_count}): each host loads batch_size // process_count rows."
    )
  return batch_size // process_count


def _tokenize(record: dict, tokenizer: tokenizers.Tokenizer) -> dict[str, np.ndarray]:
  ids = tokenizer.encode(record["text"])
  tokens = np.empty(len(ids) + 2, dtype=np.int32)
  tokens[0], tokens[1:-1], tokens[-1] = tokenizer.bos_id, ids, tokenizer.eos_id
  return {"tokens": tokens}


def _check_packed_length(packed_length: int) -> int:
  if int(packed_length) < 2:
    raise ValueError(f"packed_length={packed_length} must be >= 2 (e.g. config.data.seq_len + 1 for next-token targets).")
  return int(packed_length)


def _packed_rows(docs: grain.IterDataset, config, packed_length: int, transforms: Sequence[Transform]) -> grain.IterDataset:
  """Packs token documents into rows of packed_length and applies the extra transforms."""
  rows = packing.concat_then_split(docs, packed_length)
  rows = rows.map(functools.partial(packing.packed_example, use_segment_ids=bool(config.data.segment_ids)))
  for i, transform in enumerate(transforms):
    if isinstance(transform, grain.transforms.RandomMap):
      # Seeded by the element count, so random transforms (e.g. masking) resume exactly too.
      rows = rows.random_map(transform, seed=(int(config.seed) + 1 + i) % 2**32)
    else:
      rows = rows.map(transform)
  return rows


def make_train_dataset(
    config,
    tokenizer: tokenizers.Tokenizer,
    *,
    process_index: int,
    process_count: int,
    packed_length: int,
    transforms: Sequence[Transform] = (),
) -> grain.IterDataset:
  """Endless host-local batches {'tokens', 'segment_ids', 'positions'}: int32 (B_local, L).

  B_local = config.train.batch_size // process_count, L = packed_length. `transforms` are
  applied to each packed row (a dict of (L,) arrays) before batching; a
  grain.transforms.RandomMap gets a seeded generator. Iterate with `iter(...)`; the iterator
  has get_state / set_state for grain.checkpoint.CheckpointSave / CheckpointRestore.
  """
  packed_length = _check_packed_length(packed_length)
  batch_size = local_batch_size(config, process_count)
  split = config.data.train_split
  ds = shard_for_process(sources.open_split(config.data, split), process_index, process_count)
  if len(ds) == 0:
    raise ValueError(
        f"training split {split!r} (config.data.train_split) of {sources.describe_dataset(config.data)} "
        f"has no records for process {process_index} of {process_count}."
    )
  if config.data.shuffle:
    # Shuffling before repeat: the shuffle sees the epoch in the index and reorders each epoch.
    ds = ds.shuffle(seed=int(config.seed) % 2**32)
  ds = ds.repeat()
  docs = ds.map(functools.partial(_tokenize, tokenizer=tokenizer)).to_iter_dataset(_READ_OPTIONS)
  rows = _packed_rows(docs, config, packed_length, transforms)
  if config.data.shuffle and config.data.shuffle_window > 1:
    # Packing emits a long document as consecutive rows; without this a batch would be a few
    # neighbouring slices of one or two files, and gradients correlated from step to step.
    rows = grain.experimental.WindowShuffleIterDataset(
        rows, window_size=int(config.data.shuffle_window), seed=(int(config.seed) + 7919) % 2**32)
  batches = batching.prefetched(rows.batch(batch_size, drop_remainder=True), config.data.prefetch)
  return batches


def _zeros_like(tree: dict) -> dict:
  return {k: np.zeros_like(v) for k, v in tree.items()}


def _pad_rows(batch: dict, batch_size: int) -> dict:
  """Zero rows appended so the batch has batch_size rows (segment id 0: ignored by losses)."""
  missing = batch_size - len(next(iter(batch.values())))
  if missing == 0:
    return batch
  return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


def make_eval_batches(
    config,
    tokenizer: tokenizers.Tokenizer,
    *,
    process_index: int,
    process_count: int,
    packed_length: int,
    transforms: Sequence[Transform] = (),
) -> list[dict[str, np.ndarray]]:
  """The fixed validation set: exactly config.data.eval_batches host-local batches.

  Validation split in a fixed order (no repeat), packed like training. Every host packs the same
  global stream and keeps its own rows of each global batch (rows p*B_local ... of host p, as
  `fmjax.parallel.global_batch` assembles them), so the eval set, and the metrics of given
  params, are the same whatever the process count. Each host reads the whole eval set for that:
  it is small (eval_batches global batches), and where packing cuts rows depends on every earlier
  document. Every host returns the same number of batches of the same shapes (needed: all hosts
  run each eval step together); where the split runs out, rows and batches are zero (segment id
  0), which losses ignore.
  """
  packed_length = _check_packed_length(packed_length)
  batch_size = local_batch_size(config, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  global_size = batch_size * process_count
  num_batches = int(config.data.eval_batches)
  if num_batches < 1:
    raise ValueError(f"config.data.eval_batches={num_batches} must be >= 1.")
  split = config.data.eval_split
  full = sources.open_split(config.data, split)
  if len(full) == 0:
    raise ValueError(
        f"validation split {split!r} (config.data.eval_split) of {sources.describe_dataset(config.data)} is "
        "empty. For text files set config.data.eval_files, or config.data.eval_fraction > 0 with files of "
        "more than one line."
    )
  # A fixed order drawn once (seed 0, whatever config.seed is): the eval set spans the whole
  # split instead of its first few documents, and runs with different seeds see the same set.
  docs = full.shuffle(seed=0).map(functools.partial(_tokenize, tokenizer=tokenizer)).to_iter_dataset(_READ_OPTIONS)
  rows = _packed_rows(docs, config, packed_length, transforms).batch(global_size, drop_remainder=False)
  own = slice(process_index * batch_size, (process_index + 1) * batch_size)
  batches = []
  iterator = iter(rows)
  try:
    for batch in iterator:
      # A copy, so the other hosts' rows of the global batch are not kept alive by a view.
      batches.append({k: v[own].copy() for k, v in _pad_rows(batch, global_size).items()})
      if len(batches) == num_batches:
        break
  finally:
    iterator.close()
  # A non-empty split packs into at least one row, so batches[0] exists.
  return batches + [_zeros_like(batches[0]) for _ in range(num_batches - len(batches))]
