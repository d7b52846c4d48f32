"""The diffusion paradigm end to end: the tiny config learns caption-conditioned digits; the EMA
in the train state is exact and resumes; sharded equals one device; guidance; fmjax.sample
(CLI and API); evaluation by hand; config errors; the benchmark covers it."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import ROOT, load_config, loss_and_grads, set_fields
from fmjax import bench, objectives, parallel, train
from fmjax.config_checks import ConfigError
from fmjax.objectives import diffusion as diffusion_objective
from fmjax.objectives import diffusion_sampling
from fmjax.sample import ImageSampler

STEPS = 400
# Bars for the 400-step default-run cut of `tiny` at a constant learning rate (the full 2000-step
# figures are in the config's docstring and the slow test below). Measured at step 400 (8 fake CPU
# devices, jax 0.10.2): eval loss 0.163, 53% of 200 samples (25 DDIM steps) recognised as the
# requested digit, chance 10%. The bars leave room for seeds and library versions while staying
# far above chance.
MAX_EVAL_LOSS = 0.2
MIN_SAMPLE_ACCURACY = 0.25


def tiny(tmp, variant="tiny", **overrides):
  config = load_config("diffusion", variant)
  config.data.data_dir = str(tmp / "data")
  return set_fields(config, **overrides)


def small(tmp, variant="tiny", **overrides):
  """A smaller, faster model for the mechanics tests."""
  fields = dict(train__batch_size=16, train__log_every=1, train__eval_every=0, optim__warmup_steps=1,
                model__unet__base_channels=16, model__unet__num_res_blocks=1, model__unet__num_groups=4,
                model__dit__num_layers=1, model__dit__embed_dim=32, model__dit__mlp_dim=64, model__dit__num_heads=2,
                model__text__num_layers=1, model__text__embed_dim=32, model__text__mlp_dim=64,
                model__text__num_heads=2, model__cond_dim=32, diffusion__eval_samples=16,
                diffusion__sample_steps=4, data__eval_examples=32)
  fields.update(overrides)
  return tiny(tmp, variant, **fields)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("diffusion")
  # A constant learning rate after warm-up: the full schedule would decay within these few steps.
  config = tiny(tmp, train__steps=STEPS, train__eval_every=STEPS, checkpoint__every=STEPS,
                optim__warmup_steps=50, optim__decay="constant", diffusion__eval_samples=200,
                diffusion__sample_steps=25)
  result = train.train_and_evaluate(config, str(tmp / "run"))
  return config, str(tmp / "run"), result


def test_tiny_diffusion_learns_captioned_digits(trained):
  _, workdir, result = trained
  print("tiny diffusion after", STEPS, "steps:", {k: v for k, v in result.items() if k.startswith("eval/")})
  assert result["step"] == STEPS
  assert result["eval/loss"] < MAX_EVAL_LOSS, result
  rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < 0.5 * losses[0]
  assert result["eval/sample_accuracy_chance"] == pytest.approx(0.1)
  assert result["eval/sample_accuracy"] > MIN_SAMPLE_ACCURACY, result
  assert result["eval/real_accuracy"] > 0.9  # the judge itself recognises real held-out digits
  assert result["eval/samples"] == 200
  # Noisier timesteps are harder to denoise in eps terms only near t = 0; all three are reported.
  assert all(f"eval/loss_t{k}" in result for k in range(3))
  grid = Image.open(f"{workdir}/samples/step_{STEPS}.png")
  assert grid.size[0] > 10 * 8 and grid.mode == "L"


def test_sampler_api_draws_the_requested_digit(trained):
  config, workdir, _ = trained
  sampler = ImageSampler.from_workdir(workdir)
  images = sampler.sample(prompts=["the digit seven", "the digit zero"], num=12, steps=25, guidance=3.0, seed=1)
  assert images.shape == (24, 8, 8, 1) and images.dtype == np.uint8
  again = sampler.sample(prompts=["the digit seven", "the digit zero"], num=12, steps=25, guidance=3.0, seed=1)
  np.testing.assert_array_equal(images, again)  # DDIM at eta 0 with a seed: deterministic
  other = sampler.sample(prompts=["the digit seven"], num=12, steps=25, guidance=3.0, seed=2)
  assert not np.array_equal(other, images[:12])
  from fmjax.objectives import diffusion_quality
  judge = diffusion_quality.load_judge(f"{workdir}/{diffusion_objective.JUDGE_FILE}")
  predicted = judge.predict(images)
  assert np.mean(predicted[:12] == 7) > 0.3 and np.mean(predicted[12:] == 0) > 0.3, predicted
  with pytest.raises(ValueError, match="non-empty --prompt"):
    sampler.sample(prompts=[" "], num=1)
  with pytest.raises(ValueError, match="--steps=5000"):
    sampler.sample(prompts=["seven"], num=1, steps=5000)


def test_sample_cli_writes_a_png_grid(trained, tmp_path):
  _, workdir, _ = trained
  out, npy = tmp_path / "grid.png", tmp_path / "samples.npy"
  proc = subprocess.run([sys.executable, "-m", "fmjax.sample", "--workdir", workdir, "--prompt", "the digit seven",
                         "--prompt", "a handwritten 3", "--num", "4", "--steps", "10", "--seed", "3",
                         "--out", str(out), "--npy", str(npy)],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert f"at step {STEPS}: 8 samples, 2 row(s)" in proc.stdout
  grid = np.asarray(Image.open(out))
  cell = 8 * 4  # 8 px digits enlarged 4x
  assert grid.shape == (2 * (cell + 1) + 1, 4 * (cell + 1) + 1)
  assert np.load(npy).shape == (8, 8, 8, 1)


@pytest.mark.parametrize("args,message", [
    (["--prompt", "seven", "--guidance", "nan"], "--guidance=nan"),
    (["--prompt", "seven", "--sampler", "euler"], "--sampler='euler'"),
    (["--label", "3"], "caption-conditioned"),
    (["--prompt", "seven", "--num", "0"], "--num=0"),
])
def test_sample_cli_errors(trained, tmp_path, args, message):
  _, workdir, _ = trained
  proc = subprocess.run([sys.executable, "-m", "fmjax.sample", "--workdir", workdir, "--out", str(tmp_path / "g.png"),
                         *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr


def test_sample_cli_on_a_missing_workdir(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "fmjax.sample", "--workdir", str(tmp_path / "nothing"), "--prompt", "x",
                         "--out", str(tmp_path / "g.png")], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


# ---- the moving average in the train state ---------------------------------------------------


def test_ema_update_is_exact_and_warmed_up():
  decay = 0.999
  assert float(train.ema_decay_at(decay, jnp.int32(0))) == pytest.approx(0.1)
  assert float(train.ema_decay_at(decay, jnp.int32(10_000_000))) == pytest.approx(decay)
  ema, params = {"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([3.0, -2.0], np.float32)}
  got = train.ema_update(ema, params, jnp.float32(0.75))
  np.testing.assert_allclose(got["w"], [0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25 * 2], rtol=1e-7)


def _setup(config, devices):
  objective = objectives.get(config.objective)
  mesh = parallel.make_mesh(config.mesh, devices)
  return train.build(config, objective, objective.stand_in_assets(config), mesh)


@pytest.mark.smoke
def test_ema_follows_the_params_step_by_step(tmp_path):
  config = small(tmp_path, train__batch_size=8, diffusion__ema_decay=0.9)
  setup = _setup(config, jax.devices()[:1])
  batch = parallel.global_batch(setup.objective.synthetic_batch(config, setup.assets, 8), setup.mesh)
  with jax.set_mesh(setup.mesh):
    state = train.init_state(setup)
    step = train.jit_train_step(setup, batch)
    history = [jax.device_get(state["params"])]
    for _ in range(3):
      state, _ = step(state, batch)
      history.append(jax.device_get(state["params"]))
    ema = jax.device_get(state["ema_params"])
  expected = history[0]
  for k in range(3):
    d = min(0.9, (1 + k) / (10 + k))
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected, history[k + 1])
  for got, want in zip(jax.tree.leaves(ema), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(history[-1]))]
  assert any(moved), "the average must lag behind the params"


def test_resume_is_exact_including_the_ema(tmp_path, variant="tiny-label"):
  """Class-conditional (the caption path is the trained fixture's)."""
  config = small(tmp_path, variant, train__steps=4, checkpoint__every=2, diffusion__ema_decay=0.9,
                 diffusion__eval_samples=0)  # the denoising eval alone: sampling is covered elsewhere
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at=2)["step"] == 2
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  losses = lambda run: [json.loads(l)["train/loss"] for l in open(tmp_path / run / "metrics.jsonl")
                        if "train/loss" in json.loads(l)]
  assert losses("resumed")[-2:] == losses("straight")[-2:]
  assert resumed["eval/loss"] == straight["eval/loss"]
  from fmjax import checkpointing
  abstract = _setup(config, jax.devices()[:1]).abstract_state
  params = {}
  for run in ("straight", "resumed"):
    ckpt = checkpointing.Checkpointer(str(tmp_path / run), keep=3, read_only=True)
    params[run] = (jax.device_get(ckpt.restore_params(4, abstract["params"])),
                   jax.device_get(ckpt.restore_params(4, abstract["ema_params"], "ema_params")))
    ckpt.close()
  for a, b in zip(jax.tree.leaves(params["straight"]), jax.tree.leaves(params["resumed"])):
    np.testing.assert_array_equal(a, b)


