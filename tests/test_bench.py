"""fmjax.bench measures the real train step on synthetic batches, without preparing data."""

import pytest

from conftest import load_config, small_config
from fmjax import bench


def test_benchmark_reports_throughput(tmp_path, monkeypatch):
  monkeypatch.setenv("FMJAX_DATA_DIR", str(tmp_path / "no_data_here"))
  config = small_config(model__num_layers=1, bench__steps=2, bench__warmup_steps=1)
  result = bench.run_benchmark(config)
  assert result["tokens_per_s"] == pytest.approx(8 * 32 / result["step_time_s"], rel=1e-3)
  assert result["compile_time_s"] > 0 and result["peak_memory_bytes"] > 0
  assert result["params"] > 0 and result["final_loss"] > 0
  assert not (tmp_path / "no_data_here").exists(), "a benchmark must not build datasets"


def test_benchmark_sentencepiece_config_needs_no_tokenizer(tmp_path, monkeypatch):
  monkeypatch.setenv("FMJAX_DATA_DIR", str(tmp_path / "no_data_here"))
  config = load_config("gpt", "small")
  config.model.num_layers = 1
  config.model.dtype = "float32"
  config.data.seq_len = 16
  config.train.batch_size = 8
  config.bench.steps = 1
  config.bench.warmup_steps = 0
  result = bench.run_benchmark(config)
  assert result["params"] > 8192 * 384  # the 8k-entry embedding of the stand-in vocabulary
  assert not (tmp_path / "no_data_here").exists()
