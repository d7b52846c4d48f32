"""Opening a split of the configured dataset as a grain MapDataset of {'text': str}.

Three kinds of dataset, picked by the config:
  config.data.files != ''          the user's text files (built on first use; text_files.py)
  config.data.dataset == 'default' the offline stdlib corpus (built on first use; default_corpus.py)
  any other config.data.dataset    a tfds catalog dataset prepared as ArrayRecord (catalog.py)
All are read through tfds' random-access data sources, which need no TensorFlow.
"""

import functools
from collections.abc import Iterator

import grain
import tensorflow_datasets as tfds

from fmjax.data import building
from fmjax.data import catalog
from fmjax.data import default_corpus
from fmjax.data import text_files


def _kind(data_config) -> str:
  if data_config.files:
    return "files"
  if data_config.dataset == "default":
    return "default"
  if not data_config.dataset:
    raise ValueError(
        "config.data.dataset is empty and config.data.files is empty: set dataset to 'default' (the "
        "offline corpus) or a prepared tfds name such as 'lm1b', or files to a glob of text files."
    )
  return "catalog"


# Splits the builders of this package define; one missing from a prepared dataset had no
# examples (tfds writes no empty split) and reads as empty.
_OWN_SPLITS = ("train", "validation")


def _open_builder(data_config) -> tuple[tfds.core.DatasetBuilder, str]:
  """The prepared builder and the name of its text feature."""
  data_dir = building.resolve_data_dir(data_config)
  kind = _kind(data_config)
  if kind == "files":
    return building.prepared_builder(lambda: text_files.builder(data_config, data_dir)), "text"
  if kind == "default":
    return building.prepared_builder(lambda: default_corpus.builder(data_dir)), "text"
  builder = catalog.open_builder(data_config.dataset, data_dir)
  return builder, catalog.text_feature(builder, data_config.text_key)


def describe_dataset(data_config) -> str:
  """A string that names the training text exactly: equal strings mean equal text.

  Used to name cached tokenizers, so a tokenizer is reused only for the data it was trained on.
  """
  kind = _kind(data_config)
  if kind == "files":
    config = text_files.builder_config(data_config)  # named by a fingerprint of paths, sizes, mtimes
    name, key = f"fmjax_text_files/{config.name}:{config.version}", "text"
  elif kind == "default":
    name, key = f"fmjax_default_corpus/{default_corpus.config_name()}:{default_corpus.FmjaxDefaultCorpus.VERSION}", "text"
  else:
    builder, key = _open_builder(data_config)
    name = builder.info.full_name
  return f"{name} split={data_config.train_split} text_key={key}"


def _as_text(record, key: str) -> dict[str, str]:
  text = record[key]
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  elif not isinstance(text, str):
    raise TypeError(f"feature {key!r} holds {type(text).__name__}, not text; check config.data.text_key.")
  return {"text": text}


def open_split(data_config, split: str) -> grain.MapDataset:
  """The split as a grain MapDataset of {'text': str}, in the stored (fixed) order.

  `split` may be a tfds split expression such as 'train[:90%]'.
  """
  builder, key = _open_builder(data_config)
  available = list(builder.info.splits.keys())
  base = split.split("[")[0]
  if _kind(data_config) != "catalog" and base in _OWN_SPLITS and base not in available:
    return grain.MapDataset.source([])
  if "+" not in split and base not in available:
    raise ValueError(
        f"split {split!r} (config.data.train_split / config.data.eval_split) is not in "
        f"{builder.info.full_name}; its splits are {available}."
    )
  if base in available and builder.info.splits[base].num_examples == 0:
    return grain.MapDataset.source([])  # tfds has no files to open for an empty split
  source = builder.as_data_source(split=split)
  return grain.MapDataset.source(source).map(functools.partial(_as_text, key=key))


def sample_texts(data_config, max_chars: int, seed: int = 0) -> Iterator[str]:
  """Training-split texts in a seeded random order, stopping once `max_chars` are yielded.

  Random order (lazily, via grain's index shuffle, so a 30M-record split costs nothing up
  front) makes a capped sample represent the whole split rather than its first files.
  """
  ds = open_split(data_config, data_config.train_split)
  if len(ds) == 0:
    raise ValueError(f"the training split {data_config.train_split!r} of {describe_dataset(data_config)} is empty.")
  shuffled = ds.shuffle(seed=seed)
  total = 0
  for index in range(len(shuffled)):  # indexing reads exactly the records used, no read-ahead
    record = shuffled[index]
    yield record["text"]
    total += len(record["text"])
    if total >= max_chars:
      return
