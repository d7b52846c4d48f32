"""benchmarks/cpu_matmul.py: the tiny GPT's matmuls timed per framework and core count."""

import sys

import pytest

from conftest import load_module

cpu_matmul = load_module("benchmarks/cpu_matmul.py", "cpu_matmul")


def test_flops_count_every_multiply_add_twice():
  assert cpu_matmul.flops("nk,km->nm", (4096, 128), (128, 512)) == 2 * 4096 * 128 * 512
  assert cpu_matmul.flops("nk,nm->km", (4096, 128), (4096, 512)) == 2 * 4096 * 128 * 512
  assert cpu_matmul.flops("bqd,bkd->bqk", (128, 64, 32), (128, 128, 32)) == 2 * 128 * 64 * 32 * 128


def test_every_matmul_is_timed_in_a_pinned_child():
  rows = cpu_matmul.run_child(sys.executable, "jax", cores=1, iters=1)
  assert [r["matmul"] for r in rows] == list(cpu_matmul.MATMULS)
  assert all(r["framework"] == "jax" and r["cores"] == 1 and r["ms"] > 0 and r["gflops_per_s"] > 0 for r in rows)
  name = next(iter(cpu_matmul.MATMULS))
  spec, lhs, rhs = cpu_matmul.MATMULS[name]
  row = rows[0]
  # The rate is the FLOP count over the time (ms rounded to the microsecond).
  assert row["gflops_per_s"] == pytest.approx(cpu_matmul.flops(spec, lhs, rhs) / (row["ms"] / 1e3) / 1e9, rel=0.05)


def test_table_has_a_column_per_framework_and_core_count():
  names = list(cpu_matmul.MATMULS)
  rows = [{"framework": "jax", "cores": 2, "matmul": names[0], "gflops_per_s": 250.0},
          {"framework": "torch", "cores": 1, "matmul": names[0], "gflops_per_s": 150.5}]
  text = cpu_matmul.table(rows)
  assert "| jax, 2 cores | torch, 1 core |" in text
  assert f"| {names[0]} | 250.0 | 150.5 |" in text
  assert f"| {names[1]} |  |  |" in text


@pytest.mark.parametrize("args, message", [
    (["--cores", "0"], "--cores '0'"),
    (["--cores", "1,x"], "comma-separated integers"),
    (["--iters", "0"], "--iters must be >= 1"),
    (["--torch_python", "/no/such/python"], "/no/such/python"),
])
def test_bad_arguments_are_named(args, message, capsys):
  with pytest.raises(SystemExit):
    cpu_matmul.main(args)
  assert message in capsys.readouterr().err
