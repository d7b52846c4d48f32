"""Comparing runs at a glance: one self-contained HTML page (or one PNG) of several runs' curves,
final figures and config differences.

    python -m fmjax.report DIR [DIR ...] [--out report.html | report.png] [--metric train/loss ...]
        [--smooth 0.6]

Each DIR is a run's workdir, or a folder of runs (a sweep root: its run subfolders, sorted).
`--out x.html` writes the page and, beside it, `x_files/<metric>.png`; `--out x.png` writes one
PNG grid of every plot instead. Runs still training are read as they are now. A DIR that holds no
run is said on the page; when no DIR holds one, the command ends with `error: ...`, exit 2.

Python:
    write_report(["/tmp/a", "/tmp/b"], "report.html", metrics=None, smooth=0.6)  # -> its path
    load_run("/tmp/a")                  # Run(name, path, config, rows, objective, problems)
    plan_report(["/tmp/a", "/tmp/b"])   # what would be drawn: plots with their curves, notes
"""

import argparse
import os
import re
import sys
from typing import Optional, Sequence

from fmjax import cli_errors, paths, report_html, report_plan, report_plots
from fmjax.run_records import Run, find_runs, load_run  # noqa: F401  (load_run is part of this API)

OUTPUT_KINDS = (".html", ".htm", ".png")


def plan_report(run_dirs: Sequence[str], metrics: Optional[list[str]] = None,
                smooth: float = 0.6) -> report_plan.ReportPlan:
  """The report of the runs in `run_dirs`, decided but not drawn. ValueError when no dir holds a
  run, or when `metrics` are named and no run logged any of them."""
  report_plan.check_smooth(smooth)
  if isinstance(run_dirs, str):
    run_dirs = [run_dirs]
  if not run_dirs:
    raise ValueError("no run directory given: name one or more workdirs (or sweep roots)")
  found, problems = find_runs(list(run_dirs))
  if not found:
    raise ValueError("; ".join(problems))
  runs = _distinct_names([load_run(path) for path in found])
  return report_plan.plan(runs, metrics, smooth, notes=problems)


def write_report(run_dirs: list[str], out: str, metrics: Optional[list[str]] = None, smooth: float = 0.6) -> str:
  """Writes the report of `run_dirs` to `out` (.html: the page plus a folder of PNGs beside it;
  .png: one grid) and returns the path written."""
  check_output(out)
  return write_plan(plan_report(run_dirs, metrics, smooth), out)


def check_output(out: str) -> None:
  if not out or os.path.splitext(out)[1].lower() not in OUTPUT_KINDS:
    raise ValueError(f"--out={out!r}: give a file name ending in .html (the page and its PNGs) or .png "
                     "(one grid of every plot)")
  if not paths.is_remote(out) and os.path.isdir(out):
    raise ValueError(f"--out={out!r} is a folder: give a file name in it")


def write_plan(plan: report_plan.ReportPlan, out: str) -> str:
  check_output(out)
  out = paths.absolute(out)
  paths.makedirs(os.path.dirname(out))
  palette = report_plots.run_colors(len(plan.runs))
  if out.lower().endswith(".png"):
    fig = report_plots.grid_figure(plan.plots, palette, [r.name for r in plan.runs], plan.smooth)
    paths.write_atomically(out, report_plots.png_bytes(fig))
    return out
  images = [(plot, report_plots.png_bytes(report_plots.figure(plot, palette, plan.smooth))) for plot in plan.plots]
  folder = plots_folder(out)
  if images:
    paths.makedirs(folder)
  for name, (_, png) in zip(png_names(plan.plots), images):
    paths.write_atomically(paths.join(folder, name), png)
  paths.write_atomically(out, report_html.page(plan, palette, images))
  return out


def plots_folder(out: str) -> str:
  """Where the PNGs of page `out` go: report.html -> report_files/."""
  return os.path.splitext(out)[0] + "_files"


def png_names(plots: list[report_plan.Plot]) -> list[str]:
  """A file name per plot, from its metric (and its paradigm, for plots of some runs only):
  'train/loss' -> 'train_loss.png', 'eval/recall@1' of clip runs -> 'contrastive.eval_recall_1.png'."""
  names = []
  for plot in plots:
    stem = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{plot.group}.{plot.metric}" if plot.group else plot.metric)
    name, n = f"{stem}.png", 2
    while name in names:
      name, n = f"{stem}-{n}.png", n + 1
    names.append(name)
  return names


def _distinct_names(runs: list[Run]) -> list[Run]:
  """Runs from two sweep roots can share a folder name; then every run is named by the last
  two components of its path (the same for all, so the legend reads evenly), or by its whole
  path if that is not enough."""
  for name_of in (lambda r: "/".join(r.path.rstrip("/").split("/")[-2:]), lambda r: r.path):
    if len({r.name for r in runs}) == len(runs):
      break
    for run in runs:
      run.name = name_of(run)
  return runs


def summary(plan: report_plan.ReportPlan, out: str) -> str:
  """What the command prints: where the report went, one line per run, and the notes."""
  metric_columns = [m for m in ("train/loss", "eval/loss") if m in plan.table_metrics]
  width = max(len(r.name) for r in plan.runs)
  lines = [f"report of {len(plan.runs)} run(s), {len(plan.plots)} plot(s) -> {out}"]
  lines.append(f"{'run':<{width}}  {'last step':>9}  " + "".join(f"{m:>11}  " for m in metric_columns) + "status")
  for run in plan.runs:
    values = [run.last_value(m) for m in metric_columns]
    figures = "".join(f"{'—' if v is None else format(v, '.4f'):>11}  " for v in values)
    step = "—" if run.last_step is None else run.last_step
    lines.append(f"{run.name:<{width}}  {step:>9}  {figures}{run.status}")
  lines += [f"note: {note}" for note in plan.notes]
  return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one `error:` line and exit 2, as fmjax's other tools end
    cli_errors.fail(f"{message} (usage: python -m fmjax.report DIR [DIR ...] [--out report.html|report.png] "
                    "[--metric NAME ...] [--smooth 0.6])")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = _Parser(prog="python -m fmjax.report", description="Compare fmjax runs: curves, final figures and "
                   "config differences in one self-contained HTML page (or one PNG).")
  parser.add_argument("dirs", nargs="+", metavar="DIR", help="a run's workdir, or a folder of runs (a sweep root)")
  parser.add_argument("--out", default="report.html",
                      help="report.html: the page, plus report_files/<metric>.png; report.png: one grid of plots")
  parser.add_argument("--metric", action="append", default=None,
                      help="plot this metric (repeat for several; default: every train/ and eval/ metric "
                      "the runs share, throughput and MFU)")
  parser.add_argument("--smooth", type=float, default=0.6,
                      help="smoothing weight of train curves in [0, 1), as TensorBoard's (default 0.6)")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command; ends with `error: ...` and exit status 2 on bad input."""
  args = parse_args(argv)
  try:
    check_output(args.out)
    plan = plan_report(args.dirs, args.metric, args.smooth)
    out = write_plan(plan, args.out)
  except cli_errors.BAD_INPUT as e:
    cli_errors.fail(e)
  print(summary(plan, out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
