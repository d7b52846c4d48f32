"""Packing documents into rows: grain's concat-then-split, per-row segment ids and positions.

grain's ConcatThenSplit numbers the documents of each row 1, 2, ... (0 = padding) but counts
positions from the start of the original document, so a document continued from the previous
row starts at, say, 700 in a 128-token row: out of range for learned position embeddings, and
a position the model never sees at training time for that row. Positions are recomputed here
to restart at 0 at the start of every row and every segment.
"""

import grain
import numpy as np


def restart_positions(segment_ids: np.ndarray) -> np.ndarray:
  """Position of each token within its segment of the row; 0 at padding (segment id 0)."""
  segment_ids = np.asarray(segment_ids)
  index = np.arange(segment_ids.shape[-1])
  starts = np.ones(segment_ids.shape, dtype=bool)
  starts[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
  # For each token, the index where its segment started: the running max of start indices.
  segment_start = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
  return np.where(segment_ids > 0, index - segment_start, 0).astype(np.int32)


def packed_example(example: dict, use_segment_ids: bool) -> dict[str, np.ndarray]:
  """Turns ConcatThenSplit's {'tokens', 'tokens_segment_ids', ...} into the batch features.

  With use_segment_ids=False the row is one sequence (attention may cross documents):
  segment id 1 for every token, 0 at padding, and positions 0..L-1.
  """
  tokens = np.asarray(example["tokens"], dtype=np.int32)
  segment_ids = np.asarray(example["tokens_segment_ids"], dtype=np.int32)
  if use_segment_ids:
    positions = restart_positions(segment_ids)
  else:
    segment_ids = (segment_ids > 0).astype(np.int32)
    positions = np.arange(tokens.shape[-1], dtype=np.int32)
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


class _JsonSafeStateIterator(grain.DatasetIterator):
  """Checkpoints store iterator states as JSON, which turns the tuples in ConcatThenSplit's
  state into lists; grain then compares `[-1, -1] != (-1, -1)`, takes an empty remainder for a
  real one, and resumes one document off. Tuples are restored before the state goes back."""

  def __init__(self, inner: grain.DatasetIterator):
    super().__init__()
    self._inner = inner

  def __next__(self):
    return next(self._inner)

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    state = dict(state)
    state["remainder_slices"] = {k: tuple(v) for k, v in state["remainder_slices"].items()}
    self._inner.set_state(state)

  def close(self):
    self._inner.close()


class _ConcatThenSplit(grain.IterDataset):
  def __init__(self, docs: grain.IterDataset, packed_length: int):
    super().__init__(docs)
    self._packed = grain.experimental.ConcatThenSplitIterDataset(docs, length_struct={"tokens": packed_length})

  def __iter__(self):
    return _JsonSafeStateIterator(iter(self._packed))


def concat_then_split(docs: grain.IterDataset, packed_length: int) -> grain.IterDataset:
  """grain's ConcatThenSplit packing of {'tokens'} documents into rows of packed_length, with a
  state that survives the JSON round trip of a checkpoint."""
  return _ConcatThenSplit(docs, packed_length)
