"""The grid of a sweep: `--set FIELD=V1,V2` axes and fixed `--config.FIELD=V` overrides, checked
against the experiment's config, their cartesian product, and each run's directory name.

Values are parsed with the parsers `fmjax.main`'s config flags use for the field's type (absl's
int, float and bool parsers; strings as given), so a value means here what it means to the run
it is handed to. Every failure is a ValueError naming the flag, for a one-line `error:`.
Importable without JAX.
"""

import copy
import dataclasses
import difflib
import hashlib
import itertools
import urllib.parse
from typing import Any, Sequence

import ml_collections
from absl import flags
from ml_collections.config_flags import tuple_parser

# Types a swept value may have. A tuple's own commas collide with the list of values, so tuple
# fields are set per sweep (after `--`), not swept.
SWEEPABLE = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
             str: flags.ArgumentParser()}
FIXED_ONLY = {tuple: tuple_parser.TupleParser()}
TYPE_NAMES = {bool: "a bool (true, false, 1 or 0)", int: "an int", float: "a float", str: "a string",
              tuple: "a tuple, e.g. '(1, 2)'"}
# A directory name stays well under the 255 bytes filesystems allow; longer ones are cut and
# made unique again by a hash of the whole name.
MAX_NAME_BYTES = 200
NAME_SAFE = "._-+"  # kept as they are in names; anything else is %-escaped


@dataclasses.dataclass(frozen=True)
class Override:
  field: str   # dotted, without 'config.': 'optim.learning_rate'
  value: Any

  def flag(self) -> str:
    """The `fmjax.main` argument that sets it."""
    return f"--config.{self.field}={format_value(self.value)}"


@dataclasses.dataclass(frozen=True)
class Axis:
  field: str
  values: tuple


def format_value(value) -> str:
  """The text of a value in flags and names: floats by repr, which reads back to the same float
  (1e-3 and 0.001 both give '0.001'), bools as True/False."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


def field_type(config: ml_collections.ConfigDict, field: str, label: str) -> type:
  """The declared type of the dotted config field; ValueError `<label>: no such config field`."""
  node, parts = config, field.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ValueError(f"{label}: no such config field{_suggestion(config, field)}")
    if depth < len(parts) - 1:
      node = node[part]
  kind = node.get_type(parts[-1])
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    raise ValueError(f"{label}: a config section, not a field; name one of its fields, "
                     f"e.g. {field}.{sorted(node[parts[-1]].keys())[0]}")
  return kind


def parse_value(text: str, kind: type, label: str, current) -> Any:
  parser = _parser(kind, label, current)
  try:
    return parser.parse(text)
  except (ValueError, TypeError, SyntaxError):
    # absl's wording varies by type; the field's type and value say what is allowed.
    raise ValueError(f"{label}: {text!r} is not {TYPE_NAMES[kind]}; the field holds {current!r}") from None


def _parser(kind: type, label: str, current):
  parser = SWEEPABLE.get(kind) or FIXED_ONLY.get(kind)
  if parser is None:
    raise ValueError(f"{label}: the field holds {current!r} ({kind.__name__}), which cannot be set "
                     f"from the command line")
  return parser


def parse_axis(spec: str, config: ml_collections.ConfigDict) -> Axis:
  """'model.num_layers=2,4' -> Axis('model.num_layers', (2, 4))."""
  field, sep, values_text = spec.partition("=")
  field = field.strip()
  label = f"--set {field or spec}"
  if not sep or not field:
    raise ValueError(f"--set {spec!r}: expected FIELD=V1,V2,... (e.g. optim.learning_rate=1e-3,3e-3)")
  field = field.removeprefix("config.")
  kind = field_type(config, field, label)
  current = _get(config, field)
  _parser(kind, label, current)
  if kind not in SWEEPABLE:
    raise ValueError(f"{label}: a {kind.__name__} field cannot be swept (its values would need "
                     f"commas); set it for every run after --, e.g. -- \"--config.{field}={current!r}\"")
  values, seen = [], set()
  for text in values_text.split(","):
    value = parse_value(text, kind, label, current)
    if format_value(value) in seen:
      raise ValueError(f"{label}: the value {format_value(value)} is given twice")
    seen.add(format_value(value))
    values.append(value)
  return Axis(field, tuple(values))


def parse_fixed(token: str, config: ml_collections.ConfigDict) -> Override:
  """'--config.train.steps=100' (an argument after `--`) -> Override('train.steps', 100)."""
  name, sep, text = token.partition("=")
  if not name.startswith("--config.") or not sep:
    raise ValueError(f"{token!r} after --: expected --config.FIELD=VALUE (as fmjax.main takes it)")
  field = name.removeprefix("--config.")
  kind = field_type(config, field, name)
  return Override(field, parse_value(text, kind, name, _get(config, field)))


def check_disjoint(axes: Sequence[Axis], fixed: Sequence[Override]) -> None:
  """One source of values per field: a field swept twice, or both swept and fixed, is refused."""
  seen: dict[str, str] = {}
  for field, source in [(a.field, "--set") for a in axes] + [(o.field, "after --") for o in fixed]:
    if field in seen:
      sources = {seen[field], source}
      how = ("by two --set flags" if sources == {"--set"} else
             "twice after --" if sources == {"after --"} else "both by --set and after --")
      raise ValueError(f"config.{field}: given {how}; give it once")
    seen[field] = source


def points(axes: Sequence[Axis]) -> list[tuple[Override, ...]]:
  """The cartesian product, the first axis varying slowest (the order of the --set flags)."""
  return [tuple(Override(a.field, v) for a, v in zip(axes, values))
          for values in itertools.product(*(a.values for a in axes))]


def run_name(point: Sequence[Override]) -> str:
  """'model.num_layers=2,optim.learning_rate=0.001': the settings sorted by field, so that the
  order of the --set flags does not rename (and so retrain) the runs. Filesystem- and URL-safe:
  characters other than letters, digits and '._-+' are %-escaped."""
  name = ",".join(f"{o.field}={urllib.parse.quote(format_value(o.value), safe=NAME_SAFE)}"
                  for o in sorted(point, key=lambda o: o.field))
  if len(name.encode()) > MAX_NAME_BYTES:
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    name = f"{name[:MAX_NAME_BYTES - 13]}-{digest}"
  return name


def apply(config: ml_collections.ConfigDict, overrides: Sequence[Override]) -> ml_collections.ConfigDict:
  """A copy of `config` with the overrides set (the config the run will be given)."""
  result = copy.deepcopy(config)
  for o in overrides:
    *parents, leaf = o.field.split(".")
    node = result
    for part in parents:
      node = node[part]
    node[leaf] = o.value
  return result


def _get(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _suggestion(config, field: str) -> str:
  names = list(_leaf_names(config))
  close = difflib.get_close_matches(field, names, n=1, cutoff=0.75)
  return f" (did you mean {close[0]}?)" if close else ""


def _leaf_names(node, prefix: str = ""):
  for key in node.keys():
    if isinstance(node[key], ml_collections.ConfigDict):
      yield from _leaf_names(node[key], f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"
