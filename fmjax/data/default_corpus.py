"""The offline default corpus: Python's standard library sources and the pydoc topics.

It needs no download and builds in seconds, so every config works out of the box. The
documents are the `.py` files of the running interpreter's standard library (tests, IDLE's
tests and site-packages left out: they are bulky and repetitive) and each help topic of
`pydoc_data.topics` as its own document. The builder config is named after the Python
version because another interpreter ships other files.
"""

import os
import sys
import sysconfig
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from fmjax.data import hashing
from fmjax.data import text_chunks

VALIDATION_FRACTION = 0.05
# Folder names never entered. pydoc_data holds topics.py, whose text is added topic by topic.
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"})


def config_name() -> str:
  v = sys.version_info
  return f"py{v.major}_{v.minor}_{v.micro}"


def documents() -> Iterator[tuple[str, str]]:
  """Yields (doc_id, text) in a fixed order: stdlib files by relative path, then topics."""
  root = sysconfig.get_paths()["stdlib"]
  for folder, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("."))
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path, "rb") as handle:
          # A few old modules are not UTF-8; a replacement character beats dropping them.
          text = handle.read().decode("utf-8", errors="replace")
        yield os.path.relpath(path, root), text
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  for topic in sorted(topics.topics):
    yield f"topic:{topic}", topics.topics[topic]


def split_of(doc_id: str) -> str:
  """'validation' for a stable ~5% of documents, decided by the id alone (no leak)."""
  return "validation" if hashing.unit_interval(doc_id) < VALIDATION_FRACTION else "train"


class FmjaxDefaultCorpus(tfds.core.GeneratorBasedBuilder):
  """Python stdlib sources + pydoc topics; records of <=16k characters cut at line ends."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name(), description="this interpreter's stdlib")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,  # needed because this module is not in a tfds dataset folder
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "id": tfds.features.Text(),  # relative path, or topic:<name>
            "part": tfds.features.Scalar(dtype=np.int32),  # index of the record within its doc
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples("train"), "validation": self._generate_examples("validation")}

  def _generate_examples(self, split: str):
    for doc_id, text in documents():
      if split_of(doc_id) != split:
        continue
      for part, piece in enumerate(text_chunks.split_at_lines(text)):
        yield f"{doc_id}#{part}", {"text": piece, "id": doc_id, "part": part}


def builder(data_dir: str) -> FmjaxDefaultCorpus:
  return FmjaxDefaultCorpus(data_dir=data_dir, file_format="array_record")
