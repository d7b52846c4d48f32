"""Bad configs fail before anything is built, naming the field, the value and what is allowed."""

import subprocess
import sys

import pytest

from conftest import ROOT, load_config
from fmjax import config_checks, objectives, train

pytestmark = pytest.mark.smoke  # also runs on Python 3.12 with the newest jax (.ci/run)

CASES = [
    ({"train.steps": 0}, "config.train.steps=0: must be a positive integer"),
    ({"train.batch_size": 12, "mesh.data": 8}, "config.train.batch_size=12"),
    ({"train.batch_size": 32, "train.grad_accum_steps": 3}, "config.train.grad_accum_steps=3"),
    ({"train.batch_size": 32, "train.grad_accum_steps": 16, "mesh.data": 8}, "micro-batch (2)"),
    ({"model.num_heads": 3, "model.embed_dim": 96, "mesh.data": 4, "mesh.tensor": 2}, "config.model.num_heads=3"),
    ({"model.embed_dim": 130, "model.num_heads": 4}, "config.model.embed_dim=130 must be divisible by config.model.num_heads=4"),
    ({"mesh.data": 3, "mesh.fsdp": 1, "mesh.tensor": 1}, "data*fsdp*tensor = 3 but there are 8 devices"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "only one axis may be -1"),
    ({"mesh.data": 0}, "config.mesh.data=0"),
    ({"mesh.data": -1, "mesh.tensor": 3}, "do not divide"),
    ({"optim.warmup_steps": 10_000}, "config.optim.warmup_steps=10000: must be in [0, config.train.steps=600]"),
    ({"optim.learning_rate": -1.0}, "config.optim.learning_rate=-1.0"),
    ({"optim.decay": "step"}, "config.optim.decay='step'"),
    ({"optim.b2": 1.0}, "config.optim.b2=1.0"),
    ({"model.dropout": 1.0}, "config.model.dropout=1.0"),
    ({"model.dtype": "float16"}, "config.model.dtype='float16'"),
    ({"model.attention": "flash"}, "config.model.attention='flash'"),
    ({"model.remat": "some"}, "config.model.remat='some'"),
    ({"model.positions": "alibi"}, "config.model.positions='alibi'"),
    ({"data.tokenizer": "bpe"}, "config.data.tokenizer='bpe'"),
    ({"data.eval_fraction": 0.0}, "config.data.eval_fraction=0.0"),
    ({"data.seq_len": -5}, "config.data.seq_len=-5"),
    ({"checkpoint.init_from": "/nonexistent/run"}, "config.checkpoint.init_from='/nonexistent/run'"),
    ({"checkpoint.init_subtrees": "encoder"}, "config.checkpoint.init_subtrees='encoder'"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[",".join(c[0]) for c in CASES])
def test_bad_field_is_named(overrides, message):
  config = load_config()
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  with pytest.raises(config_checks.ConfigError) as info:
    train.validate(config, objectives.get(config.objective))
  assert message in str(info.value)


def test_unknown_objective():
  with pytest.raises(ValueError, match="config.objective='gan'"):
    objectives.get("gan")


def run_main(tmp_path, *overrides):
  cmd = [sys.executable, "-m", "fmjax.main", "--config", f"{ROOT}/experiments/gpt.py:tiny",
         "--workdir", str(tmp_path / "run"), f"--config.data.data_dir={tmp_path / 'data'}", *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_main_exits_nonzero_with_the_message(tmp_path):
  proc = run_main(tmp_path, "--config.model.num_heads=3")
  assert proc.returncode == 2
  assert "error: config.model.embed_dim=128 must be divisible by config.model.num_heads=3" in proc.stderr
  assert not (tmp_path / "run" / "checkpoints").exists(), "nothing may be built before validation"


def test_main_reports_a_dataset_that_is_not_prepared(tmp_path):
  proc = run_main(tmp_path, "--config.data.dataset=lm1b")
  assert proc.returncode == 2
  assert "lm1b" in proc.stderr and "tfds build" in proc.stderr


def test_main_reports_files_that_match_nothing(tmp_path):
  proc = run_main(tmp_path, f"--config.data.files={tmp_path}/nothing/*.txt")
  assert proc.returncode == 2
  assert "config.data.files" in proc.stderr


def test_unknown_field_is_rejected(tmp_path):
  proc = run_main(tmp_path, "--config.train.stepz=5")
  assert proc.returncode != 0
  assert "stepz" in proc.stderr
