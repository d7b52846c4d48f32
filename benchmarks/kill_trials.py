"""kill -9 a tiny training run at random moments; check that relaunching it loses nothing.

    .venv/bin/python benchmarks/kill_trials.py --trials 20 [--steps 40] [--seed 0] [--workroot DIR]

First one uninterrupted run of a tiny GPT (1 layer, seq 32, batch 4, a log row and a loss every
step, an async checkpoint every 5 steps, keep 3) gives the reference losses and wall time. Then
each trial launches the same command in a fresh workdir and sends SIGKILL to its process group:
either at a moment drawn uniformly over the reference's wall time (startup, compile, training
and saving all get their share), or aimed at a checkpoint save (the moment the n-th
`<step>.orbax-checkpoint-tmp` folder appears, plus a random part of a save's duration). Some
trials kill the relaunch too. The last relaunch runs to completion, and the trial passes when:

  - it exits 0 at the final step;
  - every launch after a kill started from the newest *complete* (numerically named) checkpoint
    listed right after that kill, or from step 0 when there was none: no temporary folder is
    ever restored;
  - the finished workdir holds the last `keep` multiples of `every` (so no leftover temporary
    folder blocked a later save), and every line of metrics.jsonl parses;
  - for every step, the last loss metrics.jsonl records equals the reference's, bit for bit,
    and so does the final evaluation loss;
  - the steps recomputed after a kill are no more than the steps since the last complete save.

One line per trial (kill time, phase, newest complete checkpoint, resumed step, steps
recomputed, verdict), then a tally; the exit status is 1 if any trial failed. Launches run one at
a time (pinned to `--cores`, default 2); each costs ~5-10 s of JAX startup and compile on a
2-core CPU, so 20 trials take ~5 minutes (9.5 with other jobs on the cores). Each launch's
timestamped output is kept beside its workdir, `trial_NN_launchK.log`.
tests/test_faults_kill.py drives the same functions.
"""

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax writes a save here, then renames it to <step>
LAUNCH_TIMEOUT_S = 300.0
POLL_S = 0.001  # a tiny model's save lives ~150 ms on 2 cores: polling this often sees each one

_RESUMED = re.compile(r"resumed from \S+ at step (\d+)")
_STARTING = re.compile(r"steps (\d+) -> (\d+)")
_COMPILED = "compiled the train step"
_DONE = re.compile(r"done at step (\d+)")


@dataclasses.dataclass(frozen=True)
class RunShape:
  """The tiny run every launch trains: its length and checkpoint cadence."""
  steps: int = 40
  every: int = 5
  keep: int = 3

  def expected_checkpoints(self) -> tuple[int, ...]:
    """What a finished run keeps: the last `keep` saves (every multiple of `every`, and the end)."""
    saves = sorted(set(range(self.every, self.steps + 1, self.every)) | {self.steps})
    return tuple(saves[-self.keep:])


def train_command(workdir: Path, data_dir: Path, shape: RunShape) -> list[str]:
  return [sys.executable, "-m", "fmjax.main", "--config", f"{ROOT}/experiments/gpt.py:tiny",
          "--workdir", str(workdir),
          "--config.model.num_layers=1", "--config.data.seq_len=32", "--config.train.batch_size=4",
          "--config.data.eval_batches=2", "--config.optim.warmup_steps=5",
          "--config.train.log_every=1", f"--config.train.steps={shape.steps}",
          f"--config.checkpoint.every={shape.every}", f"--config.checkpoint.keep={shape.keep}",
          f"--config.data.data_dir={data_dir}"]


# --- one launch -----------------------------------------------------------------------------


