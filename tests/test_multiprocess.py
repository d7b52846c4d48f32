"""Several hosts: processes joined by jax.distributed on 127.0.0.1 (CPU collectives) train like
one process; each host reads its own records of an epoch; the eval set does not depend on the
process count; hybrid (multi-slice) meshes."""

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import small_config
from fmjax import config_checks, data as fmdata, objectives, parallel, train
from multiprocess_worker import fixed_batch_run, params_sum_of_squares, worker_config

# Tests marked smoke also run on Python 3.12 with the newest jax (.ci/run); a module-wide mark
# would take the slow 4-process test there too (`-m smoke` replaces the default `-m 'not slow'`).

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(num_processes, devices_per_process, out_dir, data_dir, parts, timeout_s=600):
  """Runs the worker as `num_processes` processes; returns their results and their output.

  When one fails the others would wait for it in a collective: they are stopped at once."""
  port = free_port()
  out_dir.mkdir(parents=True)
  logs = [out_dir / f"log_{i}.txt" for i in range(num_processes)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block a chatty worker
      procs.append(subprocess.Popen([sys.executable, WORKER, str(i), str(num_processes), str(port),
                                     str(devices_per_process), str(out_dir), str(data_dir), parts],
                                    stdout=f, stderr=subprocess.STDOUT))
  deadline = time.monotonic() + timeout_s
  while any(p.poll() is None for p in procs):
    if any(p.returncode for p in procs) or time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    time.sleep(0.2)
  outputs = [log.read_text() for log in logs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} of {num_processes} exited with {p.returncode}:\n{out[-3000:]}"
  return [json.load(open(out_dir / f"result_{i}.json")) for i in range(num_processes)], outputs


def check_equal_to_one_process(results, one, devices):
  """Fixed-batch losses on the flat and every hybrid mesh, and the eval loss of the initial
  params, equal the one-process run's (same global mesh size)."""
  for result in results:
    assert result["devices"] == devices and result["processes"] == len(results)
    assert result["fixed"]["1"]["initial_eval_loss"] == pytest.approx(one["initial_eval_loss"], rel=1e-5)
    for slices, run in result["fixed"].items():
      assert run["losses"] == pytest.approx(one["losses"], abs=1e-5), f"dcn_data={slices}"
  assert len(results[0]["fixed"]) == 1 + (len(results) >= 2) + (len(results) >= 4)  # every hybrid ran
  assert all(r["fixed"] == results[0]["fixed"] for r in results)


def metric_rows(run_dir):
  return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def check_loop(results, outputs, run_dir):
  """The loop ran on every host and agreed on the global metrics; only process 0 wrote logs;
  checkpoints hold every host's part."""
  assert all(r["straight"]["step"] == 4 for r in results)
  assert all(r["straight"]["eval/loss"] == pytest.approx(results[0]["straight"]["eval/loss"], abs=1e-6)
             for r in results)
  rows = metric_rows(run_dir)
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4], "one writer: process 0"
  assert len(os.listdir(run_dir / "tensorboard")) == 1
  assert "step 4/4" in outputs[0]
  for out in outputs[1:]:
    assert "step 4/4" not in out and "compiled the train step" not in out, "only process 0 reports"
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
  step_dir = run_dir / "checkpoints" / "2"
  # Orbax's multi-host save: each host wrote its iterator state and joined the array writes.
  n = len(results)
  assert sorted(os.listdir(step_dir / "data")) == sorted(
      ["commit_success.txt"] + [f"process_{i}-of-{n}.json" for i in range(n)])
  assert {f"process_{i}" for i in range(n)} <= set(os.listdir(step_dir / "params" / "array_metadatas"))


