"""fmjax.sweep: a grid of real `fmjax.main` runs, killed and relaunched; failing runs; bad input.

The scenario (one module fixture, three training processes in all): a 2x1 grid
(optim.learning_rate=1e-3,3e-3 x model.num_layers=1) of the smallest GPT. The sweep is
SIGKILLed during its second run, once that run has saved a checkpoint (the test waits for one,
so the relaunch must resume from it, not start from scratch); relaunched, it must skip the
first run without touching a file and finish the second from that checkpoint; relaunched
again, it must skip both without starting a training process. The tests check what each
launch left behind.
"""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import pytest

from conftest import ROOT
from fmjax import config_files, sweep, sweep_grid

STEPS = 30  # not the 3 of the other tests: the kill must land inside the second run, after a save
SMALL = ["--config.model.embed_dim=32", "--config.model.mlp_dim=64", "--config.data.seq_len=16",
         "--config.train.batch_size=8", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.data.eval_batches=1", "--config.checkpoint.every=1",
         "--config.optim.warmup_steps=1"]
NAMES = ["model.num_layers=1,optim.learning_rate=0.001", "model.num_layers=1,optim.learning_rate=0.003"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")  # as in conftest: no TPU plugin probing in the runs
GPT = f"{ROOT}/experiments/gpt.py:tiny"


def sweep_command(root, data_dir, *axes):
  axes = axes or ("--set", "optim.learning_rate=1e-3,3e-3", "--set", "model.num_layers=1")
  return [sys.executable, "-m", "fmjax.sweep", "--config", GPT, "--workdir", str(root), *axes,
          "--", *SMALL, f"--config.data.data_dir={data_dir}"]


def complete_checkpoints(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def snapshot(workdir: pathlib.Path) -> dict:
  """Every file under the workdir: size, modification time and content hash."""
  return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def is_gone(pid: int) -> bool:
  try:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
  except FileNotFoundError:
    return True
  return "\nState:\tZ" in status  # dead, waiting to be reaped by whoever adopted it


def metrics_steps(workdir: pathlib.Path) -> list[int]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  return sorted(row["step"] for row in rows if "train/loss" in row)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sweep")
  root, command = tmp / "root", sweep_command(tmp / "root", tmp / "data")
  first, second = root / NAMES[0], root / NAMES[1]
  t0 = time.time()
  killed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
  deadline = time.time() + 300
  while not complete_checkpoints(second) and killed.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert killed.poll() is None, f"the sweep ended before its second run saved:\n{killed.communicate()[0]}"
  if not complete_checkpoints(second):
    killed.kill()
    pytest.fail(f"no checkpoint of the second run in time:\n{killed.communicate()[0]}")
  child = json.loads((second / ".lock").read_text())["pid"]  # the second run's process
  killed.kill()
  killed_output = killed.communicate()[0]
  deadline = time.time() + 10
  while not is_gone(child) and time.time() < deadline:
    time.sleep(0.05)
  s = types.SimpleNamespace(root=root, first=first, second=second, killed_output=killed_output,
                            killed_returncode=killed.returncode, child_gone=is_gone(child),
                            saved_at_kill=complete_checkpoints(second), first_before=snapshot(first))
  s.killed_s = time.time() - t0

  t0 = time.time()
  s.relaunch = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  s.relaunch_s = time.time() - t0
  s.first_after = snapshot(first)
  s.both_before = {name: snapshot(root / name) for name in NAMES}

  t0 = time.time()
  s.again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  s.again_s = time.time() - t0
  s.both_after = {name: snapshot(root / name) for name in NAMES}
  print(f"killed after {s.killed_s:.1f} s, relaunch {s.relaunch_s:.1f} s, second relaunch {s.again_s:.1f} s")
  return s


def test_each_run_trains_its_grid_point(scenario):
  assert scenario.relaunch.returncode == 0, scenario.relaunch.stdout + scenario.relaunch.stderr
  for name, learning_rate in zip(NAMES, [0.001, 0.003]):
    config = json.loads((scenario.root / name / "config.json").read_text())
    assert (config["optim"]["learning_rate"], config["model"]["num_layers"]) == (learning_rate, 1)
    assert (config["model"]["embed_dim"], config["train"]["steps"]) == (32, STEPS)  # the fixed overrides
    assert metrics_steps(scenario.root / name)[-1] == STEPS
    assert complete_checkpoints(scenario.root / name)[-1] == STEPS
  grid = json.loads((scenario.root / "sweep.json").read_text())
  assert grid["fields"] == ["optim.learning_rate", "model.num_layers"]
  assert grid["values"] == {"optim.learning_rate": [0.001, 0.003], "model.num_layers": [1]}
  assert [r["name"] for r in grid["runs"]] == NAMES
  assert [r["settings"] for r in grid["runs"]] == [{"optim.learning_rate": 0.001, "model.num_layers": 1},
                                                  {"optim.learning_rate": 0.003, "model.num_layers": 1}]


def test_a_killed_sweep_kills_its_run_and_resumes_it(scenario):
  out = scenario.killed_output
  assert scenario.killed_returncode == -9
  assert f"[1/2] {NAMES[0]}: finished at step {STEPS}" in out and f"[2/2] {NAMES[1]}: started" in out
  assert scenario.child_gone, "the second run kept training after the sweep was killed"
  saved = scenario.saved_at_kill[-1]
  assert 1 <= saved < STEPS

  out = scenario.relaunch.stdout
  assert f"[1/2] {NAMES[0]}: skipped: finished" in out
  assert f"[2/2] {NAMES[1]}: resumed from step {saved}" in out
  assert f"at step {saved}" in out and f"steps {saved} -> {STEPS}" in out  # fmjax.main's own lines
  assert f"[2/2] {NAMES[1]}: finished at step {STEPS}" in out
  assert scenario.first_after == scenario.first_before, "the relaunch touched the finished first run"


def test_a_finished_sweep_is_skipped_without_training(scenario):
  again = scenario.again
  assert again.returncode == 0, again.stdout + again.stderr
  assert [line for line in again.stdout.splitlines() if line.startswith("[")] == [
      f"[1/2] {NAMES[0]}: skipped: finished", f"[2/2] {NAMES[1]}: skipped: finished"]
  assert "causal_lm:" not in again.stdout  # no fmjax.main started
  # Not a file of either run changed; a started run would at least have rewritten its .lock.
  assert scenario.both_after == scenario.both_before
  table = again.stdout[again.stdout.index("\nrun "):]
  for name in NAMES:
    assert any(line.startswith(name) and " finished " in line and f"{STEPS}/{STEPS}" in line and "eval/loss" in line
               for line in table.splitlines())


def test_the_report_names_every_run(scenario):
  report = scenario.root / "report.html"
  assert report.exists(), scenario.again.stdout
  assert f"report: {report}" in scenario.again.stdout
  page = report.read_text()
  for name in NAMES:
    assert name in page


def test_the_report_of_the_two_real_runs_diffs_their_one_field_and_overlays_both(scenario):
  """The sweep's two trained runs differ in the learning rate alone: the report's config diff is
  that field, and every shared train metric is drawn for both runs over every step."""
  from fmjax import config_diff, report
  plan = report.plan_report([str(scenario.root)])
  assert [run.name for run in plan.runs] == NAMES
  assert config_diff.differing_fields([run.config for run in plan.runs]) == {"optim.learning_rate": [0.001, 0.003]}
  loss = next(p for p in plan.plots if p.metric == "train/loss")
  assert [c.run for c in loss.curves] == NAMES
  assert all(list(c.steps) == list(range(1, STEPS + 1)) for c in loss.curves)  # one point per step
  assert loss.curves[0].values != loss.curves[1].values
  page = (scenario.root / "report.html").read_text()
  assert "optim.learning_rate" in page


def test_a_changed_config_is_refused_without_training(scenario, capsys):
  """Relaunched with another fixed override, each run's workdir holds a different run: both are
  reported failed with the fields that differ, and nothing is started or written in them."""
  before = {name: snapshot(scenario.root / name) for name in NAMES}
  command = sweep_command(scenario.root, "unused")
  command[command.index("--config.model.embed_dim=32")] = "--config.model.embed_dim=64"
  command.insert(command.index("--"), "--no_report")
  status = sweep.main(command[3:])  # in this process: nothing in it may start a run
  out = capsys.readouterr().out
  assert status == 1
  for index, name in enumerate(NAMES, 1):
    assert (f"[{index}/2] {name}: failed: workdir {scenario.root / name} holds a different run (checkpoint "
            f"step {STEPS}): config.model.embed_dim: 32 in the run, 64 now") in out
  assert "causal_lm:" not in out
  assert {name: snapshot(scenario.root / name) for name in NAMES} == before


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path):
  """Both heads counts are invalid for embed_dim 32: each run fails at fmjax.main's validation,
  and the sweep still launches the second after the first failed."""
  proc = subprocess.run(sweep_command(tmp_path / "root", tmp_path / "data", "--set", "model.num_heads=3,5"),
                        capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  for index, heads in [(1, 3), (2, 5)]:
    assert (f"[{index}/2] model.num_heads={heads}: failed: config.model.embed_dim=32 must be divisible by "
            f"config.model.num_heads={heads}") in proc.stdout
  assert "report skipped: no run has written anything yet" in proc.stdout


# A stand-in for a training run: says it is ready, then waits (silently: a run between log lines)
# for SIGTERM, on which it "saves" and exits 0, as fmjax.main does.
PATIENT_RUN = """
import os, signal, sys, time
asked = []
signal.signal(signal.SIGTERM, lambda *_: asked.append(True))
open(sys.argv[1], "w").write(str(os.getpid()))
print("ready", flush=True)
deadline = time.time() + 60
while not asked and time.time() < deadline:
  time.sleep(0.01)
print("saved on SIGTERM" if asked else "never asked", flush=True)
"""
# The sweep's side: runs the stand-in through child_process, then prints the outcome.
SWEEP_SIDE = """
import dataclasses, json, sys
from fmjax import child_process
outcome = child_process.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], echo=print)
print(json.dumps(dataclasses.asdict(outcome)), flush=True)
"""


def start_sweep_side(tmp_path):
  pid_file = tmp_path / "run.pid"
  sweep_side = subprocess.Popen([sys.executable, "-c", SWEEP_SIDE, PATIENT_RUN, str(pid_file)], stdout=subprocess.PIPE,
                                text=True, cwd=ROOT, env=ENV, start_new_session=True)  # its own group, to signal
  assert sweep_side.stdout.readline().strip() == "ready"
  return sweep_side, int(pid_file.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_dies_with_its_sweep(tmp_path):
  """SIGKILL of the sweep kills a run that is not printing (which a closed pipe would not stop)."""
  sweep_side, run_pid = start_sweep_side(tmp_path)
  sweep_side.kill()
  sweep_side.wait()
  deadline = time.time() + 5
  while not is_gone(run_pid) and time.time() < deadline:
    time.sleep(0.01)
  assert is_gone(run_pid), "the run outlived the killed sweep"


def test_ctrl_c_asks_the_run_to_save(tmp_path):
  """SIGINT to the whole process group, as Ctrl-C sends it: the run ignores it, and the sweep
  passes SIGTERM on, so the run saves and exits cleanly."""
  sweep_side, _ = start_sweep_side(tmp_path)
  os.killpg(sweep_side.pid, signal.SIGINT)
  out = sweep_side.communicate(timeout=30)[0].splitlines()
  assert out[0] == "saved on SIGTERM"
  assert json.loads(out[-1]) == {"returncode": 0, "error_line": "", "interrupted_by": signal.SIGINT}


def run_in_process(capsys, *argv):
  status = sweep.main(list(argv))
  captured = capsys.readouterr()
  return status, captured.err.strip().splitlines()


@pytest.mark.parametrize("args,message", [
    (["--set", "model.num_layer=1,2"], "error: --set model.num_layer: no such config field (did you mean model.num_layers?)"),
    (["--set", "model.num_layers=1,two"], "error: --set model.num_layers: 'two' is not an int; the field holds 4"),
    (["--set", "optim.learning_rate=fast"], "error: --set optim.learning_rate: 'fast' is not a float; the field holds 0.003"),
    (["--set", "model.scan_layers=maybe"], "error: --set model.scan_layers: 'maybe' is not a bool (true, false, 1 or 0); the field holds False"),
    (["--set", "model.num_layers=2,2"], "error: --set model.num_layers: the value 2 is given twice"),
    (["--set", "model=1"], "error: --set model: a config section, not a field"),
    (["--set", "model.num_layers"], "error: --set 'model.num_layers': expected FIELD=V1,V2,..."),
    ([], "error: give at least one --set FIELD=V1,V2,..."),
    (["--set", "seed=1", "--", "--config.train.step=3"], "error: --config.train.step: no such config field"),
    (["--set", "seed=1", "--", "--config.train.steps=many"], "error: --config.train.steps: 'many' is not an int"),
    (["--set", "seed=1", "--", "--config.seed=2"], "error: config.seed: given both by --set and after --; give it once"),
    (["--set", "seed=1", "--", "train.steps=3"], "error: 'train.steps=3' after --: expected --config.FIELD=VALUE"),
    (["--set", "seed=1", "--bogus"], "error: unrecognized arguments: --bogus"),
])
def test_bad_grid_is_one_line_and_exit_2(tmp_path, capsys, args, message):
  status, err = run_in_process(capsys, "--config", GPT, "--workdir", str(tmp_path / "root"), *args)
  assert status == 2 and len(err) == 1 and err[0].startswith(message), err
  assert not (tmp_path / "root").exists(), "nothing may be written before everything is checked"


@pytest.mark.parametrize("config,message", [
    ("experiments/nope.py:tiny", "error: --config experiments/nope.py:tiny: no such file"),
    ("experiments/gpt.py:huge", "error: --config experiments/gpt.py:huge: unknown variant 'huge'; choose one of"),
    ("experiments/clip.py:tiny", "error: --set data.pixel_mean: a tuple field cannot be swept"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, config, message):
  monkeypatch.chdir(ROOT)
  status, err = run_in_process(capsys, "--config", config, "--workdir", str(tmp_path / "root"),
                               "--set", "data.pixel_mean=0.5")
  assert status == 2 and len(err) == 1 and err[0].startswith(message), err


def test_an_unwritable_root_is_refused(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  for extra in ([], ["--dry_run"]):
    status, err = run_in_process(capsys, "--config", GPT, "--workdir", str(blocker / "root"),
                                 "--set", "seed=1,2", *extra)
    assert status == 2 and len(err) == 1 and err[0].startswith(f"error: --workdir {blocker / 'root'}: cannot be written"), err


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
  status = sweep.main(["--config", GPT, "--workdir", str(tmp_path / "root"), "--set", "seed=1,2",
                       "--set", "optim.learning_rate=1e-3", "--dry_run", "--", "--config.train.steps=5"])
  out = capsys.readouterr().out
  assert status == 0
  assert "[1/2] optim.learning_rate=0.001,seed=1: would start" in out
  assert "[2/2] optim.learning_rate=0.001,seed=2: would start" in out
  assert "--config.seed=2 --config.optim.learning_rate=0.001 --config.train.steps=5" in out
  assert not (tmp_path / "root").exists()


def test_run_names_are_stable_and_safe():
  config = config_files.load(GPT)
  spelled = [sweep_grid.parse_axis(s, config) for s in ("optim.learning_rate=1e-3", "optim.learning_rate=0.001")]
  assert sweep_grid.run_name(sweep_grid.points(spelled[:1])[0]) == sweep_grid.run_name(sweep_grid.points(spelled[1:])[0])
  forward = sweep_grid.points([sweep_grid.parse_axis("seed=1", config), sweep_grid.parse_axis("model.num_layers=2", config)])
  backward = sweep_grid.points([sweep_grid.parse_axis("model.num_layers=2", config), sweep_grid.parse_axis("seed=1", config)])
  assert sweep_grid.run_name(forward[0]) == sweep_grid.run_name(backward[0]) == "model.num_layers=2,seed=1"
  odd = sweep_grid.points([sweep_grid.parse_axis("data.files=a/b c,a%2Fb", config)])
  names = [sweep_grid.run_name(p) for p in odd]
  assert names == ["data.files=a%2Fb%20c", "data.files=a%252Fb"]  # escaped, and still distinct
  long = sweep_grid.points([sweep_grid.parse_axis("data.files=" + "x" * 300 + "," + "x" * 299 + "y", config)])
  long_names = [sweep_grid.run_name(p) for p in long]
  assert all(len(n) <= sweep_grid.MAX_NAME_BYTES for n in long_names) and len(set(long_names)) == 2
  bools = sweep_grid.points([sweep_grid.parse_axis("model.scan_layers=true,0", config)])
  assert [p[0].flag() for p in bools] == ["--config.model.scan_layers=True", "--config.model.scan_layers=False"]


def test_the_sweep_process_does_not_import_jax():
  """Deciding that a run is finished (and everything else the sweep does itself) costs no JAX."""
  code = "import sys, fmjax.sweep, fmjax.run_progress, fmjax.resume_checks; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'orbax', 'flax')))"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"
