"""Prepared tfds catalog datasets (e.g. 'lm1b', 'wiki40b/en:1.3.0') read without TensorFlow.

Reading goes through tfds' random-access data sources, which need the dataset prepared in the
ArrayRecord format. Preparing a catalog dataset usually needs TensorFlow (and a download), so
it is a separate, one-off step; this module only explains how when the data is missing.
"""

import tensorflow_datasets as tfds


def prepare_command(name: str, data_dir: str) -> str:
  return f"tfds build {name} --data_dir {data_dir} --file_format=array_record"


def _not_prepared(name: str, data_dir: str, reason: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"config.data.dataset={name!r}: {reason} in data dir {data_dir!r} "
      "(config.data.data_dir, else $FMJAX_DATA_DIR, else ~/tensorflow_datasets). "
      f"Prepare it once with:\n  {prepare_command(name, data_dir)}\n"
      "(this step needs TensorFlow and network access; training then reads it without either), "
      "or set config.data.data_dir to where it is already prepared. "
      "config.data.dataset='default' uses the offline built-in corpus instead."
  )


def open_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """A builder for `name` whose ArrayRecord files exist under `data_dir`, or a clear error."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _not_prepared(name, data_dir, "not a tfds catalog name (check the spelling) and no prepared copy") from None
  except ValueError as e:  # e.g. an unknown config or version
    raise ValueError(f"config.data.dataset={name!r}: {e}") from None
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, f"not prepared (nothing at {builder.data_dir!r})")
  random_access = {tfds.core.FileFormat.ARRAY_RECORD, tfds.core.FileFormat.PARQUET}
  if not random_access & builder.info.available_file_formats():
    fmt = builder.info.file_format.value if builder.info.file_format else "an unknown format"
    raise _not_prepared(name, data_dir, f"prepared only as {fmt}, which has no random access,")
  return builder


def feature(builder: tfds.core.DatasetBuilder, field: str, key: str, hint: str):
  """The feature `key` of the dataset, or a ValueError naming config.data.<field> and the
  features there are."""
  features = builder.info.features
  keys = list(features.keys()) if hasattr(features, "keys") else []
  if key not in keys:
    raise ValueError(f"config.data.{field}={key!r} is not a feature of {builder.info.full_name}; "
                     f"its features are {keys}. {hint}")
  return features[key]


def text_feature(builder: tfds.core.DatasetBuilder, text_key: str) -> str:
  """Checks that `text_key` names a feature of the dataset, and returns it."""
  feature(builder, "text_key", text_key, "Set config.data.text_key to the one holding the text.")
  return text_key
