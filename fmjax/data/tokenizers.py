"""Tokenizers: bytes, or a SentencePiece model trained on the training split.

Both share one id layout for the special tokens, so objectives can rely on it:
  pad=0  bos=1  eos=2  unk=3  mask=4
BERT-style objectives use them as [PAD] [CLS] [SEP] [UNK] [MASK]. Padding must be id 0 because
packed and eval batches are zero-filled.
"""

import abc
import json

from absl import logging
import numpy as np
import sentencepiece as spm

from fmjax import paths
from fmjax.data import building
from fmjax.data import hashing
from fmjax.data import sentencepiece_training
from fmjax.data import sources

PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
MIN_SENTENCEPIECE_VOCAB = 512  # 5 specials + 256 byte-fallback pieces + room for real pieces
# Characters of training text sampled for SentencePiece: enough for a good vocabulary, while
# training stays around ten seconds per 4M characters on a few cores.
SENTENCEPIECE_TRAINING_CHARS = 8_000_000
_CONFIG_FILE = "tokenizer.json"
_MODEL_FILE = "tokenizer.model"


class Tokenizer(abc.ABC):
  """The interface the pipeline, objectives and inference tools rely on."""

  kind: str
  vocab_size: int
  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  unk_id = UNK_ID
  mask_id = MASK_ID

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id)

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """int32 ids of `text`, no special tokens added."""

  @abc.abstractmethod
  def decode(self, ids) -> str:
    """The text of `ids`; special and out-of-range ids are dropped."""

  @abc.abstractmethod
  def token_byte_lengths(self) -> np.ndarray:
    """int32 (vocab_size,): UTF-8 bytes of text each id stands for (0 for specials).

    Summed over the ids of a text it gives the text's byte length, which turns a loss in nats
    per token into bits per byte, comparable across tokenizers.
    """


class ByteTokenizer(Tokenizer):
  """One token per UTF-8 byte: id = 5 + byte value. vocab_size = 261."""

  kind = "byte"
  _OFFSET = 5

  def __init__(self):
    self.vocab_size = self._OFFSET + 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self._OFFSET

  def decode(self, ids) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    ids = ids[(ids >= self._OFFSET) & (ids < self.vocab_size)]
    # A sampled sequence may stop inside a multi-byte character: show U+FFFD, do not fail.
    return bytes((ids - self._OFFSET).astype(np.uint8)).decode("utf-8", errors="replace")

  def token_byte_lengths(self) -> np.ndarray:
    lengths = np.ones(self.vocab_size, dtype=np.int32)
    lengths[: self._OFFSET] = 0
    return lengths


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model from sentencepiece_training (byte fallback, fixed special ids).

  `vocab_size` may exceed the model's piece count (a small corpus may yield fewer pieces than
  asked for); the extra ids are never produced, decode to nothing and have byte length 0.
  """

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, vocab_size: int | None = None):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self._num_pieces = self._sp.get_piece_size()
    self.vocab_size = self._num_pieces if vocab_size is None else int(vocab_size)
    if self.vocab_size < self._num_pieces:
      raise ValueError(f"vocab_size={self.vocab_size} is smaller than the model's {self._num_pieces} pieces.")
    found = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id(),
             self._sp.piece_to_id(sentencepiece_training.MASK_PIECE))
    if found != self.special_ids:
      raise ValueError(
          f"SentencePiece model has special ids (pad, bos, eos, unk, mask)={found}, expected "
          f"{self.special_ids}; train it with fmjax.data.sentencepiece_training."
      )

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    keep = (ids > max(self.special_ids)) & (ids < self._num_pieces)
    return self._sp.decode(ids[keep].tolist())

  def token_byte_lengths(self) -> np.ndarray:
    lengths = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(max(self.special_ids) + 1, self._num_pieces):
      if self._sp.is_byte(i):
        lengths[i] = 1
      elif not (self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i)):
        lengths[i] = len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths


def save_tokenizer(tokenizer: Tokenizer, directory: str) -> None:
  """Writes `tokenizer.json` (and `tokenizer.model` for SentencePiece) into `directory`.

  A run's workdir keeps these so that inference tools reload the exact tokenizer without
  the dataset or the tokenizer cache.
  """
  paths.makedirs(directory)
  meta = {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "special_ids": {
      "pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id,
      "unk": tokenizer.unk_id, "mask": tokenizer.mask_id}}
  if isinstance(tokenizer, SentencePieceTokenizer):
    paths.write_atomically(paths.join(directory, _MODEL_FILE), tokenizer.model_proto)
    meta["model_file"] = _MODEL_FILE
  elif not isinstance(tokenizer, ByteTokenizer):
    raise TypeError(f"cannot save a {type(tokenizer).__name__}")
  paths.write_atomically(paths.join(directory, _CONFIG_FILE), json.dumps(meta, indent=2).encode())


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer that save_tokenizer wrote into `directory`."""
  path = paths.join(directory, _CONFIG_FILE)
  if not paths.exists(path):
    raise FileNotFoundError(f"no {_CONFIG_FILE} in {directory!r}: not a directory written by save_tokenizer.")
  meta = json.loads(paths.read_text(path))
  if meta.get("kind") == "byte":
    return ByteTokenizer()
  if meta.get("kind") == "sentencepiece":
    model_proto = paths.read_bytes(paths.join(directory, meta["model_file"]))
    return SentencePieceTokenizer(model_proto, vocab_size=meta["vocab_size"])
  raise ValueError(f"{path}: unknown tokenizer kind {meta.get('kind')!r}; expected 'byte' or 'sentencepiece'.")


