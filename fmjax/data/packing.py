"""Per-row segment ids and positions for packed rows (pure numpy).

grain's ConcatThenSplit numbers the documents of each row 1, 2, ... (0 = padding) but counts
positions from the start of the original document, so a document continued from the previous
row starts at, say, 700 in a 128-token row: out of range for learned position embeddings, and
a position the model never sees at training time for that row. Positions are recomputed here
to restart at 0 at the start of every row and every segment.
"""

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
