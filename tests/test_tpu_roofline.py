"""benchmarks/tpu_roofline.py: fmjax.aot's reports for the pod configs, as one table."""

import pytest

from conftest import load_module

tpu_roofline = load_module("benchmarks/tpu_roofline.py", "tpu_roofline")


def report(**fields):
  r = {"config": "experiments/gpt.py:gpt2", "topology": "v5e:4x4", "params": 124_439_808,
       "memory_needed_bytes": 10.3 * 2**30, "hbm_bytes": 16 * 2**30, "fits": True, "flops_per_chip": 4.05e13,
       "bytes_accessed_per_chip": 2.2e11, "compute_time_s": 0.2056, "memory_time_s": 0.2678,
       "bound": "memory", "mfu_bound": 0.61}
  r.update(fields)
  return r


def test_table_row_per_config():
  text = tpu_roofline.table([report(), report(config="experiments/bert.py:bert-base", fits=False,
                                             memory_needed_bytes=20 * 2**30)])
  lines = text.splitlines()
  assert len(lines) == 4
  assert lines[2] == ("| `gpt.py:gpt2` | v5e:4x4 | 124.4M | 10.3 of 16 GiB | 40.5 TFLOP | 220 GB | 206 ms | "
                      "268 ms | memory | 61% |")
  assert "20.0 of 16 GiB (does not fit)" in lines[3]


def test_every_listed_config_exists_and_names_a_slice():
  from conftest import load_config
  for entry in tpu_roofline.CONFIGS:
    path, variant = entry.split(":")
    config = load_config(path.removeprefix("experiments/").removesuffix(".py"), variant)
    assert config.topology, entry


def test_a_failing_compile_names_the_config():
  with pytest.raises(RuntimeError, match="experiments/nope.py:tiny"):
    tpu_roofline.compile_report("experiments/nope.py:tiny")


@pytest.mark.parametrize("configs", ["", "experiments/gpt.py", "gpt:tiny"])
def test_malformed_config_lists_are_refused(configs, capsys):
  with pytest.raises(SystemExit):
    tpu_roofline.main(["--configs", configs])
  assert "--configs" in capsys.readouterr().err


def test_times_of_a_second_or_more_read_in_seconds():
  row = tpu_roofline.table([report(compute_time_s=1.92, memory_time_s=4.0586)]).splitlines()[2]
  assert "| 1.92 s | 4.06 s |" in row