class Launch:
  """A training process in its own process group, with its output lines timestamped as they
  arrive (the phase of a kill is read from what the run had printed by then)."""

  def __init__(self, command: list[str], cores: int):
    prefix = _pin_prefix(cores)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing: this is a CPU fault test
    self.started = time.perf_counter()
    self.started_ns = time.time_ns()  # wall clock, comparable with file timestamps
    self.proc = subprocess.Popen(prefix + command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, cwd=ROOT, env=env, start_new_session=True)
    self.lines: list[tuple[float, str]] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.append((time.perf_counter() - self.started, line.rstrip("\n")))

  def elapsed(self) -> float:
    return time.perf_counter() - self.started

  def running(self) -> bool:
    return self.proc.poll() is None

  def kill(self) -> None:
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.wait()

  def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> int:
    try:
      self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()
    self._reader.join(timeout=10)
    return self.proc.returncode

  def output(self) -> str:
    return "\n".join(text for _, text in self.lines)

  def first_time(self, needle: str) -> Optional[float]:
    return next((t for t, text in self.lines if needle in text), None)


def _pin_prefix(cores: int) -> list[str]:
  """Run on `cores` CPUs where the machine has more (taskset execs, so the pid stays the run's)."""
  available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if cores <= 0 or len(available) <= cores or not shutil.which("taskset"):
    return []
  return ["taskset", "-c", ",".join(str(c) for c in available[:cores])]


def start_step(output: str) -> Optional[int]:
  """The step a launch started training from ('steps S -> T'), None if it never said."""
  match = _STARTING.search(output)
  return int(match.group(1)) if match else None


def resumed_step(output: str) -> Optional[int]:
  match = _RESUMED.search(output)
  return int(match.group(1)) if match else None


# --- what a workdir holds ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """checkpoints/ at one moment: complete steps (numeric folders) and temporary folders, each
  with whether the launch being watched touched it (ctime after its start) or an earlier one
  left it."""
  complete: tuple[int, ...] = ()
  temporary: tuple[str, ...] = ()
  temporary_touched: tuple[str, ...] = ()

  @property
  def newest(self) -> Optional[int]:
    return max(self.complete) if self.complete else None


def checkpoint_snapshot(workdir: Path, since_ns: int = 0) -> Snapshot:
  folder = workdir / "checkpoints"
  complete, temporary, touched = [], [], []
  try:
    entries = list(os.scandir(folder))
  except FileNotFoundError:
    return Snapshot()
  for entry in entries:
    if entry.name.isdigit():
      complete.append(int(entry.name))
    elif TMP_MARK in entry.name:
      temporary.append(entry.name)
      try:
        if entry.stat().st_ctime_ns >= since_ns:
          touched.append(entry.name)
      except FileNotFoundError:  # renamed into place or removed while we looked
        pass
  return Snapshot(tuple(sorted(complete)), tuple(sorted(temporary)), tuple(sorted(touched)))


def read_metrics(workdir: Path) -> tuple[list[dict], list[str]]:
  """Rows of metrics.jsonl, and the lines that do not parse (a kill can cut the last one)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return [], []
  rows, broken = [], []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      broken.append(line)
  return rows, broken


def last_losses(rows: list[dict]) -> dict[int, float]:
  """step -> the train loss the file records *last* for it (a relaunch re-logs recomputed steps)."""
  return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def final_eval_loss(rows: list[dict]) -> Optional[float]:
  evals = [row["eval/loss"] for row in rows if "eval/loss" in row]
  return evals[-1] if evals else None


def progress(rows: list[dict]) -> int:
  """The furthest step the workdir's runs trained (and logged: a row every step)."""
  return max((row["step"] for row in rows if "train/loss" in row), default=0)


# --- the reference run ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
  shape: RunShape
  losses: dict
  eval_loss: Optional[float]
  wall_s: float
  compiled_at_s: float  # when the train step was ready: training (and saving) starts here
  data_dir: Path


def run_reference(workroot: Path, shape: RunShape, cores: int = 2) -> Reference:
  """One uninterrupted run; it also builds the offline corpus every trial then shares."""
  workdir, data_dir = workroot / "reference", workroot / "data"
  launch = Launch(train_command(workdir, data_dir, shape), cores)
  code = launch.wait()
  wall = launch.elapsed()
  if code != 0:
    raise RuntimeError(f"the reference run failed ({code}):\n{launch.output()}")
  rows, broken = read_metrics(workdir)
  losses = last_losses(rows)
  if broken or sorted(losses) != list(range(1, shape.steps + 1)):
    raise RuntimeError(f"the reference run logged steps {sorted(losses)}, broken lines {broken}")
  compiled_at = launch.first_time(_COMPILED)
  return Reference(shape, losses, final_eval_loss(rows), wall, compiled_at or 0.0, data_dir)


