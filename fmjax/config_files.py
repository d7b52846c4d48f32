"""Experiment configs read the way `fmjax.main --config FILE.py:VARIANT` reads them, without JAX.

The file is run as a module and its `get_config(VARIANT)` (or `get_config()` when no variant is
named) returns the ConfigDict. As in ml_collections' config flags, everything after the first
':' is the variant. Failures are ValueError naming the file, for a one-line `error:`.
"""

import importlib.util
import os

import ml_collections


def split_spec(spec: str) -> tuple[str, str | None]:
  """'experiments/gpt.py:tiny' -> ('experiments/gpt.py', 'tiny'); no ':' -> (path, None)."""
  path, sep, variant = spec.partition(":")
  return path, (variant if sep else None)


def load(spec: str) -> ml_collections.ConfigDict:
  path, variant = split_spec(spec)
  if not path:
    raise ValueError(f"--config {spec!r}: expected FILE.py or FILE.py:VARIANT")
  if not os.path.isfile(path):
    raise ValueError(f"--config {spec}: no such file {path!r}")
  module_spec = importlib.util.spec_from_file_location(f"sweep_config_{abs(hash(path))}", path)
  if module_spec is None or module_spec.loader is None:
    raise ValueError(f"--config {spec}: {path!r} is not a Python file")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the file is user code: say what broke)
    raise ValueError(f"--config {spec}: loading {path} failed: {type(e).__name__}: {e}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"--config {spec}: {path} defines no get_config()")
  try:
    config = module.get_config() if variant is None else module.get_config(variant)
  except ValueError as e:  # an unknown variant: the experiment's own message lists the choices
    raise ValueError(f"--config {spec}: {_without_file_prefix(str(e))}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--config {spec}: get_config failed: {type(e).__name__}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"--config {spec}: get_config returned {type(config).__name__}, not a ConfigDict")
  return config


def _without_file_prefix(message: str) -> str:
  # `apply_variant` starts its message with the experiment's file name, which the --config
  # prefix already shows.
  head, sep, rest = message.partition(": ")
  return rest if sep and head.endswith(".py") else message
