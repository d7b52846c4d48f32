"""What a comparison report shows, decided from the runs alone (no drawing, no HTML): which
metrics get a plot, each plot's curves (raw and smoothed), the final figures, and the notes a
reader needs (runs of other paradigms, metrics nobody logged, lines that did not parse).

Which metrics are plotted:
- by default, every train/ and eval/ metric and the throughput and MFU (perf/units_per_s,
  perf/mfu) that all runs with metrics logged, each in one plot overlaying every run; a metric
  whose every value is one constant (eval/tokens, a fixed learning rate) is named in a note
  instead. Metrics that only some runs logged are plotted per paradigm, each among the runs of
  that paradigm that logged it, so that runs of different paradigms share a plot only for
  metrics they all logged;
- with `metrics` given, exactly those, each among the runs that logged it.
"""

import dataclasses
from typing import Optional

from fmjax.run_records import Run

THROUGHPUT_METRICS = ("perf/units_per_s", "perf/mfu")
SHARED_GROUP = ""  # Plot.group of the plots that overlay every run


@dataclasses.dataclass(frozen=True)
class Curve:
  run: str                          # run name (the legend entry)
  run_index: int                    # the run's place in the report: its colour in every plot
  steps: tuple[int, ...]
  values: tuple[float, ...]
  smoothed: Optional[tuple[float, ...]]  # None for metrics drawn as points (eval)


@dataclasses.dataclass(frozen=True)
class Plot:
  metric: str
  style: str                        # "line": raw faint + smoothed bold; "points": markers, thin joins
  curves: tuple[Curve, ...]
  group: str = SHARED_GROUP         # "" for shared metrics, else the paradigm whose runs it overlays

  @property
  def title(self) -> str:
    return f"{self.metric} ({self.group} runs)" if self.group else self.metric


@dataclasses.dataclass
class ReportPlan:
  runs: list[Run]
  plots: list[Plot]
  table_metrics: list[str]          # rows of the final-figures table
  notes: list[str]                  # said at the top of the page, and by the command
  smooth: float


def is_reported(metric: str) -> bool:
  return metric.startswith(("train/", "eval/", "probe/")) or metric in THROUGHPUT_METRICS


def style_of(metric: str) -> str:
  return "points" if metric.startswith(("eval/", "probe/")) else "line"


def metric_order(metric: str):
  """train/ first, then eval/, probes (fmjax.probe), throughput; the loss leads its group; then by name."""
  group = (0 if metric.startswith("train/") else 1 if metric.startswith("eval/")
           else 2 if metric.startswith("probe/") else 3)
  return group, not metric.endswith("/loss"), metric


def debiased_ema(values: list[float], weight: float) -> list[float]:
  """Exponential moving average with TensorBoard's smoothing weight, corrected for its zero
  start (the running mean is divided by 1 - weight**n) so early points are not pulled to 0."""
  smoothed, running = [], 0.0
  for n, value in enumerate(values, start=1):
    running = weight * running + (1.0 - weight) * value
    smoothed.append(running / (1.0 - weight**n))
  return smoothed


def check_smooth(smooth) -> float:
  if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth < 1:
    raise ValueError(f"--smooth={smooth!r}: give a number in [0, 1): 0 draws the raw curves only, "
                     "0.6 is TensorBoard's default, 0.99 is very smooth")
  return float(smooth)


def plan(runs: list[Run], metrics: Optional[list[str]] = None, smooth: float = 0.6,
         notes: Optional[list[str]] = None) -> ReportPlan:
  """The report of `runs` (in order: a run's index is its colour). `notes` start the list (the
  command's dirs that were not runs). ValueError when `metrics` are named and no run logged any
  of them."""
  smooth = check_smooth(smooth)
  notes = list(notes or [])
  notes += _run_notes(runs)
  if metrics:
    plots, table_metrics = _requested_plots(runs, list(dict.fromkeys(metrics)), smooth, notes)
  else:
    plots, table_metrics = _default_plots(runs, smooth, notes)
  return ReportPlan(runs=runs, plots=plots, table_metrics=table_metrics, notes=notes, smooth=smooth)