# ---- sharding, guidance ----------------------------------------------------------------------


# The U-Net variant takes ~75 s on 2 cores: slow (the U-Net's own sharded == one device test is in
# test_diffusion_models.py; the DiT variant runs the objective's path here by default).
@pytest.mark.parametrize("variant", [pytest.param("tiny", marks=pytest.mark.slow), "tiny-dit"])
def test_sharded_equals_single_device_loss_and_grads(tmp_path, variant):
  config = small(tmp_path, variant, train__batch_size=8)
  single = _setup(set_fields(small(tmp_path, variant, train__batch_size=8), mesh__data=1), jax.devices()[:1])
  sharded = _setup(set_fields(config, mesh__data=2, mesh__fsdp=2, mesh__tensor=2), jax.devices())
  state_1, state_8 = train.init_state(single), train.init_state(sharded)
  sharded_leaves = [x for x in jax.tree.leaves(state_8["params"]) if x.sharding.spec != jax.P()]
  assert sharded_leaves, "no parameter is sharded on the (2, 2, 2) mesh"
  batch = single.objective.synthetic_batch(config, single.assets, 8)
  loss_1, grads_1 = loss_and_grads(single, state_1, batch)
  loss_8, grads_8 = loss_and_grads(sharded, state_8, batch)
  assert abs(loss_1 - loss_8) < 1e-5 * max(1.0, abs(loss_1))
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


