"""Checkpoints: exact resume, SIGTERM, incomplete checkpoints, init_from."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, small_config
from fmjax import checkpointing, train


def train_losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def final_params(config, workdir):
  setup = train.build(config, train.objectives.get(config.objective),
                      train.objectives.get(config.objective).prepare_assets(config, None),
                      train.parallel.make_mesh(config.mesh))
  params, step = checkpointing.latest_params(workdir, setup.abstract_state["params"])
  return jax.device_get(params), step


@pytest.mark.smoke
def test_resume_is_exact(tmp_path):
  """8 steps straight == 4 steps, stop, resume, 4 more: same losses and params, bit for bit."""
  config = small_config(tmp_path, train__steps=8, checkpoint__every=100)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(config, straight)
  first = train.train_and_evaluate(config, resumed, stop_at=4)
  assert first["step"] == 4
  assert os.listdir(checkpointing.checkpoint_dir(resumed)) == ["4"]
  train.train_and_evaluate(config, resumed)
  assert train_losses(straight) == train_losses(resumed)
  assert len(train_losses(straight)) == 8
  p1, s1 = final_params(config, straight)
  p2, s2 = final_params(config, resumed)
  assert s1 == s2 == 8
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(a, b)


def test_incomplete_checkpoint_is_never_the_latest(tmp_path):
  config = small_config(tmp_path, train__steps=4, checkpoint__every=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  # A save of step 6 that died half-way: Orbax leaves it under a temporary name.
  partial = os.path.join(checkpointing.checkpoint_dir(workdir), "6.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(partial, "params"))
  open(os.path.join(partial, "params", "garbage"), "w").write("half written")
  ckpt = checkpointing.Checkpointer(workdir, keep=3)
  assert ckpt.latest_step() == 4
  ckpt.close()
  config.train.steps = 6
  result = train.train_and_evaluate(config, workdir)
  assert result["step"] == 6
  assert sorted(train_losses(workdir)) == [1, 2, 3, 4, 5, 6]


def test_init_from_loads_params_only(tmp_path):
  source = str(tmp_path / "source")
  train.train_and_evaluate(small_config(tmp_path, train__steps=3), source)
  config = small_config(tmp_path, train__steps=1, optim__learning_rate=1e-12, optim__warmup_steps=0,
                        checkpoint__init_from=source)
  target = str(tmp_path / "target")
  train.train_and_evaluate(config, target)
  p_source, _ = final_params(config, source)
  p_target, step = final_params(config, target)
  assert step == 1  # a fresh run: its own step count, not the source's
  for a, b in zip(jax.tree.leaves(p_source), jax.tree.leaves(p_target)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "fmjax.main", "--config", f"{ROOT}/experiments/gpt.py:tiny",
         "--workdir", str(workdir), "--config.train.steps=100000", "--config.train.log_every=1",
         "--config.model.num_layers=1", "--config.data.seq_len=32", "--config.train.batch_size=4",
         f"--config.data.data_dir={tmp_path / 'data'}"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (metrics.exists() and "train/loss" in metrics.read_text()):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "preempted: saved step" in out
  steps = [int(s) for s in os.listdir(workdir / "checkpoints")]
  assert len(steps) == 1 and 1 <= steps[0] < 100000