def sentencepiece_cache_path(data_config, describe_dataset=None) -> str:
  """Where the SentencePiece model for this dataset and vocab size is cached."""
  cache_dir = data_config.tokenizer_dir or paths.join(building.resolve_data_dir(data_config), "fmjax_tokenizers")
  identity = (describe_dataset or sources.describe_dataset)(data_config)
  name = f"sentencepiece-v{data_config.vocab_size}-{hashing.fingerprint(identity, SENTENCEPIECE_TRAINING_CHARS)}.model"
  return paths.join(paths.absolute(cache_dir), name)


def make_tokenizer(data_config, sample_texts=None, describe_dataset=None) -> Tokenizer:
  """The tokenizer config.data.tokenizer names; SentencePiece is trained once and cached.

  SentencePiece trains on `sample_texts(data_config, max_chars, seed=)` and is cached under a
  name derived from `describe_dataset(data_config)`; both default to the text corpus readers
  (`fmjax.data.sources`), a paradigm with other data (captions) passes its own."""
  if data_config.tokenizer == "byte":
    return ByteTokenizer()
  if data_config.tokenizer != "sentencepiece":
    raise ValueError(f"config.data.tokenizer={data_config.tokenizer!r}: expected 'byte' or 'sentencepiece'.")
  vocab_size = int(data_config.vocab_size)
  if vocab_size < MIN_SENTENCEPIECE_VOCAB:
    raise ValueError(
        f"config.data.vocab_size={vocab_size}: tokenizer='sentencepiece' needs at least "
        f"{MIN_SENTENCEPIECE_VOCAB} (5 special ids + 256 byte-fallback ids + learned pieces), e.g. 8192."
    )
  path = sentencepiece_cache_path(data_config, describe_dataset)
  if not paths.exists(path):
    with building.file_lock(path + ".lock"):
      if not paths.exists(path):  # another process may have trained it while we waited
        logging.info("Training a SentencePiece model (vocab %d) into %s.", vocab_size, path)
        texts = (sample_texts or sources.sample_texts)(data_config, SENTENCEPIECE_TRAINING_CHARS, seed=0)
        paths.write_atomically(path, sentencepiece_training.train(texts, vocab_size))
  return SentencePieceTokenizer(paths.read_bytes(path), vocab_size=vocab_size)


class StandInTokenizer(Tokenizer):
  """A vocabulary size and the special ids, with no model behind them: what benchmarks and AOT
  compilation need to size a model without preparing data or training a tokenizer."""

  kind = "stand_in"

  def __init__(self, vocab_size: int):
    self.vocab_size = int(vocab_size)

  def encode(self, text: str) -> np.ndarray:
    raise NotImplementedError("a stand-in tokenizer only sizes models; it cannot encode text")

  def decode(self, ids) -> str:
    raise NotImplementedError("a stand-in tokenizer only sizes models; it cannot decode ids")

  def token_byte_lengths(self) -> np.ndarray:
    lengths = np.ones((self.vocab_size,), np.int32)
    lengths[list(self.special_ids)] = 0
    return lengths
