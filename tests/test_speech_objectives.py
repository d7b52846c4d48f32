"""The speech objectives on the trainer: BEST-RQ masked prediction and transcription, end to end
on the small synthesised corpus, with tiny models (seconds per run)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config, loss_and_grads, set_fields
from fmjax import config_checks, objectives, parallel, train
from fmjax.objectives import speech_masked


def tiny(tmp_path, variant, **overrides):
  c = load_config("speech", variant)
  set_fields(c, data__data_dir=str(tmp_path / "data"), data__dataset="speech_synth/small", train__steps=2,
             train__batch_size=8, train__log_every=1, train__eval_every=0, data__eval_examples=8,
             optim__warmup_steps=1, model__encoder__num_layers=1, model__encoder__embed_dim=32,
             model__encoder__mlp_dim=64, model__encoder__num_heads=2, speech__codebook_size=64)
  if "decoder" in c.model:
    set_fields(c, model__decoder__num_layers=1, model__decoder__embed_dim=32, model__decoder__mlp_dim=64,
               model__decoder__num_heads=2, data__text_len=48)
  return set_fields(c, **overrides)


def test_masked_targets_are_fixed_and_masks_are_spans(tmp_path):
  """The quantiser's codes depend on the audio only: the same for two different mask draws (and
  so across steps and resumes); masked units come in spans and never cover padding."""
  config = tiny(tmp_path, "tiny-masked")
  task = speech_masked.SpeechMasked.task(config)
  rng = np.random.default_rng(0)
  n = int(config.data.max_seconds * 16000)
  batch = {"audio": (0.1 * rng.standard_normal((2, n))).astype(np.float32),
           "audio_lengths": np.array([n, n // 2], np.int32)}
  keys = [jax.random.split(jax.random.PRNGKey(s), 3) for s in (1, 2)]
  (_, _, codes_a, masked_a, valid), (_, _, codes_b, masked_b, _) = [
      speech_masked.targets_and_inputs(task, batch, None, k[0], k[1]) for k in keys]
  np.testing.assert_array_equal(codes_a, codes_b)
  assert not np.array_equal(masked_a, masked_b)
  assert not np.any(np.asarray(masked_a) & ~np.asarray(valid))
  assert np.asarray(masked_a).sum(axis=1).min() >= task.mask_span


def test_masked_pretraining_trains_and_evaluates(tmp_path):
  result = train.train_and_evaluate(tiny(tmp_path, "tiny-masked"), str(tmp_path / "run"))
  assert result["step"] == 2
  assert np.isfinite(result["train/loss"]) and 0 < result["eval/masked_fraction"] < 1
  # Both count masked units among those that hold audio: ~mask_prob x span of them.
  assert abs(result["train/masked_fraction"] - result["eval/masked_fraction"]) < 0.1, result
  assert 0 <= result["eval/masked_accuracy"] <= 1 and result["eval/code_perplexity"] > 1


def test_transcriber_evaluates_wer_and_transcribes(tmp_path):
  """Train two steps from a masked run's encoder, evaluate WER/CER with logged pairs, then
  transcribe a file through the command line."""
  masked = str(tmp_path / "masked")
  train.train_and_evaluate(tiny(tmp_path, "tiny-masked", train__steps=1), masked)
  config = tiny(tmp_path, "tiny", checkpoint__init_from=masked, checkpoint__init_subtrees="encoder")
  workdir = tmp_path / "asr"
  result = train.train_and_evaluate(config, str(workdir))
  assert 0 <= result["eval/cer"] and result["eval/utterances"] == 8
  assert result["eval/example_0"].startswith("REF: ")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("eval/example_0" in row for row in rows)

  import soundfile
  wav = tmp_path / "a.wav"
  soundfile.write(wav, (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32), 24000)
  proc = subprocess.run([sys.executable, "-m", "fmjax.transcribe", "--workdir", str(workdir), "--audio", str(wav),
                         "--beam", "2", "--max_tokens", "8"], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[-1].startswith(f"{wav}\t")
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"not audio")
  proc = subprocess.run([sys.executable, "-m", "fmjax.transcribe", "--workdir", str(workdir), "--audio", str(bad)],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2 and str(bad) in proc.stderr


def test_encoder_init_takes_the_masked_runs_encoder(tmp_path):
  from test_checkpoint import final_params
  masked = str(tmp_path / "masked")
  masked_config = tiny(tmp_path, "tiny-masked", train__steps=1)
  train.train_and_evaluate(masked_config, masked)
  config = tiny(tmp_path, "tiny", train__steps=1, optim__learning_rate=1e-12, checkpoint__init_from=masked,
                checkpoint__init_subtrees="encoder")
  train.train_and_evaluate(config, str(tmp_path / "asr"))
  source, _ = final_params(masked_config, masked)
  target, _ = final_params(config, str(tmp_path / "asr"))
  for a, b in zip(jax.tree.leaves(source["encoder"]), jax.tree.leaves(target["encoder"])):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("variant,field,value,message", [
    ("tiny-masked", "speech.mask_prob", 0.0, "config.speech.mask_prob=0.0"),
    ("tiny-masked", "data.max_seconds", 4.01, "config.data.max_seconds=4.01"),
    ("tiny-masked", "features.spec_augment", True, "config.features.spec_augment=True"),
    ("tiny", "model.decoder.embed_dim", 64, "config.model.decoder.embed_dim=64"),
    ("tiny", "data.bad_audio", "ignore", "config.data.bad_audio='ignore'"),
])
def test_bad_config_is_named(tmp_path, variant, field, value, message):
  config = tiny(tmp_path, variant, **{field.replace(".", "__"): value})
  with pytest.raises(config_checks.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    objectives.get(config.objective).validate(config)


# ---- resume, sharding -------------------------------------------------------------------------


def _setup(config, devices):
  objective = objectives.get(config.objective)
  mesh = parallel.make_mesh(config.mesh, devices)
  return train.build(config, objective, objective.stand_in_assets(config), mesh)


@pytest.mark.parametrize("variant", ["tiny-masked", "tiny"])
def test_resume_is_exact(tmp_path, variant):
  """Stopped at step 2 and resumed: the same losses, eval metrics and final parameters as one run
  (the pipeline's position, the mask and augmentation draws all come back)."""
  config = tiny(tmp_path, variant, train__steps=4, checkpoint__every=2, train__eval_every=4,
                features__spec_augment=variant == "tiny", data__noise_snr_db=10.0)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at=2)["step"] == 2
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  losses = lambda run: [json.loads(l)["train/loss"] for l in open(tmp_path / run / "metrics.jsonl")
                        if "train/loss" in json.loads(l)]
  assert len(losses("straight")) == 4 and losses("resumed")[-2:] == losses("straight")[-2:]
  assert resumed["eval/loss"] == straight["eval/loss"]
  from test_checkpoint import final_params
  a, _ = final_params(config, str(tmp_path / "straight"))
  b, _ = final_params(config, str(tmp_path / "resumed"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("variant", ["tiny-masked", "tiny"])
def test_sharded_equals_single_device_loss_and_grads(tmp_path, variant):
  """The objective's loss (features, quantiser targets and masks computed in the step) and its
  gradients on a (data 2, fsdp 2, tensor 2) mesh equal one device's."""
  config = tiny(tmp_path, variant)
  single = _setup(set_fields(tiny(tmp_path, variant), mesh__data=1), jax.devices()[:1])
  sharded = _setup(set_fields(config, mesh__data=2, mesh__fsdp=2, mesh__tensor=2), jax.devices())
  state_1, state_8 = train.init_state(single), train.init_state(sharded)
  assert [x for x in jax.tree.leaves(state_8["params"]) if x.sharding.spec != jax.P()], "nothing is sharded"
  batch = single.objective.synthetic_batch(config, single.assets, 8)
  batch["audio_lengths"] = (batch["audio_lengths"] * np.linspace(0.4, 1.0, 8)).astype(np.int32)  # padding too
  loss_1, grads_1 = loss_and_grads(single, state_1, batch)
  loss_8, grads_8 = loss_and_grads(sharded, state_8, batch)
  assert abs(loss_1 - loss_8) < 1e-5 * max(1.0, abs(loss_1))
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("variant,objective", [("tiny-masked", "speech_masked"), ("tiny", "speech_seq2seq")])
def test_benchmark_covers_both_objectives(tmp_path, monkeypatch, variant, objective):
  """fmjax.bench on synthetic waveforms (and tokens): no corpus is synthesised or read."""
  from fmjax import bench
  monkeypatch.setenv("FMJAX_DATA_DIR", str(tmp_path / "no_data_here"))
  config = tiny(tmp_path, variant, bench__steps=1, bench__warmup_steps=0, data__data_dir="")
  result = bench.run_benchmark(config)
  assert result["objective"] == objective
  assert result["examples_per_s"] == pytest.approx(8 / result["step_time_s"], rel=1e-3)
  assert result["params"] > 0 and result["tflops_per_s"] > 0 and np.isfinite(result["final_loss"])
  assert not (tmp_path / "no_data_here").exists(), "a benchmark must not build datasets"