@pytest.mark.smoke
def test_two_processes_equal_one(tmp_path, monkeypatch):
  data_dir = tmp_path / "data"  # built here once; the workers find it prepared
  one = fixed_batch_run(worker_config(tmp_path / "one", data_dir), jax.devices()[:4])
  # A run of one process on 8 devices, for the two processes to resume on 4 (resharded).
  one_process_run = tmp_path / "one_process_run"
  train.train_and_evaluate(worker_config(tmp_path / "one", data_dir), str(one_process_run), stop_at=2)
  monkeypatch.setenv("FMJAX_REHOST_FROM", str(one_process_run))
  results, outputs = launch(2, 2, tmp_path / "two", data_dir, "fixed,loop,resume,rehost")
  check_equal_to_one_process(results, one, devices=4)
  check_loop(results, outputs, tmp_path / "two" / "straight")
  # Resumed on both hosts from the step-2 checkpoint they wrote: steps 3 and 4 as in the straight
  # run (each host's data iterator continued where it was).
  straight = {r["step"]: r for r in metric_rows(tmp_path / "two" / "straight")}
  resumed = {r["step"]: r for r in metric_rows(tmp_path / "two" / "resumed")}
  assert sorted(k for k, r in resumed.items() if "train/loss" in r) == [3, 4]
  for step in (3, 4):
    assert resumed[step]["train/loss"] == pytest.approx(straight[step]["train/loss"], abs=1e-6)
  assert all(r["resumed"]["eval/loss"] == pytest.approx(r["straight"]["eval/loss"], abs=1e-6) for r in results)
  # The one-process checkpoint: the same params on the 2-process mesh, and the run goes on; the
  # data position (one host's) cannot carry over to two hosts, which the log says.
  expected = params_sum_of_squares(worker_config(tmp_path / "one", data_dir), one_process_run, 2)
  for r in results:
    assert r["rehosted_params_sq"] == pytest.approx(expected, rel=1e-6)
    assert r["rehosted"]["step"] == 4 and np.isfinite(r["rehosted"]["train/loss"])
    log = "\n".join(r["rehosted_log"])
    assert "resumed from" in log and "at step 2" in log, log
    assert "the data position of step 2 was saved by 1 processes and does not carry over to 2" in log, log


@pytest.mark.slow  # over 2 minutes of CPU time (4 processes compile the same steps), 2 cores shared
def test_four_processes_equal_one(tmp_path):
  data_dir = tmp_path / "data"
  one = fixed_batch_run(worker_config(tmp_path / "one", data_dir), jax.devices())
  results, outputs = launch(4, 2, tmp_path / "four", data_dir, "fixed,loop")
  check_equal_to_one_process(results, one, devices=8)
  check_loop(results, outputs, tmp_path / "four" / "straight")


# ---- what each host reads ---------------------------------------------------------------------

TRAIN_RECORDS = 37  # divides by neither 2 nor 4
EVAL_RECORDS = 13


def write_records(folder, name, count):
  """`count` files of one record each (far below the 16k-character record size), of varied
  lengths; the first line names the record."""
  folder.mkdir()
  rng = np.random.default_rng(count)
  for i in range(count):
    filler = "".join(f"{name} line {j}\n" for j in range(int(rng.integers(1, 8))))
    (folder / f"{name}{i:03d}.txt").write_text(f"{name}-{i:03d}\n{filler}")


@pytest.fixture
def record_config(tmp_path):
  write_records(tmp_path / "train", "record", TRAIN_RECORDS)
  write_records(tmp_path / "eval", "heldout", EVAL_RECORDS)
  config = small_config(tmp_path, data__files=str(tmp_path / "train" / "*.txt"),
                        data__eval_files=str(tmp_path / "eval" / "*.txt"))
  config.data.prefetch = 0
  # Packed rows are read in order (no window shuffle of rows), so the token stream gives back the
  # documents; the record-level shuffle, which decides what each epoch reads, stays on.
  config.data.shuffle, config.data.shuffle_window = True, 0
  return config


