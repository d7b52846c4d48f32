"""The shared trainer: sharding invariance, gradient accumulation, optimizer masks, outputs."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import loss_and_grads, small_config
from fmjax import data as fmdata
from fmjax import objectives, optim, parallel, train


def tiny_config(**mesh):
  return small_config(optim__warmup_steps=0, **{f"mesh__{k}": v for k, v in mesh.items()})


def make_setup(config, devices):
  objective = objectives.get(config.objective)
  mesh = parallel.make_mesh(config.mesh, devices)
  return train.build(config, objective, fmdata.ByteTokenizer(), mesh)


def packed_batch(config, seed=0):
  """A synthetic batch with two documents per row, so segment masking is exercised."""
  objective = objectives.get(config.objective)
  batch = objective.synthetic_batch(config, fmdata.ByteTokenizer(), config.train.batch_size)
  half = config.data.seq_len // 2
  seg = np.concatenate([np.ones((config.train.batch_size, half)), 2 * np.ones((config.train.batch_size, half))], 1)
  batch["segment_ids"] = seg.astype(np.int32)
  batch["positions"] = np.concatenate([np.arange(half), np.arange(half)])[None].repeat(config.train.batch_size, 0).astype(np.int32)
  batch["weights"][:, half - 1] = 0.0
  rng = np.random.default_rng(seed)
  batch["inputs"] = rng.integers(5, 261, batch["inputs"].shape).astype(np.int32)
  batch["targets"] = rng.integers(5, 261, batch["targets"].shape).astype(np.int32)
  return batch


@pytest.mark.smoke
def test_sharded_equals_single_device_loss_and_grads():
  single = make_setup(tiny_config(data=1), jax.devices()[:1])
  sharded = make_setup(tiny_config(data=2, fsdp=2, tensor=2), jax.devices())
  state_1 = train.init_state(single)
  state_8 = train.init_state(sharded)
  # Same initial values whatever the mesh.
  for a, b in zip(jax.tree.leaves(jax.device_get(state_1["params"])), jax.tree.leaves(jax.device_get(state_8["params"]))):
    np.testing.assert_array_equal(a, b)
  # The parameters really are sharded on the big mesh.
  query = state_8["params"]["stack"]["layers"][0]["attn"]["query"]
  assert query.sharding.spec == jax.P("fsdp", "tensor", None)
  assert query.addressable_shards[0].data.shape == (32, 2, 16)
  mu = state_8["opt_state"][1][0].mu["stack"]["layers"][0]["attn"]["query"]
  assert mu.sharding.spec == query.sharding.spec, "optimizer moments must shard like their params"

  batch = packed_batch(single.config)
  loss_1, grads_1 = loss_and_grads(single, state_1, batch)
  loss_8, grads_8 = loss_and_grads(sharded, state_8, batch)
  assert abs(loss_1 - loss_8) < 1e-5
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)

  # And a full optimizer step agrees too.
  outs = []
  for setup, state in ((single, state_1), (sharded, state_8)):
    with jax.set_mesh(setup.mesh):
      gb = parallel.global_batch(batch, setup.mesh)
      new_state, metrics = train.jit_train_step(setup, gb)(state, gb)
    outs.append((jax.device_get(new_state["params"]), float(metrics["train/grad_norm"])))
  assert abs(outs[0][1] - outs[1][1]) < 1e-4
  # Adam divides by sqrt(v): float32 reduction-order noise in tiny gradients shows up ~1e-6.
  for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradient_accumulation_matches_the_full_batch():
  devices = jax.devices()[:2]
  results = []
  for accum in (1, 4):
    config = tiny_config(data=2)
    config.train.grad_accum_steps = accum
    setup = make_setup(config, devices)
    state = train.init_state(setup)
    batch = packed_batch(config)
    batch["weights"][:] = 1.0  # equal counts per micro-batch: mean of means == global mean
    with jax.set_mesh(setup.mesh):
      gb = parallel.global_batch(batch, setup.mesh)
      step = train.jit_train_step(setup, gb)
      for _ in range(2):
        state, metrics = step(state, gb)
    results.append((float(metrics["train/loss"]), jax.device_get(state["params"])))
  assert abs(results[0][0] - results[1][0]) < 1e-5
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, atol=1e-5)  # see the note on Adam above


def test_no_weight_decay_on_biases_norms_and_scalars():
  m, v, s = np.ones((2, 2)), np.ones((2,)), np.float32(1.0)
  params = {"ln": {"scale": v, "bias": v}, "attn": {"query": m, "query_bias": m}, "embed": m,
            "stacked": {"scale": m, "bias": m}, "logits": {"log_scale": s}, "cls_token": v}
  assert optim.decay_mask(params) == {"ln": {"scale": False, "bias": False},
                                      "attn": {"query": True, "query_bias": False}, "embed": True,
                                      "stacked": {"scale": False, "bias": False},
                                      "logits": {"log_scale": False}, "cls_token": False}


def test_schedule_warms_up_then_decays():
  config = tiny_config()
  config.optim.warmup_steps = 10
  config.optim.learning_rate = 1.0
  schedule = optim.make_schedule(config.optim, 110)
  assert float(schedule(0)) == 0.0
  assert abs(float(schedule(10)) - 1.0) < 1e-6
  assert abs(float(schedule(110)) - config.optim.end_lr_fraction) < 1e-6
  assert float(schedule(60)) < float(schedule(20))


@pytest.mark.smoke
def test_training_run_writes_its_outputs(tmp_path):
  config = tiny_config(data=-1)
  config.data.data_dir = str(tmp_path / "data")
  config.train.steps = 6
  config.train.log_every = 2
  config.train.eval_every = 3
  config.checkpoint.every = 3
  config.data.eval_batches = 2
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train_rows = [r for r in rows if "train/loss" in r]
  eval_rows = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6]
  assert [r["step"] for r in eval_rows] == [3, 6]
  for key in ("train/grad_norm", "train/learning_rate", "perf/units_per_s", "perf/step_time_s", "perf/data_wait_fraction"):
    assert key in train_rows[-1]
  assert {"eval/perplexity", "eval/bits_per_byte"} <= set(eval_rows[-1])
  assert abs(eval_rows[-1]["eval/perplexity"] - np.exp(eval_rows[-1]["eval/loss"])) < 1e-3
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert json.load(open(workdir / "config.json"))["train"]["steps"] == 6
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert result["step"] == 6 and np.isfinite(result["eval/loss"])
