"""A report as one self-contained HTML page: inline style, plots as base64 PNG data URIs, no
script and nothing fetched, so the file can be mailed, attached or opened offline as it is.

The page: notes, a table of final figures (one column per run), the config fields in which the
runs differ (one column per run), then the plots.
"""

import base64
import datetime
import html
import math
from typing import Optional

from fmjax import config_diff
from fmjax.report_plan import SHARED_GROUP, Plot, ReportPlan

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; } th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.35em; vertical-align: -0.1em; }
.notes li { margin: 0.2em 0; } .muted { color: #777; }
.finished { color: #1a7f37; } .in-progress { color: #9a6700; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; }
figure img { width: 640px; max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def page(plan: ReportPlan, palette: list[str], images: list[tuple[Plot, bytes]]) -> str:
  """The HTML text; `images` pairs each plot with its PNG, in the plan's order."""
  names = [run.name for run in plan.runs]
  title = f"fmjax report: {', '.join(names)}" if len(names) <= 4 else f"fmjax report: {len(names)} runs"
  parts = [
      "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>",
      f"<h1>Comparing {len(names)} run(s)</h1>",
      f'<p class="muted">written {datetime.datetime.now().isoformat(timespec="seconds")}; '
      f"smoothing {plan.smooth:g} (debiased exponential moving average; faint lines are the raw values)</p>",
      _notes(plan.notes),
      "<h2>Final figures</h2>", _final_table(plan, palette),
      "<h2>Config differences</h2>", _config_table(plan, palette),
      _plots(images),
      "</body></html>",
  ]
  return "\n".join(p for p in parts if p)


def _text(value) -> str:
  return html.escape(str(value), quote=True)


def _notes(notes: list[str]) -> str:
  if not notes:
    return ""
  return "<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{_text(n)}</li>" for n in notes) + "</ul>"


def _run_header(plan: ReportPlan, palette: list[str], first: str) -> str:
  cells = [f"<th>{_text(first)}</th>"]
  for i, run in enumerate(plan.runs):
    cells.append(f'<th title="{_text(run.path)}"><span class="swatch" style="background:{palette[i]}"></span>'
                 f"{_text(run.name)}</th>")
  return "<tr>" + "".join(cells) + "</tr>"


def _final_table(plan: ReportPlan, palette: list[str]) -> str:
  rows = [_run_header(plan, palette, "")]
  rows.append(_row("path", [_text(r.path) for r in plan.runs]))
  rows.append(_row("objective", [_text(r.objective or "unknown") for r in plan.runs]))
  rows.append(_row("status", [_status(r.status) for r in plan.runs]))
  rows.append(_row("last step", [_text(r.last_step if r.last_step is not None else "—") for r in plan.runs],
                   numeric=True))
  rows.append(_row("train.steps", [_text(r.total_steps if r.total_steps is not None else "—") for r in plan.runs],
                   numeric=True))
  for metric in plan.table_metrics:
    rows.append(_row(metric, [_number(r.last_value(metric)) for r in plan.runs], numeric=True))
  return "<table>" + "".join(rows) + "</table>"


def _status(status: str) -> str:
  css = "finished" if status == "finished" else "in-progress" if status.startswith("in progress") else "muted"
  return f'<span class="{css}">{_text(status)}</span>'


def _number(value: Optional[float]) -> str:
  if value is None:
    return "—"
  if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
    return f"{int(value):,}"
  return f"{value:.5g}"


def _row(label: str, cells: list[str], numeric: bool = False) -> str:
  css = ' class="num"' if numeric else ""
  return f"<tr><th>{_text(label)}</th>" + "".join(f"<td{css}>{c}</td>" for c in cells) + "</tr>"


def _config_table(plan: ReportPlan, palette: list[str]) -> str:
  configs = [run.config for run in plan.runs]
  if all(c is None for c in configs):
    return '<p class="muted">no run has a config.json</p>'
  diff = config_diff.differing_fields(configs)
  if not diff:
    alone = " (one run)" if sum(c is not None for c in configs) == 1 else ""
    return f"<p>no differing fields{alone}</p>"
  rows = [_run_header(plan, palette, "field")]
  for field, values in diff.items():
    cells = ["—" if config is None else _text(config_diff.show(value)) for config, value in zip(configs, values)]
    rows.append(_row(field, cells))
  return "<table>" + "".join(rows) + "</table>"


def _plots(images: list[tuple[Plot, bytes]]) -> str:
  if not images:
    return "<h2>Plots</h2><p class=\"muted\">nothing to plot yet</p>"
  sections, current = [], None
  for plot, png in images:
    if plot.group != current:
      if current is not None:
        sections.append("</div>")
      current = plot.group
      heading = "Plots" if plot.group == SHARED_GROUP else f"Logged by only some runs: {plot.group}"
      sections.append(f"<h2>{_text(heading)}</h2><div class=\"plots\">")
    data = base64.b64encode(png).decode("ascii")
    sections.append(f'<figure><img alt="{_text(plot.title)}" data-metric="{_text(plot.metric)}" '
                    f'src="data:image/png;base64,{data}"></figure>')
  sections.append("</div>")
  return "\n".join(sections)
