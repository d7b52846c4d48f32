"""A grid of training runs on one machine, one after another, resumable, ending in a report.

    python -m fmjax.sweep --config experiments/gpt.py:tiny --workdir ROOT \\
        --set optim.learning_rate=1e-3,3e-3 --set model.num_layers=2,4 \\
        [--dry_run] [--no_report] [-- --config.train.steps=300 ...]

Every `--set FIELD=V1,V2,...` is an axis; the runs are their cartesian product (the first --set
varies slowest). Arguments after `--` are `--config.FIELD=VALUE` overrides, as `fmjax.main`
takes them, given to every run. Each run trains as its own `python -m fmjax.main` process in
`ROOT/<settings>` (e.g. `ROOT/model.num_layers=2,optim.learning_rate=0.001`: fields sorted, so
the order of the --set flags does not matter), so a run that fails (NaN, a bad combination)
is reported and the sweep goes on to the next. ROOT gets `sweep.json` (the grid) and, at the
end, `report.html` (fmjax.report) over all runs.

Relaunching the same command skips the finished runs (read from their files: no JAX is started
for them) and resumes an unfinished one from its newest checkpoint. SIGTERM or Ctrl-C saves
the current run and stops; a kill -9 of the sweep kills its current run too (Linux).

Everything is checked before the first run starts: the config file and variant, every field
and value, the fixed overrides, and that ROOT can be written; a problem is one `error:` line,
exit status 2. Otherwise the exit status is 0 when every run finished and 1 when any did not.
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
from typing import Optional, Sequence

import ml_collections

from fmjax import child_process, config_files, paths, resume_checks, run_errors, run_progress, sweep_grid
from fmjax import workdir_lock
from fmjax.field_checks import ConfigError

SWEEP_FILE = "sweep.json"
REPORT_FILE = "report.html"
EXIT_BAD_INPUT = 2


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  name: str
  workdir: str
  settings: tuple            # the grid point: sweep_grid.Override per axis
  config_dict: dict          # the config the run is given, for comparing with a saved one
  steps: int
  command: tuple


@dataclasses.dataclass(frozen=True)
class Plan:
  config_spec: str
  root: str
  axes: tuple
  fixed: tuple
  runs: tuple


@dataclasses.dataclass(frozen=True)
class RunResult:
  run: PlannedRun
  status: str                # finished | failed | stopped | not run
  progress: run_progress.Progress


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one `error:` line (main prints it), not argparse's usage block
    raise ValueError(message)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """The sweep's own flags, and the fixed overrides after `--`."""
  argv = list(argv)
  fixed = argv[argv.index("--") + 1:] if "--" in argv else []
  own = argv[:argv.index("--")] if "--" in argv else argv
  parser = _Parser(prog="python -m fmjax.sweep [...] -- [--config.FIELD=VALUE ...]", allow_abbrev=False,
                   description=__doc__.split("\n\n")[0],
                   epilog="Arguments after -- are --config.FIELD=VALUE overrides (as fmjax.main takes them) "
                          "given to every run.")
  parser.add_argument("--config", required=True, help="experiment config, FILE.py:VARIANT (as for fmjax.main)")
  parser.add_argument("--workdir", required=True, help="the sweep's root: one subdirectory per run")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=V1,V2,...", dest="axes",
                      help="a swept config field and its values (repeat for more axes)")
  parser.add_argument("--dry_run", action="store_true", help="print the runs and their commands; train nothing")
  parser.add_argument("--no_report", action="store_true", help="skip the final report.html")
  args = parser.parse_args(own)
  if not args.axes:
    raise ValueError("give at least one --set FIELD=V1,V2,... (the fields to sweep)")
  return args, fixed


