"""Two processes (jax.distributed on 127.0.0.1, CPU collectives) == one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke  # also runs on Python 3.12 with the newest jax (.ci/run)

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(num_processes, devices_per_process, out_dir):
  port = free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(num_processes), str(port),
                             str(devices_per_process), str(out_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return [json.load(open(out_dir / f"result_{i}.json")) for i in range(num_processes)]


def test_two_processes_equal_one(tmp_path):
  one = launch(1, 4, tmp_path / "one")
  two = launch(2, 2, tmp_path / "two")
  assert one[0]["devices"] == two[0]["devices"] == 4 and two[0]["processes"] == 2
  assert one[0]["fixed_batch_losses"] == pytest.approx(two[0]["fixed_batch_losses"], abs=1e-5)
  assert two[0]["fixed_batch_losses"] == two[1]["fixed_batch_losses"]
  # The full loop ran on both hosts and agreed on the (global) metrics.
  assert two[0]["step"] == two[1]["step"] == 4
  assert two[0]["eval_loss"] == pytest.approx(two[1]["eval_loss"], abs=1e-6)
  run = tmp_path / "two" / "run"
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4], "only process 0 logs"