@pytest.mark.smoke
def test_guidance_at_scale_one_is_the_conditional_model(tmp_path):
  config = small(tmp_path)
  setup = _setup(config, jax.devices()[:1])
  objective, assets = setup.objective, setup.assets
  params = jax.device_get(train.init_state(setup)["params"])  # jitted init: fast
  # Perturb every parameter so the zero-initialised layers do not hide the condition.
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), params)
  model = nnx.merge(setup.graphdef, params)
  batch = {k: jnp.asarray(v) for k, v in objective.synthetic_batch(config, assets, 4).items()}
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  t = jnp.array([999, 500, 10, 0], jnp.int32)
  cond = model.condition(batch)
  conditional = model(x, t, cond)
  # The guided path runs conditional and null rows as one batch of 2B, then mixes.
  both = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([cond, model.null_condition(4)]))
  at_one = diffusion_sampling.classifier_free_guidance(both[:4], both[4:], 1.0)
  np.testing.assert_allclose(at_one, conditional, rtol=1e-5, atol=1e-5)
  at_three = diffusion_objective.guided_denoiser(model, cond, 3.0)(x, t)
  assert not np.allclose(at_three, conditional, atol=1e-3), "guidance must change the prediction"
  np.testing.assert_allclose(diffusion_objective.guided_denoiser(model, cond, 1.0)(x, t), conditional, rtol=1e-6)


# ---- evaluation by hand, data, errors, benchmark ---------------------------------------------