def make_plan(args: argparse.Namespace, fixed_tokens: Sequence[str]) -> Plan:
  """Every check that needs no writing: config, fields, values, overrides."""
  config = config_files.load(args.config)
  axes = tuple(sweep_grid.parse_axis(spec, config) for spec in args.axes)
  fixed = tuple(sweep_grid.parse_fixed(token, config) for token in fixed_tokens)
  sweep_grid.check_disjoint(axes, fixed)
  if not args.workdir:
    raise ValueError("--workdir: give the sweep's root directory")
  root = paths.absolute(args.workdir)
  path, variant = config_files.split_spec(args.config)
  config_arg = os.path.abspath(path) + ("" if variant is None else f":{variant}")
  runs = []
  for point in sweep_grid.points(axes):
    name = sweep_grid.run_name(point)
    workdir = paths.join(root, name)
    run_config = sweep_grid.apply(config, point + fixed)
    command = (sys.executable, "-m", "fmjax.main", "--config", config_arg, "--workdir", workdir,
               *(o.flag() for o in point + fixed))
    runs.append(PlannedRun(name, workdir, point, run_config.to_dict(), _steps(run_config), command))
  return Plan(args.config, root, axes, fixed, tuple(runs))


def _steps(config: ml_collections.ConfigDict) -> int:
  try:
    return int(config.train.steps)
  except (AttributeError, KeyError, TypeError, ValueError):
    raise ValueError("--config: the config has no integer train.steps, so a finished run cannot be told") from None


def check_root_writable(root: str) -> None:
  """For --dry_run, which writes nothing: the nearest existing folder must take new files."""
  if paths.is_remote(root):
    return  # only a write can tell; the real run's first write does
  existing = root
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {root}: cannot be written ({existing} is not a writable folder)")


def write_sweep_file(plan: Plan) -> None:
  grid = dict(
      config=plan.config_spec,
      fields=[a.field for a in plan.axes],
      values={a.field: list(a.values) for a in plan.axes},
      overrides=[o.flag() for o in plan.fixed],
      runs=[dict(name=r.name, dir=r.workdir, settings={o.field: o.value for o in r.settings}) for r in plan.runs],
  )
  paths.write_atomically(paths.join(plan.root, SWEEP_FILE), json.dumps(grid, indent=2) + "\n")


def state_of(run: PlannedRun, progress: run_progress.Progress) -> tuple[str, str]:
  """What launching the run would do: ('finished' | 'resume' | 'start' | 'refused', detail).

  A workdir whose checkpoint belongs to another config (another grid in this ROOT, changed
  fixed overrides) is refused here with fmjax.main's own message, as fmjax.main would refuse
  it, without starting JAX to hear so."""
  if progress.checkpoint_step is not None and progress.config is not None:
    allow = bool(run.config_dict.get("checkpoint", {}).get("allow_config_change", False))
    try:
      resume_checks.check_same_run(progress.config, run.config_dict, workdir=run.workdir,
                                   step=progress.checkpoint_step, allow_change=allow)
    except ConfigError as e:
      return "refused", str(e)
  if progress.finished(run.steps):
    return "finished", ""
  if progress.checkpoint_step is not None:
    return "resume", f"from step {progress.checkpoint_step}"
  return "start", ""


def run_all(plan: Plan, say) -> list[RunResult]:
  results, stopped = [], False
  for index, run in enumerate(plan.runs, 1):
    head = f"[{index}/{len(plan.runs)}] {run.name}"
    progress = run_progress.read(run.workdir)
    if stopped:
      results.append(RunResult(run, "not run", progress))
      continue
    state, detail = state_of(run, progress)
    if state == "finished":
      say(f"{head}: skipped: finished")
      results.append(RunResult(run, "finished", progress))
      continue
    if state == "refused":
      say(f"{head}: failed: {detail}")
      results.append(RunResult(run, "failed", progress))
      continue
    say(f"{head}: " + (f"resumed {detail}" if state == "resume" else "started"))
    outcome = child_process.run(run.command, echo=lambda line: say(f"  {line}"))
    progress = run_progress.read(run.workdir)
    if outcome.returncode == 0 and progress.finished(run.steps):
      say(f"{head}: finished at step {progress.checkpoint_step}{_figures(progress)}")
      status = "finished"
    elif outcome.interrupted_by is not None:
      saved = (f"at step {progress.checkpoint_step} (saved)" if progress.checkpoint_step is not None
               else "before its first checkpoint")
      say(f"{head}: stopped {saved}; relaunch the same command to resume")
      status, stopped = "stopped", True
    else:
      reason = outcome.error_line or f"ended at step {progress.reached_step} of {run.steps} without an error"
      say(f"{head}: failed: {reason}")
      status = "failed"
    results.append(RunResult(run, status, progress))
  return results


