"""What the text paradigms share: one tokenizer, trained (or found) once and copied into the run,
and a transformer stack sized by `config.model`.

`TextObjective` gives every text objective the same tokenizer handling (process 0 first on
multi-host runs, a copy under `workdir/tokenizer`) and the same model-field checks.
"""

import os

import jax
from jax.experimental import multihost_utils

from fmjax import data as fmdata
from fmjax.config_checks import ConfigError
from fmjax.models import transformer
from fmjax.objectives.base import Objective

POSITIONS = ("learned", "rotary")

TOKENIZER_DIR = "tokenizer"


def validate_tokenizer(data_config) -> None:
  if data_config.tokenizer not in ("byte", "sentencepiece"):
    raise ConfigError(f"config.data.tokenizer={data_config.tokenizer!r}: choose 'byte' or 'sentencepiece'")
  if data_config.tokenizer == "sentencepiece" and data_config.vocab_size < fmdata.MIN_SENTENCEPIECE_VOCAB:
    raise ConfigError(f"config.data.vocab_size={data_config.vocab_size}: a sentencepiece vocabulary needs "
                      f"at least {fmdata.MIN_SENTENCEPIECE_VOCAB} entries")


def prepare_tokenizer(config, workdir: str | None, **corpus) -> fmdata.Tokenizer:
  """`corpus`: sample_texts / describe_dataset for SentencePiece (see fmdata.make_tokenizer)."""
  if jax.process_count() > 1:
    # Process 0 trains (or finds) the tokenizer first; the others then load its cached copy
    # (data dirs on shared storage, as on TPU pods) instead of training their own.
    if jax.process_index() == 0:
      fmdata.make_tokenizer(config.data, **corpus)
    multihost_utils.sync_global_devices("fmjax tokenizer ready")
  tokenizer = fmdata.make_tokenizer(config.data, **corpus)
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


def validate_text_data(data_config) -> None:
  d = data_config
  for field in ("seq_len", "eval_batches"):
    if not (isinstance(d[field], int) and d[field] > 0):
      raise ConfigError(f"config.data.{field}={d[field]!r}: must be a positive integer")
  if d.shuffle_window < 0:
    raise ConfigError(f"config.data.shuffle_window={d.shuffle_window!r}: must be >= 0")


def validate_transformer(model_config) -> None:
  m = model_config
  if m.embed_dim % m.num_heads:
    raise ConfigError(f"config.model.embed_dim={m.embed_dim} must be divisible by "
                      f"config.model.num_heads={m.num_heads}")
  if m.positions not in POSITIONS:
    raise ConfigError(f"config.model.positions={m.positions!r}: choose one of {POSITIONS}")
  if m.positions == "rotary" and (m.embed_dim // m.num_heads) % 2:
    raise ConfigError(f"config.model.positions='rotary' needs an even head dimension, got "
                      f"embed_dim/num_heads = {m.embed_dim // m.num_heads}")


def stack_config(model_config) -> transformer.StackConfig:
  m = model_config
  return transformer.StackConfig(
      num_layers=m.num_layers, num_heads=m.num_heads, embed_dim=m.embed_dim, mlp_dim=m.mlp_dim,
      dropout=m.dropout, dtype=m.dtype, attention=m.attention, rotary=m.positions == "rotary",
      scan_layers=m.scan_layers, remat=m.remat)


class TextObjective(Objective):
  """An objective over tokenized text: the tokenizer is its asset."""

  def validate(self, config) -> None:
    validate_text_data(config.data)
    validate_transformer(config.model)
    validate_tokenizer(config.data)

  def prepare_assets(self, config, workdir):
    return prepare_tokenizer(config, workdir)

  def load_assets(self, config, workdir):
    return load_tokenizer(workdir)

  def stand_in_assets(self, config):
    return stand_in_tokenizer(config.data)
