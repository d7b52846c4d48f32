"""The config fields in which runs differ, by dotted name: what makes each run of a comparison
what it is, without the hundred fields they share.

    flatten({"optim": {"learning_rate": 0.001}})        # {"optim.learning_rate": 0.001}
    differing_fields([config_a, config_b])              # {"optim.learning_rate": [0.001, 0.003]}
"""

import json
from typing import Any, Optional

ABSENT = object()  # a field one run's config has and another's lacks


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
  """Nested dicts to {dotted name: leaf}; lists stay whole, as one field's value."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f"{name}."))
    else:
      flat[name] = value
  return flat


def differing_fields(configs: list[Optional[dict]]) -> dict[str, list[Any]]:
  """{dotted name: one value per config (ABSENT where a config lacks it)} for the fields whose
  values are not all equal, in name order. Configs that are None (a run without config.json)
  take no part: their column holds None for every field."""
  flats = [flatten(c) if c is not None else None for c in configs]
  present = [f for f in flats if f is not None]
  names = sorted({name for f in present for name in f})
  diff = {}
  for name in names:
    # Compared as JSON text: 1 and 1.0 differ in a config (an int field given a float), and
    # lists compare by content.
    seen = {json.dumps(f.get(name, ABSENT), sort_keys=True, default=repr) for f in present}
    if len(seen) > 1:
      diff[name] = [None if f is None else f.get(name, ABSENT) for f in flats]
  return diff


def show(value) -> str:
  """A field's value as a person reads it in a table."""
  if value is ABSENT:
    return "(absent)"
  if isinstance(value, str):
    return repr(value) if value == "" else value
  return json.dumps(value)
