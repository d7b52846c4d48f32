"""Drawing a report's plots with matplotlib's Agg canvas: one PNG per metric, or all of them in
one grid. No pyplot: figures are plain objects, so drawing leaves no global state behind and
needs no display.

Train metrics (and throughput) are lines, each run's raw curve faint under its smoothed one in
the same colour; eval metrics are markers joined by thin lines. A run has one colour in every
plot (its place in the report).
"""

import io
import math

from matplotlib import colormaps, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from fmjax.report_plan import Plot

PLOT_SIZE_IN = (6.4, 4.0)
DPI = 100  # so one plot's PNG is 640 x 400 pixels
GRID_COLUMNS = 3
RAW_ALPHA = 0.25


def run_colors(count: int) -> list[str]:
  """Distinct colours for `count` runs, as #rrggbb: tab10, then tab20, then a sweep of a
  perceptual colormap for larger comparisons."""
  if count <= 10:
    palette = colormaps["tab10"]
    return [colors.to_hex(palette(i)) for i in range(count)]
  if count <= 20:
    palette = colormaps["tab20"]
    return [colors.to_hex(palette(i)) for i in range(count)]
  palette = colormaps["viridis"]
  return [colors.to_hex(palette(i / (count - 1))) for i in range(count)]


def draw(axes, plot: Plot, palette: list[str], smooth: float, legend: bool = True) -> None:
  """`plot` into matplotlib `axes`. Each run's main line carries the run's name as its label;
  the faint raw line is labelled '_<name> (raw)', which legends leave out."""
  for curve in plot.curves:
    color = palette[curve.run_index]
    if plot.style == "points":
      axes.plot(curve.steps, curve.values, color=color, linewidth=0.8, marker="o", markersize=4, label=curve.run)
    elif smooth > 0:
      axes.plot(curve.steps, curve.values, color=color, linewidth=1.0, alpha=RAW_ALPHA, label=f"_{curve.run} (raw)")
      axes.plot(curve.steps, curve.smoothed, color=color, linewidth=2.0, label=curve.run)
    else:
      axes.plot(curve.steps, curve.values, color=color, linewidth=1.5, label=curve.run)
  axes.set_title(plot.title, fontsize=10)
  axes.set_xlabel("step", fontsize=9)
  axes.tick_params(labelsize=8)
  axes.grid(True, alpha=0.3)
  if plot.metric == "perf/mfu":
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
  if legend:
    axes.legend(fontsize=8, loc="best")


def figure(plot: Plot, palette: list[str], smooth: float) -> Figure:
  fig = Figure(figsize=PLOT_SIZE_IN, dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  draw(fig.add_subplot(), plot, palette, smooth)
  return fig


def grid_figure(plots: list[Plot], palette: list[str], run_names: list[str], smooth: float) -> Figure:
  """Every plot in one figure, GRID_COLUMNS wide, with one legend for all runs above them."""
  columns = min(GRID_COLUMNS, max(len(plots), 1))
  rows = max(math.ceil(len(plots) / columns), 1)
  fig = Figure(figsize=(PLOT_SIZE_IN[0] * columns, PLOT_SIZE_IN[1] * rows + 0.5), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  for i, plot in enumerate(plots):
    draw(fig.add_subplot(rows, columns, i + 1), plot, palette, smooth, legend=False)
  if not plots:
    fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
  # Legend entries need no artist in the figure: one line per run, in its colour.
  handles = [Line2D([], [], color=color, linewidth=2.0) for color in palette]
  fig.legend(handles, run_names, loc="outside upper center", ncols=min(len(run_names), 4), fontsize=9)
  return fig


def png_bytes(fig: Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  return buffer.getvalue()