def test_eval_timesteps_spread_and_fixed():
  t = np.asarray(diffusion_objective.eval_timesteps(jnp.arange(300), 1000))
  assert t.min() >= 0 and t.max() <= 999
  counts = np.bincount(np.minimum(3 * t // 1000, 2), minlength=3)
  assert counts.min() >= 95, counts  # each third of the schedule gets a third of the images
  np.testing.assert_array_equal(t, np.asarray(diffusion_objective.eval_timesteps(jnp.arange(300), 1000)))


def test_finish_eval_by_hand():
  outputs = [
      {"loss_sum": 3.0, "count": 2.0, "loss_t0_sum": 3.0, "count_t0": 2.0, "loss_t1_sum": 0.0, "count_t1": 0.0,
       "loss_t2_sum": 0.0, "count_t2": 0.0},
      {"loss_sum": 1.0, "count": 2.0, "loss_t0_sum": 0.0, "count_t0": 0.0, "loss_t1_sum": 0.4, "count_t1": 1.0,
       "loss_t2_sum": 0.6, "count_t2": 1.0},
  ]
  metrics = objectives.get("diffusion").finish_eval(outputs, None)
  assert metrics == pytest.approx({"eval/loss": 1.0, "eval/loss_t0": 1.5, "eval/loss_t1": 0.4, "eval/loss_t2": 0.6})


def test_sample_grid_layout():
  images = np.arange(5 * 2 * 2 * 1, dtype=np.uint8).reshape(5, 2, 2, 1)
  grid = diffusion_objective.sample_grid(images, columns=3, min_cell=4)
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
  np.testing.assert_array_equal(grid[1:5, 1:5, 0], images[0, :, :, 0].repeat(2, 0).repeat(2, 1))
  assert (grid[6:10, 11:15] == 255).all()  # the empty sixth cell stays white


def test_training_batches_carry_the_condition(tmp_path):
  for variant, key, shape in (("tiny", "text_tokens", (16, 48)), ("tiny-label", "labels", (16,))):
    config = small(tmp_path, variant, diffusion__eval_samples=0)  # no judge needed
    objective = objectives.get("diffusion")
    assets = objective.prepare_assets(config, None)
    batch = next(iter(objective.train_data(config, assets, process_index=0, process_count=1)))
    assert batch["images"].shape == (16, 8, 8, 1) and batch["images"].dtype == np.uint8
    assert batch[key].shape == shape and set(batch) == {"images", key}
    assert batch["images"].max() > 200 and batch["images"].min() == 0  # digits: ink on black


@pytest.mark.parametrize("overrides,message", [
    ({"diffusion__schedule": "sigmoid"}, "config.diffusion.schedule='sigmoid'"),
    ({"diffusion__target": "x0"}, "config.diffusion.target='x0'"),
    ({"data__image_size": 10}, "divisible"),
    ({"model__arch": "dit", "model__dit__patch_size": 3}, "patch_size=3"),
    ({"diffusion__condition": "none"}, "config.diffusion.guidance=3.0"),
    ({"diffusion__cond_dropout": 0.0}, "condition dropout"),
    ({"diffusion__sample_steps": 2000}, "config.diffusion.sample_steps=2000"),
    ({"diffusion__ema_decay": 1.0}, "config.diffusion.ema_decay=1.0"),
    ({"model__channels": 4}, "config.model.channels=4"),
    ({"diffusion__condition": "caption"}, "config.diffusion.condition='caption'"),
])
def test_bad_diffusion_config_is_named(tmp_path, overrides, message):
  config = tiny(tmp_path, **overrides)
  with pytest.raises(ConfigError) as info:
    train.validate(config, objectives.get("diffusion"))
  assert message in str(info.value)


def test_benchmark_covers_diffusion(tmp_path, monkeypatch):
  monkeypatch.setenv("FMJAX_DATA_DIR", str(tmp_path / "no_data_here"))
  config = small(tmp_path, bench__steps=1, bench__warmup_steps=0, train__batch_size=8)
  config.data.data_dir = ""
  result = bench.run_benchmark(config)
  assert result["objective"] == "diffusion"
  assert result["examples_per_s"] == pytest.approx(8 / result["step_time_s"], rel=1e-3)
  assert result["params"] > 0 and np.isfinite(result["final_loss"])
  assert not (tmp_path / "no_data_here").exists(), "a benchmark must not build datasets"


@pytest.mark.slow
def test_full_tiny_config_draws_recognisable_digits(tmp_path):
  """The `tiny` config as shipped (2000 steps, ~12 min on 2 cores): the figures of its docstring
  (measured 100% recognised, eval loss 0.136, Frechet distance 1.56)."""
  config = tiny(tmp_path)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  print("tiny diffusion:", {k: v for k, v in result.items() if k.startswith("eval/")})
  assert result["eval/sample_accuracy"] > 0.9, result
  assert result["eval/loss"] < 0.15, result
  assert result["eval/frechet_distance"] < 2.5, result


def test_trains_unconditionally_on_a_folder_without_captions(tmp_path):
  """The user's images alone (no captions file): an unconditional model trains and samples."""
  folder = tmp_path / "images" / "nested"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(12):
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
  (folder / "notes.txt").write_text("not an image")
  config = small(tmp_path, train__steps=2, diffusion__condition="none", diffusion__guidance=1.0,
                 data__dataset="", data__image_dir=str(tmp_path / "images"), data__captions_file="",
                 data__eval_fraction=0.25, model__channels=3, diffusion__eval_samples=0, train__batch_size=8)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["eval/loss"])
  images = ImageSampler.from_workdir(str(tmp_path / "run")).sample(num=3, steps=2)
  assert images.shape == (3, 8, 8, 3)
  config.diffusion.condition = "text"
  config.diffusion.guidance = 3.0
  with pytest.raises(ConfigError, match="config.data.captions_file"):
    train.validate(config, objectives.get("diffusion"))
