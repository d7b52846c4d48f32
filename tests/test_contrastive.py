"""The contrastive paradigm end to end: the tiny config learns digits, zero-shot; resume is exact;
classify (CLI and API); evaluation metrics; config errors; the benchmark covers it."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config, set_fields
from fmjax import bench, classify, objectives, train
from fmjax.config_checks import ConfigError
from fmjax.data import digits, image_text

STEPS = 300
# Held-out digits (never seen in training) classified zero-shot from class-name prompts. Chance
# is 10%; this 300-step run measured 85.1% (8 fake CPU devices, jax 0.10.2). The bar leaves
# room for seeds and library versions while staying 60 points above chance.
MIN_ZEROSHOT_ACCURACY = 0.7


def tiny(tmp, **overrides):
  config = load_config("clip", "tiny")
  config.data.data_dir = str(tmp / "data")
  return set_fields(config, **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("clip")
  config = tiny(tmp, train__steps=STEPS, train__eval_every=STEPS, checkpoint__every=STEPS)
  result = train.train_and_evaluate(config, str(tmp / "run"))
  return config, str(tmp / "run"), result


def test_tiny_clip_learns_zero_shot_digits(trained):
  _, workdir, result = trained
  assert result["step"] == STEPS
  assert result["eval/zeroshot_chance"] == pytest.approx(0.1)
  assert result["eval/zeroshot_images"] == 355  # every held-out digit
  print("tiny clip after", STEPS, "steps:", {k: v for k, v in result.items() if k.startswith("eval/")})
  assert result["eval/zeroshot_top1"] >= MIN_ZEROSHOT_ACCURACY, result
  # Retrieval among 355 held-out pairs: about 36 pairs share each digit and their captions are
  # interchangeable, so recall@5 of the exact caption is bounded near 5/36; chance is 5/355.
  assert result["eval/image_to_text_recall@5"] > 3 * 5 / 355, result
  rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < losses[0] - 1.0
  # In-batch retrieval while training: a guess finds the own caption 1/64 of the time; about 6
  # rows of a batch share a digit and their captions are interchangeable, so ~1/6 is the ceiling
  # (measured: 0.11 at step 300).
  assert result["train/image_to_text_accuracy"] > 0.05 and result["train/text_to_image_accuracy"] > 0.05


def digit_png(tmp_path, index: int, split_label: int | None = None) -> tuple[str, int]:
  """A held-out digit written as an 8x8 PNG file, and its label."""
  from sklearn.datasets import load_digits
  data = load_digits()
  held_out = np.flatnonzero(digits.held_out(data.target))
  i = held_out[index]
  path = tmp_path / f"digit_{index}.png"
  Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8)).save(path)
  return str(path), int(data.target[i])


def test_classify_api_on_held_out_digits(trained, tmp_path):
  _, workdir, _ = trained
  model = classify.ImageText.from_workdir(workdir)
  files = [digit_png(tmp_path, i) for i in range(40)]
  probs = model.classify([f for f, _ in files], list(digits.DIGIT_WORDS))
  assert probs.shape == (40, 10)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # CLIP: a softmax over labels
  accuracy = np.mean(probs.argmax(axis=1) == np.array([label for _, label in files]))
  assert accuracy >= MIN_ZEROSHOT_ACCURACY - 0.1
  # Embeddings: normalised, and retrieval finds an image's own embedding first.
  image_emb = model.embed_images([f for f, _ in files[:5]])
  np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-5)
  assert model.retrieve(image_emb[3], image_emb, k=2)[0][0] == 3


def test_classify_cli(trained, tmp_path):
  _, workdir, _ = trained
  path, label = digit_png(tmp_path, 0)
  cmd = [sys.executable, "-m", "fmjax.classify", "--workdir", workdir, "--image", path,
         "--labels", ",".join(digits.DIGIT_WORDS), "--top_k", "3"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [l for l in out.stdout.splitlines() if "\t" in l]
  assert len(lines) == 3
  probs = [float(l.split("\t")[1]) for l in lines]
  assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


@pytest.mark.parametrize("args,message", [
    (["--image", "/nonexistent/x.png", "--labels", "a,b"], "/nonexistent/x.png"),
    (["--image", "IMAGE", "--labels", " , "], "no labels"),
])
def test_classify_cli_errors(trained, tmp_path, args, message):
  _, workdir, _ = trained
  path, _ = digit_png(tmp_path, 1)
  args = [path if a == "IMAGE" else a for a in args]
  out = subprocess.run([sys.executable, "-m", "fmjax.classify", "--workdir", workdir, *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]


def test_corrupt_image_file_is_named(trained, tmp_path):
  _, workdir, _ = trained
  bad = tmp_path / "not_an_image.png"
  bad.write_bytes(b"this is not a png")
  with pytest.raises(ValueError, match="not_an_image.png"):
    classify.ImageText.from_workdir(workdir).embed_images([str(bad)])


def test_resume_is_exact(tmp_path):
  config = tiny(tmp_path, train__steps=4, train__batch_size=16, train__log_every=1, train__eval_every=0,
                checkpoint__every=2, model__image__num_layers=1, model__text__num_layers=1,
                data__eval_examples=32, optim__warmup_steps=1)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at=2)["step"] == 2
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["train/loss"] == straight["train/loss"]
  assert resumed["eval/zeroshot_top1"] == straight["eval/zeroshot_top1"]
  losses = lambda run: [json.loads(l)["train/loss"] for l in open(tmp_path / run / "metrics.jsonl")
                        if "train/loss" in json.loads(l)]
  assert losses("resumed")[-2:] == losses("straight")[-2:]


@pytest.mark.parametrize("loss", ["siglip", "siglip_chunked"])
def test_siglip_variants_train_and_report_bias(tmp_path, loss):
  config = tiny(tmp_path, train__steps=2, train__batch_size=16, train__log_every=1, train__eval_every=0,
                model__image__num_layers=1, model__text__num_layers=1, model__loss=loss,
                data__eval_examples=32, optim__warmup_steps=1)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert ("train/image_to_text_accuracy" in result) == (loss == "siglip")  # chunked: no B x B matrix
  assert result["train/logit_bias"] == pytest.approx(-10.0, abs=0.1)
  assert result["train/logit_scale"] == pytest.approx(10.0, rel=0.05)
  assert np.isfinite(result["train/loss"])


def test_finish_eval_by_hand():
  """Two pairs whose embeddings match crosswise, and two labelled images against two classes."""
  e = np.eye(2, dtype=np.float32)
  outputs = [
      {"image_emb": e, "text_emb": e[::-1], "valid": np.ones(2, np.float32)},
      {"image_emb": np.stack([e[0], e[1]]), "labels": np.array([0, 0]), "valid": np.array([1.0, 0.0])},
      {"text_emb": np.stack([e[0], e[1], e[0]]), "prompt_class": np.array([0, 1, 0]),
       "valid": np.array([1.0, 1.0, 0.0])},
  ]
  metrics = objectives.get("contrastive").finish_eval(outputs)
  assert metrics["eval/image_to_text_recall@1"] == 0.0  # each image's nearest text is the other's
  assert metrics["eval/pairs"] == 2
  assert metrics["eval/zeroshot_top1"] == 1.0 and metrics["eval/zeroshot_images"] == 1  # padding dropped
  assert metrics["eval/zeroshot_chance"] == 0.5


def test_class_prompt_batches_pad_and_split_over_processes(tmp_path):
  config = tiny(tmp_path, train__batch_size=16)
  tokenizer = objectives.get("contrastive").stand_in_assets(config)
  names = ["zero", "one", "two"]
  tokens, classes = image_text.class_prompt_tokens(config, tokenizer, names)  # 3 x 5 templates
  one = image_text.class_prompt_batches(config, tokenizer, names, process_index=0, process_count=1)
  assert len(one) == 1 and one[0]["valid"].tolist() == [1.0] * 15 + [0.0]
  np.testing.assert_array_equal(one[0]["text_tokens"][:15], tokens)
  np.testing.assert_array_equal(one[0]["prompt_class"][:15], classes)
  two = [image_text.class_prompt_batches(config, tokenizer, names, process_index=p, process_count=2) for p in (0, 1)]
  for key in ("text_tokens", "prompt_class", "valid"):
    np.testing.assert_array_equal(np.concatenate([two[0][0][key], two[1][0][key]]), one[0][key])


@pytest.mark.parametrize("overrides,message", [
    ({"train__grad_accum_steps": 2}, "config.train.grad_accum_steps=2"),
    ({"model__loss": "triplet"}, "config.model.loss='triplet'"),
    ({"model__image__patch_size": 5}, "config.data.image_size=16 must be divisible by config.model.image.patch_size=5"),
    ({"model__text__num_heads": 3}, "config.model.text.embed_dim=128 must be divisible by config.model.text.num_heads=3"),
    ({"model__image__dtype": "float16"}, "config.model.image.dtype='float16'"),
    ({"data__bad_images": "ignore"}, "config.data.bad_images='ignore'"),
    ({"data__text_len": 1}, "config.data.text_len=1"),
    ({"mesh__data": 8, "train__batch_size": 12}, "config.train.batch_size=12"),
])
def test_bad_contrastive_config_is_named(tmp_path, overrides, message):
  config = tiny(tmp_path, **overrides)
  with pytest.raises(ConfigError) as info:
    train.validate(config, objectives.get("contrastive"))
  assert message in str(info.value)


def test_benchmark_covers_contrastive(tmp_path, monkeypatch):
  monkeypatch.setenv("FMJAX_DATA_DIR", str(tmp_path / "no_data_here"))
  config = tiny(tmp_path, bench__steps=1, bench__warmup_steps=0, train__batch_size=8,
                model__image__num_layers=1, model__text__num_layers=1)
  config.data.data_dir = ""
  result = bench.run_benchmark(config)
  assert result["objective"] == "contrastive"
  assert result["examples_per_s"] == pytest.approx(8 / result["step_time_s"], rel=1e-3)
  assert result["params"] > 0 and np.isfinite(result["final_loss"])
  assert not (tmp_path / "no_data_here").exists(), "a benchmark must not build datasets"


def write_user_pairs(folder, corrupt: bool = False):
  """Twelve small PNG images (red or blue squares) with JSONL captions; optionally one
  unreadable image file."""
  folder.mkdir()
  lines = []
  for i in range(12):
    color = (200, 30, 30) if i % 2 else (30, 30, 200)
    Image.new("RGB", (20 + i, 24), color).save(folder / f"img{i}.png")
    lines.append({"image": f"img{i}.png", "caption": f"a {'red' if i % 2 else 'blue'} square"})
  if corrupt:
    (folder / "broken.png").write_bytes(b"not an image")
    lines.append({"image": "broken.png", "caption": "a broken file"})
  (folder / "captions.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  return folder


def run_main(tmp_path, *overrides):
  cmd = [sys.executable, "-m", "fmjax.main", "--config", f"{ROOT}/experiments/clip.py:tiny",
         "--workdir", str(tmp_path / "run"), f"--config.data.data_dir={tmp_path / 'data'}",
         "--config.train.steps=2", "--config.train.batch_size=8", "--config.optim.warmup_steps=1",
         "--config.model.image.num_layers=1", "--config.model.text.num_layers=1", *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_trains_on_the_users_image_folder(tmp_path):
  folder = write_user_pairs(tmp_path / "pairs", corrupt=True)
  pairs = [f"--config.data.image_dir={folder}", f"--config.data.captions_file={folder / 'captions.jsonl'}",
           "--config.data.eval_fraction=0.25"]
  failed = run_main(tmp_path, *pairs)
  assert failed.returncode == 2 and "broken.png" in failed.stderr, failed.stderr[-2000:]
  checkpoints = tmp_path / "run" / "checkpoints"
  assert not checkpoints.exists() or not any(checkpoints.iterdir())  # stopped before training
  done = run_main(tmp_path, *pairs, "--config.data.bad_images=skip")
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  final = [r for r in rows if "eval/pairs" in r][-1]
  assert final["step"] == 2 and final["eval/pairs"] >= 1 and "eval/zeroshot_top1" not in final


def test_missing_captions_file_is_named(tmp_path):
  out = run_main(tmp_path, f"--config.data.image_dir={tmp_path}",
                 f"--config.data.captions_file={tmp_path / 'nope.jsonl'}")
  assert out.returncode == 2 and "nope.jsonl" in out.stderr, out.stderr[-2000:]