# --- kills ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KillPlan:
  """When to kill one launch: `at_s` after it starts ("random"); `delay_s` after the
  `save_number`-th temporary checkpoint folder it creates appears ("save"); or `delay_s` after
  it prints step `after_step` ("step": a moment inside training, whatever the machine's speed)."""
  aim: str
  at_s: float = 0.0
  save_number: int = 1
  after_step: int = 1
  delay_s: float = 0.0

  def describe(self) -> str:
    if self.aim == "save":
      return f"save #{self.save_number} +{self.delay_s * 1000:.0f} ms"
    if self.aim == "step":
      return f"step {self.after_step} +{self.delay_s * 1000:.0f} ms"
    return "uniform"


@dataclasses.dataclass(frozen=True)
class TrialPlan:
  index: int
  kills: tuple  # KillPlan for the first launch, then (optionally) one for its relaunch


@dataclasses.dataclass(frozen=True)
class KillRecord:
  plan: KillPlan
  at_s: Optional[float]   # when SIGKILL was sent, seconds after launch; None: it exited first
  phase: str              # startup / compile / training / saving / finishing / exited
  started_from: Optional[int]   # what this launch printed it started from, if it got that far
  resumed_from: Optional[int]
  after: Snapshot         # checkpoints/ right after the process died
  save_interrupted: bool  # a temporary folder this launch was writing outlived it
  progress: int           # furthest step logged in the workdir at the kill


def _phase(launch: Launch, snapshot: Snapshot, total_steps: int) -> str:
  if snapshot.temporary_touched:
    return "saving"
  output = launch.output()
  if f"step {total_steps}/{total_steps}" in output:
    return "finishing"   # last step logged: final eval, waiting for the last save, closing
  if _COMPILED in output:
    return "training"
  if _STARTING.search(output):
    return "compile"
  return "startup"       # imports, data, building the state or restoring a checkpoint


def _wait_for_kill_moment(launch: Launch, plan: KillPlan, workdir: Path) -> bool:
  """Sleeps until the plan's moment; False when the process ended first."""
  if plan.aim == "random":
    while launch.running() and launch.elapsed() < plan.at_s:
      time.sleep(min(POLL_S * 5, max(plan.at_s - launch.elapsed(), 0)))
    return launch.running()
  if plan.aim == "step":
    needle = f"step {plan.after_step}/"
    while launch.running() and launch.first_time(needle) is None:
      time.sleep(POLL_S)
    if plan.delay_s:
      time.sleep(plan.delay_s)
    return launch.running()
  seen: set = set()
  deadline = time.perf_counter() + LAUNCH_TIMEOUT_S
  while launch.running() and time.perf_counter() < deadline:
    seen.update(checkpoint_snapshot(workdir, launch.started_ns).temporary_touched)
    if len(seen) >= plan.save_number:
      if plan.delay_s:
        time.sleep(plan.delay_s)
      return launch.running()
    time.sleep(POLL_S)
  return False


def kill_launch(launch: Launch, plan: KillPlan, workdir: Path, shape: RunShape) -> KillRecord:
  alive = _wait_for_kill_moment(launch, plan, workdir)
  at_s = launch.elapsed() if alive else None
  phase = _phase(launch, checkpoint_snapshot(workdir, launch.started_ns), shape.steps) if alive else "exited"
  launch.kill()
  after = checkpoint_snapshot(workdir, launch.started_ns)
  rows, _ = read_metrics(workdir)
  output = launch.output()
  return KillRecord(plan, at_s, phase, start_step(output), resumed_step(output), after,
                    bool(after.temporary_touched) and alive, progress(rows))


