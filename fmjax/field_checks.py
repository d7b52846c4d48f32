"""The primitives of config validation, importable without loading models or JAX.

Every check names the field, the value and what is allowed: `config.data.text_len=2: must be an
integer >= 3 (BOS, a token, EOS)`. `fmjax.config_checks` validates whole runs with these.
"""

from collections.abc import Callable

import numpy as np


class ConfigError(ValueError):
  pass


def is_int(value) -> bool:
  """An integer (Python or NumPy), not a bool."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
  """An int or a float (Python or NumPy), not a bool."""
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check(ok: bool, field: str, value, allowed: str) -> None:
  """Raises ConfigError `config.<field>=<value>: <allowed>` unless `ok`."""
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: {allowed}")


def section_checker(section, name: str) -> Callable[[bool, str, str], None]:
  """check(ok, field, allowed) for the fields of one config section (`name`, e.g. 'data')."""
  def check_field(ok: bool, field: str, allowed: str) -> None:
    check(ok, f"{name}.{field}", section[field], allowed)
  return check_field
