"""Training a SentencePiece model for this package's fixed special-token layout.

Settings chosen so that the model is lossless on arbitrary text (code included):
  * byte_fallback: characters outside the vocabulary become <0xNN> byte pieces, never <unk>;
  * identity normalisation, no dummy prefix, no whitespace collapsing: decode(encode(s)) == s
    (except the character U+2581, which SentencePiece uses to stand for a space);
  * fixed ids pad=0, bos=1, eos=2, unk=3, then the user-defined '[MASK]' = 4.
"""

import io
import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from fmjax.data import text_chunks

MASK_PIECE = "[MASK]"
# SentencePiece drops training "sentences" longer than max_sentence_length bytes, so texts are
# fed in pieces of at most this many characters (<= 4 bytes each in UTF-8, below the limit).
_PIECE_CHARS = 4000
_MAX_SENTENCE_BYTES = 4 * _PIECE_CHARS + 64


def _pieces(texts: Iterable[str]) -> Iterator[str]:
  for text in texts:
    yield from text_chunks.split_at_lines(text, _PIECE_CHARS)


def train(texts: Iterable[str], vocab_size: int) -> bytes:
  """Trains a unigram model on `texts` and returns the serialized model."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_pieces(texts),
      model_writer=model,
      vocab_size=vocab_size,
      model_type="unigram",
      pad_id=0,
      bos_id=1,
      eos_id=2,
      unk_id=3,
      user_defined_symbols=[MASK_PIECE],
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,  # runs of indentation become single pieces
      split_digits=True,
      character_coverage=0.9995,  # rare characters are left to byte fallback
      max_sentence_length=_MAX_SENTENCE_BYTES,
      input_sentence_size=1_000_000,
      shuffle_input_sentence=True,
      train_extremely_large_corpus=False,
      # A small corpus may not support the requested number of pieces; take what it gives
      # (the tokenizer still reports the requested vocab_size; the ids above are unused).
      hard_vocab_limit=False,
      num_threads=min(16, os.cpu_count() or 1),
      minloglevel=2,  # warnings and errors only
  )
  return model.getvalue()