# --- one trial --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrialResult:
  plan: TrialPlan
  kills: tuple           # KillRecord per kill
  returncode: int
  output: str            # the final launch's
  final: Snapshot
  losses: dict
  eval_loss: Optional[float]
  broken_lines: tuple
  wall_s: float
  failures: tuple = ()

  @property
  def survived(self) -> bool:
    return not self.failures

  @property
  def lost_data(self) -> bool:
    return any(f.startswith(DATA_FAILURES) for f in self.failures)


DATA_FAILURES = ("loss", "eval loss", "resumed", "started", "recomputed", "missing step", "broken")


def run_trial(plan: TrialPlan, reference: Reference, workroot: Path, cores: int = 2) -> TrialResult:
  workdir = workroot / f"trial_{plan.index:02d}"
  if workdir.exists():
    shutil.rmtree(workdir)
  command = train_command(workdir, reference.data_dir, reference.shape)
  t0 = time.perf_counter()
  kills = []
  for number, kill_plan in enumerate(plan.kills, start=1):
    launch = Launch(command, cores)
    kills.append(kill_launch(launch, kill_plan, workdir, reference.shape))
    _save_log(workroot, plan.index, number, launch)
  final = Launch(command, cores)
  code = final.wait()
  _save_log(workroot, plan.index, len(plan.kills) + 1, final)
  rows, broken = read_metrics(workdir)
  result = TrialResult(plan, tuple(kills), code, final.output(), checkpoint_snapshot(workdir), last_losses(rows),
                       final_eval_loss(rows), tuple(broken), time.perf_counter() - t0)
  return dataclasses.replace(result, failures=tuple(check_trial(result, reference)))


def _save_log(workroot: Path, index: int, number: int, launch: Launch) -> None:
  """What each launch printed, timestamped: the evidence when a trial fails."""
  text = "".join(f"{t:8.3f} {line}\n" for t, line in launch.lines)
  (workroot / f"trial_{index:02d}_launch{number}.log").write_text(text)


def check_trial(result: TrialResult, reference: Reference) -> list[str]:
  """Every way the trial could have lost or corrupted something; empty when it survived."""
  shape = reference.shape
  failures = []
  if result.returncode != 0 or f"done at step {shape.steps}" not in result.output:
    failures.append(f"final launch exited {result.returncode}: {result.output[-400:]!r}")

  # Each launch after a kill: from the newest complete checkpoint listed right after that kill.
  later = [(k.started_from, k.resumed_from) for k in result.kills[1:]]
  later.append((start_step(result.output), resumed_step(result.output)))
  for number, (kill, (started, resumed)) in enumerate(zip(result.kills, later), start=1):
    expected = kill.after.newest
    if started is None and number <= len(result.kills) - 1:
      continue  # killed again before it said where it started
    if started != (expected or 0):
      failures.append(f"started at step {started} after kill {number}, newest complete was {expected}")
    if resumed != expected:
      failures.append(f"resumed from {resumed} after kill {number}, newest complete was {expected}")
    if started is not None:
      recomputed, since_save = kill.progress - started, kill.progress - (expected or 0)
      if recomputed > since_save:
        failures.append(f"recomputed {recomputed} steps after kill {number}, only {since_save} since the save")

  if result.final.complete != shape.expected_checkpoints():
    failures.append(f"checkpoints {list(result.final.complete)} at the end, expected "
                    f"{list(shape.expected_checkpoints())} (temporary: {list(result.final.temporary)})")
  if result.broken_lines:
    failures.append(f"broken metrics lines: {list(result.broken_lines)[:3]}")
  missing = sorted(set(reference.losses) - set(result.losses))
  if missing:
    failures.append(f"missing steps {missing}")
  differing = [s for s in sorted(reference.losses) if s in result.losses and result.losses[s] != reference.losses[s]]
  if differing:
    s = differing[0]
    failures.append(f"loss differs at steps {differing} (step {s}: {result.losses[s]!r} vs {reference.losses[s]!r})")
  if result.eval_loss != reference.eval_loss:
    failures.append(f"eval loss {result.eval_loss!r}, reference {reference.eval_loss!r}")
  return failures


