"""The user's own text files (`config.data.files`) as a tfds dataset.

Files are cut into records of <=16k characters at line ends, so that shuffling mixes even a
single large file. Validation is `config.data.eval_files` when given, else the last
`config.data.eval_fraction` of each file (a contiguous tail, cut at a line end, so no line is
in both splits). The builder config is named by a fingerprint of the matched paths, sizes and
modification times: edited or added files give a new name, hence a rebuild.
"""

import dataclasses
import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from fmjax.data import hashing
from fmjax.data import text_chunks


def match_files(patterns: str, field: str) -> tuple[str, ...]:
  """Expands comma-separated globs (`**` allowed) into sorted, unique absolute file paths.

  Each glob must match at least one file: a typo would otherwise silently drop data.
  """
  paths: set[str] = set()
  for pattern in (p.strip() for p in patterns.split(",")):
    if not pattern:
      continue
    matched = [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)]
    if not matched:
      raise FileNotFoundError(
          f"{field}={patterns!r}: the glob {pattern!r} matches no files. Give an existing path or a "
          "glob such as '/data/corpus/*.txt' (several globs may be separated by commas)."
      )
    paths.update(os.path.abspath(p) for p in matched)
  if not paths:
    raise ValueError(f"{field}={patterns!r} names no glob; give a path or glob of text files.")
  return tuple(sorted(paths))


def _file_identity(paths: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
  return tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  files: tuple[str, ...] = ()
  eval_files: tuple[str, ...] = ()
  eval_fraction: float = 0.05


def builder_config(data_config) -> TextFilesConfig:
  """Resolves the globs of `data_config` into a config named by the files' fingerprint."""
  files = match_files(data_config.files, "config.data.files")
  eval_files = match_files(data_config.eval_files, "config.data.eval_files") if data_config.eval_files else ()
  fraction = float(data_config.eval_fraction)
  if not eval_files and not 0.0 <= fraction < 1.0:
    raise ValueError(f"config.data.eval_fraction={fraction} must be in [0, 1) (0 = no validation split).")
  # A file matched by both globs is used for validation only; training on it would leak.
  files = tuple(p for p in files if p not in set(eval_files))
  if not files:
    raise ValueError("config.data.files matches only files that config.data.eval_files also matches: nothing to train on.")
  if eval_files:
    fraction = 0.0
  name = "f" + hashing.fingerprint(_file_identity(files), _file_identity(eval_files), fraction, text_chunks.RECORD_CHARS)
  return TextFilesConfig(
      name=name,
      version="1.0.0",
      description=f"{len(files)} training files, {len(eval_files)} validation files",
      files=files,
      eval_files=eval_files,
      eval_fraction=fraction,
  )


def _read(path: str) -> str:
  with open(path, "rb") as handle:
    return handle.read().decode("utf-8", errors="replace")


class FmjaxTextFiles(tfds.core.GeneratorBasedBuilder):
  """Records of <=16k characters from the user's text files."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "id": tfds.features.Text(),  # the file's path
            "part": tfds.features.Scalar(dtype=np.int32),  # index of the record within its file
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    config: TextFilesConfig = self.builder_config
    # tfds cannot write a split without examples, so an empty one is left out (sources.py
    # reads a missing split of this builder as empty). Costs one extra read of the files.
    splits = [s for s in ("train", "validation") if any(text for _, text in _split_texts(config, s))]
    if "train" not in splits:
      raise ValueError(f"config.data.files: the matched files {list(config.files)} hold no text to train on.")
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split: str):
    # Keys (which fix tfds' stored order) name files by their place in the sorted match, not by
    # path: the same files give the same order wherever they live.
    for ordinal, (path, text) in enumerate(_split_texts(self.builder_config, split)):
      for part, piece in enumerate(text_chunks.split_at_lines(text)):
        yield f"{split}:{ordinal:09d}#{part}", {"text": piece, "id": path, "part": part}


def _split_texts(config: TextFilesConfig, split: str):
  """Yields (path, text of that file in `split`)."""
  if config.eval_files:
    for path in config.files if split == "train" else config.eval_files:
      yield path, _read(path)
    return
  for path in config.files:
    text = _read(path)
    cut = text_chunks.tail_cut(text, config.eval_fraction)
    yield path, text[:cut] if split == "train" else text[cut:]


def builder(data_config, data_dir: str) -> FmjaxTextFiles:
  return FmjaxTextFiles(config=builder_config(data_config), data_dir=data_dir, file_format="array_record")
