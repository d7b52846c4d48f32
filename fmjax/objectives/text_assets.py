"""The assets of a text paradigm: one tokenizer, trained (or found) once, copied into the run.

Shared by the text objectives so that every one of them prepares, saves and reloads its
tokenizer the same way (process 0 first on multi-host runs, a copy under `workdir/tokenizer`).
"""

import os

import jax
from jax.experimental import multihost_utils

from fmjax import data as fmdata
from fmjax.config_checks import ConfigError

TOKENIZER_DIR = "tokenizer"


def validate_tokenizer(data_config) -> None:
  if data_config.tokenizer not in ("byte", "sentencepiece"):
    raise ConfigError(f"config.data.tokenizer={data_config.tokenizer!r}: choose 'byte' or 'sentencepiece'")
  if data_config.tokenizer == "sentencepiece" and data_config.vocab_size < fmdata.MIN_SENTENCEPIECE_VOCAB:
    raise ConfigError(f"config.data.vocab_size={data_config.vocab_size}: a sentencepiece vocabulary needs "
                      f"at least {fmdata.MIN_SENTENCEPIECE_VOCAB} entries")


def prepare_tokenizer(config, workdir: str | None) -> fmdata.Tokenizer:
  if jax.process_count() > 1:
    # Process 0 trains (or finds) the tokenizer first; the others then load its cached copy
    # (data dirs on shared storage, as on TPU pods) instead of training their own.
    if jax.process_index() == 0:
      fmdata.make_tokenizer(config.data)
    multihost_utils.sync_global_devices("fmjax tokenizer ready")
  tokenizer = fmdata.make_tokenizer(config.data)
  if workdir is not None and jax.process_index() == 0:
    fmdata.save_tokenizer(tokenizer, os.path.join(workdir, TOKENIZER_DIR))
  return tokenizer


def load_tokenizer(workdir: str) -> fmdata.Tokenizer:
  return fmdata.load_tokenizer(os.path.join(workdir, TOKENIZER_DIR))


def stand_in_tokenizer(data_config) -> fmdata.Tokenizer:
  if data_config.tokenizer == "sentencepiece":
    return fmdata.StandInTokenizer(data_config.vocab_size)
  return fmdata.ByteTokenizer()


def padded_vocab_size(tokenizer: fmdata.Tokenizer, multiple: int) -> int:
  """The embedding table's rows: the vocabulary rounded up so it shards and tiles evenly."""
  multiple = max(int(multiple), 1)
  return -(-tokenizer.vocab_size // multiple) * multiple