# --- many trials ------------------------------------------------------------------------------


def plan_trials(count: int, seed: int, reference: Reference, save_share: float = 0.4,
                second_kill_share: float = 0.3) -> list[TrialPlan]:
  """`save_share` of the first kills aimed at a save, the rest uniform over the reference's wall
  time; `second_kill_share` of trials also kill the relaunch, half of those at a save."""
  rng = random.Random(seed)
  saves = len(range(reference.shape.every, reference.shape.steps + 1, reference.shape.every))
  aimed = set(rng.sample(range(count), round(count * save_share)))

  def random_kill():
    return KillPlan("random", at_s=rng.uniform(0.0, reference.wall_s))

  def save_kill(most: int):
    # The delay spreads kills over a save: just created, arrays being written, committing.
    return KillPlan("save", save_number=rng.randint(1, max(most, 1)), delay_s=rng.choice([0.0, rng.uniform(0, 0.15)]))

  plans = []
  for index in range(count):
    kills = [save_kill(saves) if index in aimed else random_kill()]
    if rng.random() < second_kill_share:
      kills.append(save_kill(2) if rng.random() < 0.5 else random_kill())
    plans.append(TrialPlan(index, tuple(kills)))
  return plans


def format_trial(result: TrialResult) -> str:
  parts = []
  for number, kill in enumerate(result.kills):
    nxt = result.kills[number + 1] if number + 1 < len(result.kills) else None
    resumed = nxt.started_from if nxt else start_step(result.output)
    recomputed = "-" if resumed is None else str(kill.progress - resumed)
    when = "  exited first" if kill.at_s is None else f"kill @ {kill.at_s:5.2f} s"
    newest = "none" if kill.after.newest is None else kill.after.newest
    parts.append(f"{when} ({kill.plan.describe():>15}) {kill.phase:<9} "
                 f"newest complete {newest:>4} progress {kill.progress:>3} "
                 f"-> resumed {'?' if resumed is None else resumed:>3}, recomputed {recomputed:>2}"
                 + (" [save cut]" if kill.save_interrupted else ""))
  verdict = "survived" if result.survived else "FAILED: " + "; ".join(result.failures)
  leftover = f" ({len(result.final.temporary)} tmp left)" if result.final.temporary else ""
  return f"trial {result.plan.index:02d} | " + " | ".join(parts) + f" | {result.wall_s:.0f} s | {verdict}{leftover}"


def tally(results: list[TrialResult]) -> str:
  survived = sum(r.survived for r in results)
  lost = sum(r.lost_data for r in results)
  during_save = sum(any(k.save_interrupted for k in r.kills) for r in results)
  other = len(results) - survived - lost
  line = f"{len(results)} trials: {survived} survived, {lost} lost data, {during_save} killed during a save"
  return line + (f", {other} failed otherwise" if other else "")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--steps", type=int, default=RunShape.steps)
  parser.add_argument("--every", type=int, default=RunShape.every)
  parser.add_argument("--keep", type=int, default=RunShape.keep)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workroot", default="", help="where workdirs go (default: a new temp dir)")
  parser.add_argument("--cores", type=int, default=2, help="CPUs the launches are pinned to")
  args = parser.parse_args(argv)
  workroot = Path(args.workroot or tempfile.mkdtemp(prefix="kill_trials_")).resolve()
  workroot.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  reference = run_reference(workroot, RunShape(args.steps, args.every, args.keep), args.cores)
  print(f"reference: {args.steps} steps in {reference.wall_s:.1f} s (train step ready at "
        f"{reference.compiled_at_s:.1f} s), workroot {workroot}", flush=True)
  results = []
  for plan in plan_trials(args.trials, args.seed, reference):
    results.append(run_trial(plan, reference, workroot, args.cores))
    print(format_trial(results[-1]), flush=True)
  print(tally(results) + f" ({time.perf_counter() - t0:.0f} s in all)", flush=True)
  return 0 if all(r.survived for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
