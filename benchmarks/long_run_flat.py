"""A long run stays flat: host memory and step time at step 2,000 are those of step 200.

    .venv/bin/python benchmarks/long_run_flat.py [--steps 2000] [--workdir DIR]
        [--rss-growth 0.05] [--rss-slack-mb 50] [--time-growth 0.15]

Trains a tiny GPT (1 layer, width 64, MLP 128, seq 32, batch 8; a log row every 25 steps,
evaluation and a checkpoint every 500) in a subprocess, so the memory measured is the training
process's alone. From its metrics.jsonl it takes "perf/host_rss_mb" (resident memory) and
"perf/step_time_s" over the nine log rows around step 200 (after warm-up and the first
compile) and the last nine rows, prints both and their ratio, and exits 1 when memory (the
median at the end, or its peak after step 200) grew by more than `--rss-growth` (a fraction)
plus `--rss-slack-mb`, or step time by more than `--time-growth`. Step time is judged by each
window's lower quartile (its median is printed beside it): on a shared machine another job
stretches some rows at random, while a real slowdown raises every row. A leak (a list that keeps every
step's metrics, a buffer per checkpoint, device arrays never freed) or a slowdown (recompiles,
a loop cost that grows with the step) shows up here long before a real run runs out.
It also prints the least-squares slope of RSS after step 200, in MiB per 1,000 steps.
About 15-25 s on 2 cores (the steps take ~3 ms; JAX startup is most of it).
tests/test_faults_long_run.py runs it (slow).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
LOG_EVERY = 25
WINDOW_ROWS = 9  # log rows whose median smooths one figure (steps 100-300, 1800-2000)


def train_command(workdir: Path, data_dir: Path, steps: int) -> list[str]:
  return [sys.executable, "-m", "fmjax.main", "--config", f"{ROOT}/experiments/gpt.py:tiny",
          "--workdir", str(workdir),
          "--config.model.num_layers=1", "--config.model.embed_dim=64", "--config.model.mlp_dim=128",
          "--config.data.seq_len=32", "--config.train.batch_size=8", f"--config.train.steps={steps}",
          f"--config.train.log_every={LOG_EVERY}", "--config.train.eval_every=500",
          "--config.checkpoint.every=500", f"--config.data.data_dir={data_dir}"]


@dataclasses.dataclass(frozen=True)
class Drift:
  """One figure early and late in the run, and whether its growth stays inside the limit."""
  name: str
  unit: str
  early: float
  late: float
  limit: float  # the most `late` may be

  @property
  def ratio(self) -> float:
    return self.late / self.early

  @property
  def flat(self) -> bool:
    return self.late <= self.limit

  def line(self, early_step: int, late_step: int) -> str:
    late = "any later" if self.name.startswith("peak") else f"step ~{late_step}"
    return (f"{self.name:<10} step ~{early_step}: {self.early:9.3f} {self.unit:<4} {late}: "
            f"{self.late:9.3f} {self.unit:<4} ratio {self.ratio:.3f} "
            + ("(not judged)" if self.limit == float("inf") else
               f"(at most {self.limit:.3f}) {'flat' if self.flat else 'GREW'}"))


def read_rows(workdir: Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [row for row in map(json.loads, lines) if "perf/host_rss_mb" in row]


def window(rows: list[dict], key: str, center_step: int) -> list[float]:
  """`key` in the WINDOW_ROWS rows nearest `center_step` (the last rows for the final step:
  nothing lies beyond it)."""
  nearest = sorted(rows, key=lambda row: (abs(row["step"] - center_step), row["step"]))[:WINDOW_ROWS]
  return [row[key] for row in nearest]


def window_median(rows: list[dict], key: str, center_step: int) -> float:
  return statistics.median(window(rows, key, center_step))


def window_lower_quartile(rows: list[dict], key: str, center_step: int) -> float:
  """The window's fastest quarter: other processes on a shared machine only ever add time to
  a step, so a real slowdown is one that raises this floor, not just the median."""
  return statistics.quantiles(window(rows, key, center_step), n=4, method="inclusive")[0]


def drifts(rows: list[dict], early_step: int, late_step: int, rss_growth: float, rss_slack_mb: float,
           time_growth: float) -> list[Drift]:
  """RSS and step time late against early, and the peak RSS after the early window against
  early: memory that grows and is then handed back in one piece (the allocator returning a
  large block) would otherwise hide the growth before it."""
  rss0, rss1 = (window_median(rows, "perf/host_rss_mb", s) for s in (early_step, late_step))
  time0, time1 = (window_median(rows, "perf/step_time_s", s) * 1000 for s in (early_step, late_step))
  floor0, floor1 = (window_lower_quartile(rows, "perf/step_time_s", s) * 1000 for s in (early_step, late_step))
  peak = max(row["perf/host_rss_mb"] for row in rows if row["step"] >= early_step)
  rss_limit = rss0 * (1 + rss_growth) + rss_slack_mb
  return [Drift("host RSS", "MiB", rss0, rss1, rss_limit),
          Drift("peak RSS", "MiB", rss0, peak, rss_limit),
          Drift("step time", "ms", floor0, floor1, floor0 * (1 + time_growth)),
          Drift("(median)", "ms", time0, time1, float("inf"))]  # shown, not judged: load moves it


def rss_slope_mb_per_1k(rows: list[dict], from_step: int) -> Optional[float]:
  """Least-squares slope of RSS against step after warm-up: a slow leak's rate."""
  points = [(row["step"], row["perf/host_rss_mb"]) for row in rows if row["step"] >= from_step]
  if len(points) < 2:
    return None
  mean_x = statistics.fmean(x for x, _ in points)
  mean_y = statistics.fmean(y for _, y in points)
  cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
  var = sum((x - mean_x) ** 2 for x, _ in points)
  return 1000 * cov / var


def run(workdir: Path, data_dir: Path, steps: int) -> float:
  """Trains to `steps`; returns the wall time. Raises with the run's output if it fails."""
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  t0 = time.perf_counter()
  proc = subprocess.run(train_command(workdir, data_dir, steps), cwd=ROOT, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
  return time.perf_counter() - t0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--early-step", type=int, default=200)
  parser.add_argument("--workdir", default="", help="the run's workdir (default: a new temp dir); must not hold a run")
  parser.add_argument("--rss-growth", type=float, default=0.05, help="allowed fractional RSS growth")
  parser.add_argument("--rss-slack-mb", type=float, default=50.0, help="allowed RSS growth on top, MiB")
  parser.add_argument("--time-growth", type=float, default=0.15, help="allowed fractional step-time growth")
  args = parser.parse_args(argv)
  root = Path(args.workdir or tempfile.mkdtemp(prefix="long_run_flat_")).resolve()
  workdir, data_dir = root / "run", root / "data"
  if (workdir / "metrics.jsonl").exists():
    parser.error(f"{workdir} already holds a run: a resumed run would not measure one process")
  wall = run(workdir, data_dir, args.steps)
  rows = read_rows(workdir)
  results = drifts(rows, args.early_step, args.steps, args.rss_growth, args.rss_slack_mb, args.time_growth)
  slope = rss_slope_mb_per_1k(rows, args.early_step)
  print(f"{args.steps} steps in {wall:.0f} s, {len(rows)} log rows, workdir {workdir}")
  for drift in results:
    print(drift.line(args.early_step, args.steps))
  if slope is not None:
    print(f"host RSS slope after step {args.early_step}: {slope:+.2f} MiB per 1,000 steps")
  return 0 if all(d.flat for d in results) else 1


if __name__ == "__main__":
  sys.exit(main())
