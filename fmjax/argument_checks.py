"""Range checks for the arguments of the inference tools and of their Python APIs.

Each raises ValueError `<name>=<value>: <what is allowed>`, the line the command-line tools
print after `error: ` (fmjax.cli_errors). A flag and the keyword argument it feeds share a
name, so one message serves both. Importable without JAX.
"""

import math

from fmjax.field_checks import is_int, is_number

# jax.random.PRNGKey keeps the low 32 bits of a seed (2**32 draws what 0 draws), and numpy
# refuses negative seeds: [0, 2**32) is the range in which different seeds mean different draws.
SEED_LIMIT = 2**32


def integer(value, name: str, low: int, high: int | None = None, note: str = "") -> int:
  """`value`, an integer in [low, high] (no upper bound when high is None), as an int.
  `note` follows the allowed range in the message, e.g. ' (0: no limit)'."""
  if not is_int(value) or value < low or (high is not None and value > high):
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name}={shown(value)}: must be an integer {allowed}{note}")
  return int(value)


def number(value, name: str, low: float, high: float = math.inf, *, low_open: bool = False,
           note: str = "") -> float:
  """`value`, a finite number in [low, high] ((low, high] with low_open), as a float. NaN and
  infinities are refused (a check written as `value < low: error` lets NaN by, as every
  comparison with NaN is false)."""
  ok = is_number(value) and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
  if not ok:
    if high == math.inf:
      allowed = f"{'>' if low_open else '>='} {low:g}"
    else:
      allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    raise ValueError(f"{name}={shown(value)}: must be a finite number {allowed}{note}")
  return float(value)


def shown(value) -> str:
  """A value as a message shows it: numbers plainly (2.0, not np.float64(2.0)), the rest quoted."""
  return str(value) if is_number(value) else repr(value)


def seed(value, name: str = "seed") -> int:
  return integer(value, name, 0, SEED_LIMIT - 1)


def text(value: str, name: str) -> str:
  """A string that can be encoded as UTF-8. Command-line bytes that are not UTF-8 reach Python
  as lone surrogates ('\\udcff'), which no tokenizer can encode."""
  if not isinstance(value, str):
    raise ValueError(f"{name}={value!r}: must be a string")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError(f"{name}={value!r}: not UTF-8 text (position {e.start})") from None
  return value
