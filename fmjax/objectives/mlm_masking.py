"""BERT's masking recipe for one packed row, on the host, as a grain RandomMap.

Per row (a packed sequence of `seq_len` tokens):
  * maskable tokens are the non-special ones of real documents (not [PAD]/[CLS]/[SEP]/[UNK]/[MASK],
    not padding);
  * exactly round(mask_rate * n_maskable) of them are selected (half rounds up); with whole-word
    masking, whole words are selected in random order, skipping a word that would overshoot
    (Google's BERT recipe), so the count is at most that and nearly always exactly it;
  * each selected token independently becomes [MASK] with probability `mask_fraction` (0.8), a
    random real token with probability `random_fraction` (0.1), and stays otherwise (0.1).

The generator comes from grain (seeded by config.seed and the row's index in the stream), so
masks are drawn afresh each epoch, and a resumed iterator draws exactly the masks an
uninterrupted one would.
"""

import math
from typing import Optional, Sequence

import grain
import numpy as np
import sentencepiece as spm

from fmjax.data import tokenizers

WORD_START = "\u2581"  # SentencePiece's space marker: a piece starting with it begins a word


def num_to_mask(num_maskable: int, mask_rate: float) -> int:
  """round(mask_rate * num_maskable), half up (numpy's round would go to even)."""
  return int(math.floor(mask_rate * num_maskable + 0.5))


def maskable(tokens_T: np.ndarray, segment_ids_T: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
  return (segment_ids_T > 0) & ~np.isin(tokens_T, np.asarray(special_ids))


def select_tokens(maskable_T: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` maskable slots, uniformly without replacement."""
  chosen = rng.choice(np.flatnonzero(maskable_T), size=count, replace=False)
  selected_T = np.zeros_like(maskable_T)
  selected_T[chosen] = True
  return selected_T


def word_ids(maskable_T: np.ndarray, word_start_T: np.ndarray) -> np.ndarray:
  """Index of the word each maskable token belongs to (-1 elsewhere). A word starts at a piece
  marked as a word start, or at the first maskable token after a non-maskable one (a document
  start, or a row start inside a document)."""
  after_gap_T = np.ones_like(maskable_T)
  after_gap_T[1:] = ~maskable_T[:-1]
  starts_T = maskable_T & (word_start_T | after_gap_T)
  return np.where(maskable_T, np.cumsum(starts_T) - 1, -1)


def select_whole_words(maskable_T: np.ndarray, word_start_T: np.ndarray, count: int,
                       rng: np.random.Generator) -> np.ndarray:
  """Whole words in random order until `count` tokens are selected; a word that would overshoot
  is skipped, so the total is at most `count`, and short of it only when no remaining word fits
  the gap (rare: most words are one or two pieces)."""
  ids_T = word_ids(maskable_T, word_start_T)
  sizes = np.bincount(ids_T[maskable_T], minlength=0)
  chosen, total = [], 0
  for word in rng.permutation(len(sizes)):
    if total == count:
      break
    if total + sizes[word] <= count:
      chosen.append(word)
      total += int(sizes[word])
  return maskable_T & np.isin(ids_T, np.asarray(chosen, dtype=ids_T.dtype))


def corrupt(tokens_T: np.ndarray, selected_T: np.ndarray, rng: np.random.Generator, *, mask_id: int,
            random_ids: np.ndarray, mask_fraction: float, random_fraction: float) -> np.ndarray:
  """The model's input: selected tokens -> [MASK] / a random token / unchanged (80/10/10)."""
  # Draws for every slot, not only the selected ones: one vectorised call each, no gathers.
  u_T = rng.random(tokens_T.shape)
  replacement_T = random_ids[rng.integers(0, len(random_ids), tokens_T.shape)]
  inputs_T = np.where(selected_T & (u_T < mask_fraction), mask_id, tokens_T)
  use_random_T = selected_T & (u_T >= mask_fraction) & (u_T < mask_fraction + random_fraction)
  return np.where(use_random_T, replacement_T, inputs_T).astype(np.int32)


def random_token_ids(tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """Ids a random replacement may take: those that stand for text (no specials, no unused ids)."""
  ids = np.flatnonzero(np.asarray(tokenizer.token_byte_lengths()) > 0).astype(np.int32)
  if len(ids) == 0:
    raise ValueError(f"tokenizer {tokenizer.kind!r} has no ids that stand for text")
  return ids


def word_start_table(tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """bool (vocab_size,): ids whose SentencePiece piece begins a word ('\u2581' first)."""
  if not isinstance(tokenizer, tokenizers.SentencePieceTokenizer):
    raise ValueError(f"whole-word masking needs a SentencePiece vocabulary, not a {tokenizer.kind!r} tokenizer "
                     "(config.data.tokenizer='sentencepiece')")
  sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
  table = np.zeros(tokenizer.vocab_size, dtype=bool)
  for i in range(sp.get_piece_size()):
    table[i] = sp.id_to_piece(i).startswith(WORD_START)
  return table


class MlmMasking(grain.transforms.RandomMap):
  """Packed row {'tokens', 'segment_ids', 'positions'} -> a masked-LM example:

    inputs        the corrupted tokens the model reads
    targets       the original tokens
    weights       1.0 at the selected (to be predicted) slots, else 0
    positions, segment_ids   passed through (segment ids also mark padding: 0)
    mask_positions, mask_weights   (max_predictions > 0) the selected slots, padded to a fixed
                  count so a sparse head gathers a static (B, K) set of positions
  """

  def __init__(self, *, special_ids: Sequence[int], mask_id: int, random_ids: np.ndarray, mask_rate: float,
               mask_fraction: float = 0.8, random_fraction: float = 0.1,
               word_start: Optional[np.ndarray] = None, max_predictions: int = 0):
    self.special_ids = tuple(int(i) for i in special_ids)
    self.mask_id = int(mask_id)
    self.random_ids = np.asarray(random_ids, dtype=np.int32)
    self.mask_rate = float(mask_rate)
    self.mask_fraction = float(mask_fraction)
    self.random_fraction = float(random_fraction)
    self.word_start = word_start
    self.max_predictions = int(max_predictions)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    tokens_T = np.asarray(element["tokens"], dtype=np.int32)
    segment_ids_T = np.asarray(element["segment_ids"], dtype=np.int32)
    maskable_T = maskable(tokens_T, segment_ids_T, self.special_ids)
    count = num_to_mask(int(maskable_T.sum()), self.mask_rate)
    if self.word_start is None:
      selected_T = select_tokens(maskable_T, count, rng)
    else:
      selected_T = select_whole_words(maskable_T, self.word_start[tokens_T], count, rng)
    out = {
        "inputs": corrupt(tokens_T, selected_T, rng, mask_id=self.mask_id, random_ids=self.random_ids,
                          mask_fraction=self.mask_fraction, random_fraction=self.random_fraction),
        "targets": tokens_T,
        "weights": selected_T.astype(np.float32),
        "positions": np.asarray(element["positions"], dtype=np.int32),
        "segment_ids": segment_ids_T,
    }
    if self.max_predictions:
      slots = np.flatnonzero(selected_T)
      if len(slots) > self.max_predictions:
        raise ValueError(f"{len(slots)} masked tokens in a row exceed config.mlm.max_predictions="
                         f"{self.max_predictions}")
      out["mask_positions"] = np.zeros(self.max_predictions, np.int32)
      out["mask_positions"][: len(slots)] = slots
      out["mask_weights"] = (np.arange(self.max_predictions) < len(slots)).astype(np.float32)
    return out