def _run_notes(runs: list[Run]) -> list[str]:
  notes = []
  for run in runs:
    notes += [f"{run.name}: {problem}" for problem in run.problems]
    if not run.rows:
      notes.append(f"{run.name}: no metrics yet")
    elif not any(is_reported(m) for m in run.logged_metrics()):
      notes.append(f"{run.name}: no train or eval metrics yet (last step {run.last_step})")
  paradigms = _by_objective(runs)
  if len([o for o in paradigms if o is not None]) > 1:
    listed = "; ".join(f"{o}: {', '.join(r.name for r in rs)}" for o, rs in paradigms.items() if o is not None)
    notes.append(f"these runs train different paradigms ({listed}): their metrics are not comparable, even "
                 "where the names match. Only metrics that every run logged share a plot; each paradigm's "
                 "other metrics are plotted among its own runs.")
  return notes


def _by_objective(runs: list[Run]) -> dict[Optional[str], list[Run]]:
  groups = {}
  for run in runs:
    groups.setdefault(run.objective, []).append(run)
  return groups


def _default_plots(runs: list[Run], smooth: float, notes: list[str]):
  logged = {r.name: {m for m in r.logged_metrics() if is_reported(m)} for r in runs}
  # A run that has only compiled (its one row is step 0's compile time) shares nothing yet; it
  # must not empty the shared set of the others.
  with_metrics = [r for r in runs if logged[r.name]]
  logged = {r.name: logged[r.name] for r in with_metrics}
  shared = set.intersection(*logged.values()) if logged else set()
  plots, constant = [], []
  for metric in sorted(shared, key=metric_order):
    plot = _plot(metric, with_metrics, runs, smooth, notes)
    if _is_constant(plot):
      constant.append(f"{metric} = {plot.curves[0].values[0]:g}")
    else:
      plots.append(plot)
  partial = set()
  for objective, members in _by_objective(with_metrics).items():
    group = objective or "(no config.json)"
    own = set.union(*(logged[r.name] for r in members)) - shared
    for metric in sorted(own, key=metric_order):
      partial.add(metric)
      loggers = [r for r in members if metric in logged[r.name]]
      plot = _plot(metric, loggers, runs, smooth, notes, group=group)
      if _is_constant(plot):
        constant.append(f"{metric} = {plot.curves[0].values[0]:g} ({group})")
      else:
        plots.append(plot)
  if constant:
    notes.append(f"constant, so not plotted: {'; '.join(constant)}")
  if with_metrics and not plots:
    notes.append("no metric to plot: the runs share no train/ or eval/ metric that changes")
  return plots, sorted(shared | partial, key=metric_order)


def _requested_plots(runs: list[Run], metrics: list[str], smooth: float, notes: list[str]):
  plots = []
  for metric in metrics:
    loggers = [r for r in runs if metric in r.logged_metrics()]
    if not loggers:
      notes.append(f"--metric {metric}: no run logged it")
      continue
    missing = [r.name for r in runs if r not in loggers]
    if missing:
      notes.append(f"--metric {metric}: not logged by {', '.join(missing)}")
    plots.append(_plot(metric, loggers, runs, smooth, notes))
  if not plots:
    available = sorted(set().union(*(r.logged_metrics() for r in runs)), key=metric_order)
    raise ValueError(f"--metric {', '.join(metrics)}: no run logged any of them (logged: "
                     f"{', '.join(available) if available else 'nothing yet'})")
  return plots, [p.metric for p in plots]


def _plot(metric: str, members: list[Run], runs: list[Run], smooth: float, notes: list[str],
          group: str = SHARED_GROUP) -> Plot:
  style = style_of(metric)
  curves = []
  for run in members:
    steps, values, nonfinite = run.series(metric)
    if nonfinite:
      notes.append(f"{run.name}: {metric} has {nonfinite} non-finite value(s), left out of its plot")
    smoothed = tuple(debiased_ema(values, smooth)) if style == "line" else None
    curves.append(Curve(run=run.name, run_index=_index(run, runs), steps=tuple(steps), values=tuple(values),
                        smoothed=smoothed))
  return Plot(metric=metric, style=style, curves=tuple(curves), group=group)


def _index(run: Run, runs: list[Run]) -> int:
  return next(i for i, r in enumerate(runs) if r is run)


def _is_constant(plot: Plot) -> bool:
  values = [v for c in plot.curves for v in c.values]
  return len(values) > 1 and all(v == values[0] for v in values)