def documents_read(config, process_index, process_count, count):
  """The first `count` documents a host's training iterator yields, as record names."""
  tok = fmdata.ByteTokenizer()
  iterator = iter(fmdata.make_train_dataset(config, tok, process_index=process_index, process_count=process_count,
                                            packed_length=config.data.seq_len + 1))
  pieces, ends = [], 0
  while ends < count:
    tokens = next(iterator)["tokens"].ravel()
    pieces.append(tokens)
    ends += int((tokens == tok.eos_id).sum())
  iterator.close()
  stream = np.concatenate(pieces)
  bounds = np.flatnonzero(stream == tok.eos_id)[:count]
  docs = np.split(stream, bounds + 1)[:count]
  assert all(doc[0] == tok.bos_id for doc in docs)  # packed back to back: [bos] text [eos] ...
  return [tok.decode(doc[1:-1]).split("\n")[0] for doc in docs]


@pytest.mark.smoke
@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_hosts_read_one_epoch_exactly(record_config, hosts):
  everything = {f"record-{i:03d}" for i in range(TRAIN_RECORDS)}
  epochs = []
  for host in range(hosts):
    # Records host, host + hosts, ... (fmjax.data.shard_for_process): 37 records on 4 hosts give
    # 10, 9, 9, 9. Nothing is dropped: with `repeat` each host cycles through its own share, so
    # host 0's epoch is one document longer (its records come round 9/10 as often).
    share = len(range(host, TRAIN_RECORDS, hosts))
    read = documents_read(record_config, host, hosts, 2 * share)
    first, second = read[:share], read[share:]
    assert len(set(first)) == share, f"host {host} read a record twice in one epoch"
    assert set(second) == set(first), f"host {host}'s second epoch differs: records lost at the boundary"
    assert second != first or share < 3, "each epoch is reshuffled"
    epochs.append(set(first))
  assert sum(len(e) for e in epochs) == len(set().union(*epochs)), "hosts read overlapping records"
  assert set().union(*epochs) == everything, "the hosts together skipped records"
  assert sorted(len(e) for e in epochs) == sorted(len(range(h, TRAIN_RECORDS, hosts)) for h in range(hosts))


def global_eval_batches(config, hosts, packed_length=33):
  """The hosts' eval batches joined in process order, as `parallel.global_batch` joins them."""
  per_host = [fmdata.make_eval_batches(config, fmdata.ByteTokenizer(), process_index=h, process_count=hosts,
                                       packed_length=packed_length) for h in range(hosts)]
  return [{k: np.concatenate([batches[b][k] for batches in per_host]) for k in per_host[0][b]}
          for b in range(len(per_host[0]))]


@pytest.mark.smoke
@pytest.mark.parametrize("eval_batches", [3, 12])  # fewer rows than the split fills; more
def test_eval_set_is_the_same_for_any_process_count(record_config, eval_batches):
  record_config.data.eval_batches = eval_batches
  one = global_eval_batches(record_config, 1)
  for hosts in (2, 4):
    many = global_eval_batches(record_config, hosts)
    assert len(many) == len(one) == eval_batches
    for a, b in zip(one, many):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{hosts} hosts, feature {k}")
  tok = fmdata.ByteTokenizer()
  validation = fmdata.open_split(record_config.data, "validation")
  total = sum(len(tok.encode(validation[i]["text"])) + 2 for i in range(len(validation)))
  real = sum(int((b["segment_ids"] > 0).sum()) for b in one)
  capacity = eval_batches * record_config.train.batch_size * 33
  assert real == min(total, capacity)  # capped by the eval batches, or all of it with zero padding
  if total < capacity:
    assert (one[-1]["segment_ids"] == 0).all()


# ---- hybrid (multi-slice) meshes --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What mesh_utils reads of a device; slice_index as on multi-slice TPU."""
  id: int
  process_index: int
  slice_index: int
  platform: str = "cpu"
  device_kind: str = "cpu"


@dataclasses.dataclass(frozen=True)
class FakeHostDevice:
  """A device with no slice_index (CPU, GPU)."""
  id: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "cpu"


def slices_along_data(array, key):
  """For each row of the data axis, the set of `key` values of its devices."""
  return [{key(d) for d in row.ravel()} for row in array]