def _figures(progress: run_progress.Progress) -> str:
  parts = []
  loss = progress.last("train/loss")
  if loss is not None:
    parts.append(f"train/loss {_number(loss)}")
  final_eval = progress.final_eval()
  if final_eval is not None:
    parts.append(f"{final_eval[0]} {_number(final_eval[1])}")
  return f" ({', '.join(parts)})" if parts else ""


def _number(value) -> str:
  return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def summary_table(results: Sequence[RunResult]) -> str:
  rows = [("run", "status", "step", "train/loss", "eval")]
  for r in results:
    final_eval = r.progress.final_eval()
    loss = r.progress.last("train/loss")
    rows.append((r.run.name, r.status, f"{r.progress.reached_step}/{r.run.steps}",
                 "-" if loss is None else _number(loss),
                 "-" if final_eval is None else f"{final_eval[0]} {_number(final_eval[1])}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  right = {2, 3}  # numbers line up on the right
  return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def write_report(run_dirs: Sequence[str], out: str, say) -> Optional[str]:
  """fmjax.report's page over the runs; a note instead when it cannot be written."""
  try:
    from fmjax import report  # pylint: disable=import-outside-toplevel  (optional, and heavy: matplotlib)
  except ImportError as e:
    say(f"report skipped: fmjax.report is not available ({e})")
    return None
  try:
    written = report.write_report(list(run_dirs), out=out)
  except (ValueError, OSError) as e:
    say(f"report not written: {e}")
    return None
  say(f"report: {written}")
  return written


def main(argv: Optional[Sequence[str]] = None) -> int:
  say = lambda text: print(text, flush=True)
  try:
    args, fixed_tokens = parse_args(sys.argv[1:] if argv is None else argv)
    plan = make_plan(args, fixed_tokens)
    if args.dry_run:
      check_root_writable(plan.root)
  except ValueError as e:
    return _fail(e)
  if args.dry_run:
    _print_dry_run(plan, say)
    return 0
  try:
    paths.makedirs(plan.root)
    lock = workdir_lock.WorkdirLock(plan.root).acquire()  # one sweep per ROOT at a time
  except OSError as e:
    return _fail(f"--workdir {plan.root}: cannot be written ({e})")
  except run_errors.WorkdirInUse as e:
    return _fail(e)
  try:
    try:
      write_sweep_file(plan)
    except OSError as e:
      return _fail(f"--workdir {plan.root}: cannot be written ({e})")
    say(f"sweep of {len(plan.runs)} runs in {plan.root}")
    results = run_all(plan, say)
  except KeyboardInterrupt:  # between runs (during one, the run is stopped and saved first)
    say("interrupted; relaunch the same command to resume")
    return 1
  finally:
    lock.release()
  say("\n" + summary_table(results))
  if args.no_report:
    say("report skipped (--no_report)")
  else:
    run_dirs = [r.run.workdir for r in results if r.progress.config is not None or r.progress.rows]
    if run_dirs:
      write_report(run_dirs, paths.join(plan.root, REPORT_FILE), say)
    else:
      say("report skipped: no run has written anything yet")
  return 0 if all(r.status == "finished" for r in results) else 1


def _print_dry_run(plan: Plan, say) -> None:
  say(f"dry run: {len(plan.runs)} runs in {plan.root}")
  for index, run in enumerate(plan.runs, 1):
    state, detail = state_of(run, run_progress.read(run.workdir))
    what = {"finished": "would skip: finished", "start": "would start", "resume": f"would resume {detail}",
            "refused": f"would fail: {detail}"}[state]
    say(f"[{index}/{len(plan.runs)}] {run.name}: {what}")
    say("  " + shlex.join(run.command))


def _fail(message) -> int:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  return EXIT_BAD_INPUT


if __name__ == "__main__":
  sys.exit(main())
