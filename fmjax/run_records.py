"""What a run's workdir records about it, read without JAX: its config.json and metrics.jsonl.

    run = load_run("/tmp/fmjax_gpt_tiny")       # Run(name, path, config, rows, objective, ...)
    run.series("train/loss")                    # (steps, values, non-finite count)
    find_runs(["ROOT"])                         # a sweep root expands to the runs inside it

A run may still be training: the files are read as they are now, and a last line cut short by
a writer that is mid-line (or was killed mid-line) is skipped, as is any other line that is not
a JSON object with an integer `step`. Works on gs:// workdirs: every read goes through
fmjax.paths.
"""

import dataclasses
import json
import math
import os
from typing import Any, Optional

from etils import epath

from fmjax import paths

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PROBES_DIR = "probes"  # fmjax.probe's results: {"metric": "probe/<task>/accuracy", "step": S, "accuracy": x, ...}


@dataclasses.dataclass
class Run:
  name: str                           # what the report calls the run (its folder's name)
  path: str                           # the workdir, absolute (URLs as given)
  config: Optional[dict[str, Any]]    # config.json, nested; None when absent or unreadable
  rows: list[dict[str, Any]]          # metrics.jsonl rows that parsed, in file order
  objective: Optional[str]            # config["objective"]: the paradigm
  problems: list[str] = dataclasses.field(default_factory=list)  # what could not be read, in words

  @property
  def last_step(self) -> Optional[int]:
    return max((row["step"] for row in self.rows), default=None)

  @property
  def total_steps(self) -> Optional[int]:
    """config train.steps: the step at which the run is done."""
    steps = ((self.config or {}).get("train") or {}).get("steps")
    return steps if isinstance(steps, int) else None

  @property
  def status(self) -> str:
    if not self.rows:
      return "no metrics yet"
    if self.config is None:
      return "unknown (no config.json)"
    if self.total_steps is None:
      return "unknown (no train.steps in config.json)"
    if self.last_step >= self.total_steps:
      return "finished"
    return f"in progress ({self.last_step} of {self.total_steps} steps)"

  @property
  def finished(self) -> bool:
    return self.status == "finished"

  def logged_metrics(self) -> set[str]:
    """Names with at least one finite number (perf/mfu is null on chips without a known peak)."""
    return {key for row in self.rows for key, value in row.items()
            if key != "step" and _is_number(value) and math.isfinite(value)}

  def series(self, metric: str) -> tuple[list[int], list[float], int]:
    """(steps, values, how many non-finite values were left out), in step order.

    A resumed run logs again the steps between its checkpoint and the point it stopped at; the
    later row of a step wins, as it belongs to the history the run continued from."""
    by_step, nonfinite_steps = {}, set()
    for row in self.rows:
      value = row.get(metric)
      if not _is_number(value):
        continue
      if math.isfinite(value):
        by_step[row["step"]] = float(value)
        nonfinite_steps.discard(row["step"])
      else:
        by_step.pop(row["step"], None)
        nonfinite_steps.add(row["step"])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps], len(nonfinite_steps)

  def last_value(self, metric: str) -> Optional[float]:
    """The value at the latest step that logged `metric`, finite or not (a NaN is news)."""
    for row in sorted(self.rows, key=lambda r: r["step"], reverse=True):
      if _is_number(row.get(metric)):
        return float(row[metric])
    return None


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def not_a_run(given: str) -> str:
  return f"{given}: not a run directory (no config.json or metrics.jsonl)"


def is_run_dir(path: str) -> bool:
  return paths.exists(paths.join(path, CONFIG_FILE)) or paths.exists(paths.join(path, METRICS_FILE))


def load_run(workdir: str) -> Run:
  """The run in `workdir`; ValueError when it holds neither config.json nor metrics.jsonl."""
  path = paths.absolute(workdir)
  if not is_run_dir(path):
    raise ValueError(not_a_run(workdir))
  problems = []
  config = read_config(paths.join(path, CONFIG_FILE), problems)
  rows = read_rows(paths.join(path, METRICS_FILE), problems) + probe_rows(path, problems)
  objective = config.get("objective") if config else None
  return Run(name=os.path.basename(path) or path, path=path, config=config, rows=rows,
             objective=objective if isinstance(objective, str) else None, problems=problems)


def probe_rows(workdir: str, problems: list[str]) -> list[dict]:
  """The probes run on this run's checkpoints, as rows {step, metric: accuracy}: a probe's
  accuracy is then a metric like the others (a point at the step it probed)."""
  folder = paths.join(workdir, PROBES_DIR)
  if not paths.isdir(folder):
    return []
  rows = []
  for entry in sorted(epath.Path(folder).iterdir(), key=lambda e: e.name):
    if not entry.name.endswith(".json"):
      continue
    try:
      result = json.loads(entry.read_text())
      rows.append({"step": int(result["step"]), str(result["metric"]): float(result["accuracy"])})
    except (ValueError, KeyError, TypeError) as e:
      problems.append(f"{PROBES_DIR}/{entry.name} is not a probe result ({e}); left out")
  return rows


def read_config(path: str, problems: list[str]) -> Optional[dict]:
  if not paths.exists(path):
    problems.append("no config.json: its settings and train.steps are unknown")
    return None
  try:
    config = json.loads(paths.read_text(path))
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are
    problems.append(f"config.json is not valid JSON ({e}); left out")
    return None
  if not isinstance(config, dict):
    problems.append("config.json is not a JSON object; left out")
    return None
  return config


def read_rows(path: str, problems: list[str]) -> list[dict]:
  if not paths.exists(path):
    return []
  try:
    text = paths.read_text(path)
  except UnicodeDecodeError as e:
    problems.append(f"metrics.jsonl is not UTF-8 text ({e}); left out")
    return []
  rows, skipped = parse_metrics(text)
  if skipped:
    problems.append(f"{skipped} line(s) of metrics.jsonl did not parse and were skipped "
                    "(a run writing or killed mid-line leaves one)")
  return rows


def parse_metrics(text: str) -> tuple[list[dict], int]:
  """(rows that are JSON objects with an integer step, number of non-empty lines skipped)."""
  rows, skipped = [], 0
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      skipped += 1
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
      rows.append(row)
    else:
      skipped += 1
  return rows, skipped


def find_runs(dirs: list[str]) -> tuple[list[str], list[str]]:
  """(run workdirs, one message per given dir that is no run and holds none).

  A dir that is a run stands for itself; one that is not but has runs among its immediate
  subfolders (a sweep root) stands for those, in sorted order. Each run is listed once."""
  found, problems = [], []
  for given in dirs:
    path = paths.absolute(given)
    if is_run_dir(path):
      runs = [path]
    else:
      runs = [child for child in _subfolders(path) if is_run_dir(child)]
    if not runs:
      problems.append(not_a_run(given))
    found.extend(run for run in runs if run not in found)
  return found, problems


def _subfolders(path: str) -> list[str]:
  # fmjax.paths has no listing; epath lists local folders and gs:// prefixes alike.
  if not paths.isdir(path):
    return []
  children = sorted(child.name for child in epath.Path(path).iterdir())
  return [paths.join(path, name) for name in children if paths.isdir(paths.join(path, name))]