@pytest.mark.smoke
def test_hybrid_mesh_puts_each_slice_on_its_own_rows_of_the_data_axis():
  # Slices interleaved with device ids: grouping by id order would mix them.
  devices = [FakeDevice(i, process_index=i // 2, slice_index=i % 2) for i in range(8)]
  array = parallel.hybrid_device_array((4, 2, 1), 2, devices)
  assert array.shape == (4, 2, 1)
  assert slices_along_data(array, lambda d: d.slice_index) == [{0}, {0}, {1}, {1}]
  with pytest.raises(ValueError, match=r"config\.mesh\.dcn_data=4: the devices are on 2 slices"):
    parallel.hybrid_device_array((4, 2, 1), 4, devices)
  # No slice_index: one slice per process when the counts match, else blocks of whole processes.
  hosts = [FakeHostDevice(i, process_index=i // 4) for i in (4, 0, 5, 1, 6, 2, 7, 3)]
  array = parallel.hybrid_device_array((2, 2, 2), 2, hosts)
  assert slices_along_data(array, lambda d: d.process_index) == [{0}, {1}]
  hosts = [FakeHostDevice(i, process_index=i // 2) for i in range(8)]
  array = parallel.hybrid_device_array((4, 1, 2), 2, hosts)
  assert slices_along_data(array, lambda d: d.process_index) == [{0}, {1}, {2}, {3}]
  assert {d.process_index for d in array[:2].ravel()} == {0, 1}


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (pip install -e '.[tpu]')")
def test_hybrid_mesh_on_two_tpu_slices():
  """Device descriptions of two v5e 2x2 slices (no TPU needed): the devices carry slice_index."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # libtpu may be loaded by another process
  from jax.experimental import topologies
  devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", num_slices=2).devices
  devices = devices[::2] + devices[1::2]  # slices interleaved: a plain reshape would mix them
  assert {d.slice_index for d in devices[:4]} == {0, 1}
  mesh = parallel.make_mesh({"data": -1, "fsdp": 2, "tensor": 1, "dcn_data": 2}, devices)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert slices_along_data(mesh.devices, lambda d: d.slice_index) == [{0}, {0}, {1}, {1}]
  with pytest.raises(ValueError, match=r"config\.mesh\.dcn_data=4: the devices are on 2 slices"):
    parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 4}, devices)


@pytest.mark.smoke
def test_hybrid_mesh_trains_like_the_flat_mesh(tmp_path):
  config = small_config(tmp_path, model__num_layers=1, mesh__data=4, mesh__fsdp=2)
  flat_run = fixed_batch_run(config, with_eval=False)
  config.mesh.dcn_data = 2
  # Devices in another order, so the two meshes place shards on different devices (with one
  # process, slices are consecutive blocks of the given devices).
  devices = jax.devices()[::-1]
  hybrid = parallel.make_mesh(config.mesh, devices)
  assert hybrid.axis_names == parallel.MESH_AXES and dict(hybrid.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert [{d.id for d in row.ravel()} for row in hybrid.devices] == [{7, 6}, {5, 4}, {3, 2}, {1, 0}]
  hybrid_run = fixed_batch_run(config, devices, with_eval=False)
  assert hybrid_run["losses"] == pytest.approx(flat_run["losses"], abs=1e-6)
  assert flat_run["losses"][2] != flat_run["losses"][0]  # it trained (the first step has learning rate 0)


@pytest.mark.smoke
@pytest.mark.parametrize("mesh,message", [
    (dict(dcn_data=3), "config.mesh.dcn_data=3: 8 devices do not split into 3 equal slices"),
    (dict(data=2, fsdp=4, dcn_data=4), "config.mesh.dcn_data=4 must divide the data axis"),
    (dict(data=-1, tensor=4, dcn_data=4), "config.mesh.dcn_data=4 must divide the data axis"),
    (dict(dcn_data=0), "config.mesh.dcn_data=0: must be a positive integer"),
])
def test_bad_dcn_data_is_named(mesh, message):
  config = small_config()
  config.mesh.update(mesh)
  with pytest.raises(config_checks.ConfigError, match=message.replace(".", r"\.")):
    train.validate(config, objectives.get(config.objective))
