"""Faults a run survives and says it survived: NaN, a changed config, a busy workdir, storage.

Each test starts a real (tiny) run and breaks one thing: the last good checkpoint must stay the
newest and restorable, the workdir untouched where the run refused, and the message must name
the step, field or path. kill -9 is in test_faults_kill.py, bad CLI arguments in
test_cli_bad_input.py.
"""

import glob
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, small_config
from fmjax import checkpointing, objectives, run_errors, storage_checks, train, workdir_lock
from fmjax.config_checks import ConfigError
from fmjax.objectives.causal_lm import CausalLm


def logged(workdir, key="train/loss"):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r[key] for r in rows if key in r}


def steps_saved(workdir):
  return sorted(int(s) for s in os.listdir(checkpointing.checkpoint_dir(workdir)) if s.isdigit())


def saved_params(config, workdir, step):
  setup = train.build(config, objectives.get(config.objective),
                      objectives.get(config.objective).prepare_assets(config, None),
                      train.parallel.make_mesh(config.mesh))
  ckpt = checkpointing.Checkpointer(workdir, keep=100, async_save=False, read_only=True)
  try:
    return jax.device_get(ckpt.restore_params(step, setup.abstract_state["params"]))
  finally:
    ckpt.close()


def snapshot(workdir):
  """Every file under the workdir with its bytes (the lock file aside: it is the lock's)."""
  files = {}
  for path in glob.glob(os.path.join(workdir, "**"), recursive=True):
    if os.path.isfile(path) and os.path.basename(path) != workdir_lock.LOCK_FILE:
      files[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return files


class PoisonedCausalLm(CausalLm):
  """The causal LM whose loss is NaN on given training batches (found by their tokens): a loss
  spike that poisons the gradients of exactly those steps, whatever the step's rng."""

  def __init__(self, poisoned_inputs):
    super().__init__()
    self.poisoned_inputs = [np.asarray(x) for x in poisoned_inputs]

  def loss(self, model, batch, dropout_rng):
    loss, metrics = super().loss(model, batch, dropout_rng)
    hit = jnp.stack([jnp.array_equal(batch["inputs"], x) for x in self.poisoned_inputs]).any()
    factor = jnp.where(hit, jnp.nan, 1.0)
    return loss * factor, {**metrics, "loss": metrics["loss"] * factor}


def poison_steps(monkeypatch, config, steps):
  """Makes config's objective NaN at the given (1-based) steps of a fresh run."""
  objective = objectives.get(config.objective)
  assets = objective.prepare_assets(config, None)
  batches = iter(objective.train_data(config, assets, process_index=0, process_count=1))
  inputs = [next(batches)["inputs"] for _ in range(max(steps))]
  batches.close()
  monkeypatch.setitem(objectives.REGISTRY, config.objective,
                      lambda: PoisonedCausalLm([inputs[s - 1] for s in steps]))


def test_nan_stops_the_run_and_the_last_good_checkpoint_stays_newest(tmp_path, monkeypatch):
  config = small_config(tmp_path, train__steps=10, checkpoint__every=2, train__log_every=5)
  poison_steps(monkeypatch, config, [5])
  workdir = str(tmp_path / "run")
  with pytest.raises(run_errors.NonFiniteMetric, match=r"train/\w+ is nan at step 5: .*step 4, is untouched"):
    train.train_and_evaluate(config, workdir)
  assert steps_saved(workdir) == [2, 4]
  params = saved_params(config, workdir, 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_skip_mode_keeps_the_state_of_a_nonfinite_step(tmp_path, monkeypatch):
  config = small_config(tmp_path, train__steps=6, checkpoint__every=1, checkpoint__keep=10,
                        checkpoint__async_save=False, train__on_nonfinite="skip")
  poison_steps(monkeypatch, config, [3, 5])
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(config, workdir)
  assert result["step"] == 6
  assert logged(workdir, "train/skipped_updates") == {1: 0, 2: 0, 3: 1, 4: 0, 5: 1, 6: 0}
  p2, p3, p4 = (saved_params(config, workdir, s) for s in (2, 3, 4))
  for a, b, c in zip(jax.tree.leaves(p2), jax.tree.leaves(p3), jax.tree.leaves(p4)):
    np.testing.assert_array_equal(a, b)  # step 3's update was skipped
    assert np.isfinite(c).all()
  assert any(not np.array_equal(b, c) for b, c in zip(jax.tree.leaves(p3), jax.tree.leaves(p4)))
  losses = logged(workdir)
  assert all(np.isfinite(losses[s]) for s in (1, 2, 4, 6))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """The first 4 steps of a 6-step run (checkpoints at 2 and 4) and its config; tests copy it
  before touching it."""
  tmp = tmp_path_factory.mktemp("finished")
  config = small_config(tmp, train__steps=6, checkpoint__every=2)
  workdir = str(tmp / "run")
  train.train_and_evaluate(config, workdir, stop_at=4)
  return config, workdir


def copy_of(run, tmp_path):
  import shutil
  target = str(tmp_path / "copy")
  shutil.copytree(run, target)
  return target


@pytest.mark.parametrize("field, value, message", [
    ("model__num_layers", 3, "config.model.num_layers: 2 in the run, 3 now"),
    ("data__tokenizer", "sentencepiece", "config.data.tokenizer: 'byte' in the run, 'sentencepiece' now"),
    ("optim__b1", 0.8, "config.optim.b1: 0.9 in the run, 0.8 now"),
])
def test_relaunch_with_another_config_is_refused_before_anything_changes(finished_run, tmp_path, field, value,
                                                                         message):
  config, run = finished_run
  workdir = copy_of(run, tmp_path)
  before = snapshot(workdir)
  other = small_config(tmp_path, **{field: value, "train__steps": 6, "checkpoint__every": 2})
  if field == "data__tokenizer":
    other.data.vocab_size = 512
  with pytest.raises(ConfigError, match="holds a different run .checkpoint step 4.: " + message.replace(".", r"\.")):
    train.train_and_evaluate(other, workdir)
  assert snapshot(workdir) == before


def test_relaunch_with_another_paradigm_is_refused(finished_run, tmp_path):
  _, run = finished_run
  workdir = copy_of(run, tmp_path)
  before = snapshot(workdir)
  bert = load_config("bert", "tiny")
  bert.data.data_dir = str(tmp_path / "data")
  with pytest.raises(ConfigError, match="config.objective: 'causal_lm' in the run, 'masked_lm' now"):
    train.train_and_evaluate(bert, workdir)
  assert snapshot(workdir) == before


def test_a_changed_mesh_resumes_resharded(finished_run, tmp_path):
  """4 steps on an 8-way data mesh, then 2 more with params and optimizer state sharded 4-way
  (fsdp) over 2x4: the same losses as going on over the data mesh, to float tolerance."""
  config, run = finished_run
  straight, resharded = copy_of(run, tmp_path / "a"), copy_of(run, tmp_path / "b")
  longer = small_config(tmp_path, train__steps=6, checkpoint__every=2)
  train.train_and_evaluate(longer, straight)
  train.train_and_evaluate(small_config(tmp_path, train__steps=6, checkpoint__every=2, mesh__fsdp=4), resharded)
  a, b = logged(straight), logged(resharded)
  assert sorted(b) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([b[5], b[6]], [a[5], a[6]], rtol=1e-5)


def test_allow_config_change_resumes_and_says_what_changed(finished_run, tmp_path):
  _, run = finished_run
  workdir = copy_of(run, tmp_path)
  lines = []
  changed = small_config(tmp_path, train__steps=5, checkpoint__every=2, optim__learning_rate=1e-3,
                         checkpoint__allow_config_change=True)
  assert train.train_and_evaluate(changed, workdir, log=lines.append)["step"] == 5
  assert any("config.optim.learning_rate: 0.003 in the run, 0.001 now" in line for line in lines), lines
  assert any("resumed from" in line and "at step 4" in line for line in lines), lines


def test_second_run_on_a_busy_workdir_refuses_and_a_killed_holder_frees_it(finished_run, tmp_path):
  config, run = finished_run
  workdir = copy_of(run, tmp_path)
  before = snapshot(workdir)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from fmjax import workdir_lock; "
       "held = workdir_lock.WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)", workdir],
      stdout=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline().strip() == "held"
    longer = small_config(tmp_path, train__steps=6, checkpoint__every=2)
    with pytest.raises(run_errors.WorkdirInUse, match=f"workdir {workdir} is in use by another run .pid {holder.pid} on "):
      train.train_and_evaluate(longer, workdir)
    assert snapshot(workdir) == before
    cli = subprocess.run(
        [sys.executable, "-m", "fmjax.main", "--config", f"{ROOT}/experiments/gpt.py:tiny", "--workdir", workdir],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith(f"error: workdir {workdir} is in use"), cli.stderr
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The kernel dropped the dead holder's lock: the run goes on.
  assert train.train_and_evaluate(longer, workdir)["step"] == 6


def test_unwritable_workdir_is_an_error_before_training(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a folder")
  with pytest.raises(run_errors.StorageError, match=f"workdir {blocker}/run is not writable"):
    train.train_and_evaluate(small_config(tmp_path, train__steps=2), str(blocker / "run"))


def test_too_little_disk_is_an_error_before_training(tmp_path, monkeypatch):
  import shutil
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(storage_checks.shutil, "disk_usage", lambda _: usage._replace(free=10_000))
  workdir = tmp_path / "run"
  with pytest.raises(run_errors.StorageError, match=r"has 9\.8 KiB free, less than one checkpoint of this run"):
    train.train_and_evaluate(small_config(tmp_path, train__steps=2), str(workdir))
  assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
  assert not (workdir / "metrics.jsonl").exists()


def test_a_failed_save_names_its_step_and_leaves_the_previous_checkpoint_good(finished_run, tmp_path, monkeypatch):
  config, run = finished_run
  workdir = copy_of(run, tmp_path)
  real_save = checkpointing.Checkpointer._save

  def disk_full_at_step_6(self, step, *args):
    if step == 6:
      raise OSError(28, "No space left on device")
    return real_save(self, step, *args)

  monkeypatch.setattr(checkpointing.Checkpointer, "_save", disk_full_at_step_6)
  longer = small_config(tmp_path, train__steps=8, checkpoint__every=2)
  with pytest.raises(run_errors.CheckpointSaveFailed,
                     match=r"saving checkpoint step 6 to .* failed \(OSError: .*No space left on device\); "
                           r"the newest complete checkpoint, step 4, is untouched"):
    train.train_and_evaluate(longer, workdir)
  monkeypatch.undo()
  assert steps_saved(workdir) == [2, 4]
  lines = []
  assert train.train_and_evaluate(longer, workdir, log=lines.append)["step"] == 8
  assert any("resumed from" in line and "at step 4" in line for line in lines), lines


def test_a_failed_background_save_is_reported_by_the_next_save(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "run"), keep=3)
  ckpt._unfinished_step = 6  # an async save of step 6 is in flight...
  def background_error():
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(ckpt.manager, "check_for_errors", background_error)  # ...and its writer failed
  with pytest.raises(run_errors.CheckpointSaveFailed, match=r"saving checkpoint step 6 .*No space left"):
    ckpt.save(8, {}, None, {})
  monkeypatch.undo()
  ckpt.close()


def _truncate_largest_array_file(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True) if os.path.isfile(p)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "rb+") as handle:
    handle.truncate(os.path.getsize(largest) // 2)


def _flip_a_metadata_byte(step_dir):
  path = os.path.join(step_dir, "params", "_METADATA")
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x5A
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", [_truncate_largest_array_file, _flip_a_metadata_byte])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(finished_run, tmp_path, damage):
  config, run = finished_run
  straight, damaged = copy_of(run, tmp_path / "a"), copy_of(run, tmp_path / "b")
  longer = small_config(tmp_path, train__steps=6, checkpoint__every=2)
  train.train_and_evaluate(longer, straight)
  damage(os.path.join(checkpointing.checkpoint_dir(damaged), "4"))
  lines = []
  assert train.train_and_evaluate(longer, damaged, log=lines.append)["step"] == 6
  text = "\n".join(lines)
  assert "checkpoint step 4 in" in text and "cannot be restored" in text, text
  assert "moved unreadable checkpoint step 4 to" in text and "resumed from" in text and "at step 2" in text, text
  assert len(os.listdir(os.path.join(damaged, checkpointing.UNREADABLE_DIR))) == 1  # kept, not deleted
  assert steps_saved(damaged) == [2, 4, 6]
  a, b = logged(straight), logged(damaged)
  assert [b[s] for s in (3, 4, 5, 6)] == [a[s] for s in (3, 4, 5, 6)]  # steps 3-4 recomputed exactly
  rows = [json.loads(line) for line in open(os.path.join(damaged, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]  # one row per step
