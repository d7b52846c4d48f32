"""Workdirs and data dirs given as gs:// URLs, end to end, against a fake bucket.

The fake maps `gs://BUCKET/KEY` to `<tmp>/store/BUCKET/KEY` at the three places a run reaches
Cloud Storage: etils.epath (fmjax.paths, tfds, Orbax's metadata, grain's iterator state),
TensorStore under Orbax (the arrays) and tensorboardX's writer registry. Everything above them
sees real gs:// strings, so a path that loses its scheme (abspath, os.path, open) would land
in a local folder named `gs:` in the working directory, which each test checks is absent.
"""

import json
import os

import pytest
import tensorboardX.record_writer
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from conftest import small_config
from fmjax import checkpointing, generate, inference, paths, train
from fmjax.data import building, tokenizers

URL = "gs://fmjax-test/runs/x"

_EPATH_CALLS = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
                "rename", "replace", "rmtree", "stat", "walk")


class FakeBucket:
  """gs:// URLs <-> files under `store`."""

  def __init__(self, store):
    self.store = str(store)

  def local(self, path) -> str:
    path = os.fspath(path)
    return os.path.join(self.store, path[len("gs://"):]) if path.startswith("gs://") else path

  def url(self, path) -> str:
    path = os.fspath(path)
    return "gs://" + os.path.relpath(path, self.store) if path.startswith(self.store + os.sep) else path

  def epath_call(self, name):
    def call(original, path, *args, **kwargs):
      if name in ("copy", "rename", "replace"):  # (src, dst, ...)
        args = (self.local(args[0]),) + args[1:]
      if name == "open" and os.fspath(path).startswith("gs://"):
        if "a" in args[0]:
          raise NotImplementedError(f"{path}: Cloud Storage objects cannot be appended to")
        if "w" in args[0]:  # an object store needs no folders before writing an object
          os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
      out = original(self.local(path), *args, **kwargs)
      if name == "glob":
        return [self.url(p) for p in out]
      if name == "walk":
        return ((self.url(top), dirs, files) for top, dirs, files in out)
      return out
    return call

  # tensorboardX's writer factory interface.
  def open(self, path):
    os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
    return open(self.local(path), "wb")

  def directory_check(self, path):
    pass


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  fake = FakeBucket(tmp_path / "store")
  monkeypatch.setitem(paths.REMOTE_PACKAGES, "gs", ())  # the fake needs neither gcsfs nor the GCS client
  # TensorStore's kvstore for a gs:// path: gcs_utils.get_kvstore_for_gcs in orbax 0.12.8,
  # tensorstore_utils._get_kvstore_for_gcs in 0.12.4.
  kvstore_builders = [(module, name) for module in (gcs_utils, tensorstore_utils)
                      for name in ("get_kvstore_for_gcs", "_get_kvstore_for_gcs") if hasattr(module, name)]
  assert kvstore_builders, "this orbax builds gs:// kvstores elsewhere: update the fake bucket"
  for module, name in kvstore_builders:
    monkeypatch.setattr(module, name, lambda p: {"driver": "file", "path": fake.local(p)})
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda p: False)
  monkeypatch.setitem(tensorboardX.record_writer.REGISTERED_FACTORIES, "gs", fake)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with epath_testing.mock_epath(**{name: fake.epath_call(name) for name in _EPATH_CALLS}):
    yield fake
  assert not os.path.exists(cwd / "gs:"), "a gs:// path was used as a local path"


def test_absolute_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.setitem(paths.REMOTE_PACKAGES, "gs", ())
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert paths.absolute("gs://b/runs/x/") == "gs://b/runs/x"
  assert paths.absolute("run") == str(tmp_path / "run")
  assert paths.absolute("~/data") == str(tmp_path / "home" / "data")
  assert paths.join("gs://b/runs", "x", "config.json") == "gs://b/runs/x/config.json"
  assert (paths.is_remote("gs://b"), paths.is_remote("/gs/b"), paths.is_remote("gs:/b")) == (True, False, False)
  assert building.resolve_data_dir(small_config(data__data_dir="gs://b/tfds").data) == "gs://b/tfds"
  assert checkpointing.checkpoint_dir("gs://b/runs/x") == "gs://b/runs/x/checkpoints"


def test_unsupported_scheme_and_missing_packages_are_clear_errors(monkeypatch):
  with pytest.raises(ValueError, match=r"'http://host/run'.*gs://"):
    paths.absolute("http://host/run")
  monkeypatch.setitem(paths.REMOTE_PACKAGES, "gs", (("no_such_module_fmjax", "gcsfs"),))
  with pytest.raises(ValueError, match=r"gs://b/run.*pip install gcsfs"):
    paths.absolute("gs://b/run")


def test_lock_for_a_url_is_a_local_file_named_after_it(tmp_path, bucket):
  lock = paths.local_lock_file("gs://fmjax-test/tfds/.locks/a.lock")
  assert lock == paths.local_lock_file("gs://fmjax-test/tfds/.locks/a.lock")
  assert lock != paths.local_lock_file("gs://other/tfds/.locks/a.lock")
  assert not paths.is_remote(lock) and os.path.isabs(lock)
  assert paths.local_lock_file(str(tmp_path / "x.lock")) == str(tmp_path / "x.lock")
  with building.file_lock("gs://fmjax-test/tfds/.locks/a.lock"):
    assert os.path.exists(lock)
  assert not os.path.exists(bucket.local("gs://fmjax-test/tfds/.locks"))


def test_appender_rewrites_a_remote_file_and_keeps_what_it_held(bucket):
  path = "gs://fmjax-test/runs/a/metrics.jsonl"
  paths.write_atomically(path, "old\n")
  log = paths.Appender(path, flush_seconds=3600)
  log.write("one\n")  # the first write is uploaded at once
  assert paths.read_text(path) == "old\none\n"
  log.write("two\n")  # within the interval: held back
  assert paths.read_text(path) == "old\none\n"
  log.close()
  with open(bucket.local(path)) as handle:
    assert handle.read() == "old\none\ntwo\n"


def test_appender_appends_to_a_local_file(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("old\n")
  log = paths.Appender(str(path), flush_seconds=3600)
  log.write("one\n")
  assert path.read_text() == "old\none\n"  # line-buffered: no interval locally
  log.close()


def test_tokenizer_cache_and_copy_on_gs(bucket):
  """A SentencePiece model trained once into a gs:// data dir's cache, then found there; a run's
  copy saved to and loaded from gs://."""
  config = small_config(data__data_dir="gs://fmjax-test/tfds", data__tokenizer="sentencepiece",
                        data__vocab_size=tokenizers.MIN_SENTENCEPIECE_VOCAB)
  trained = []

  def sample_texts(data_config, max_chars, seed):
    trained.append(seed)
    return [f"def function_{i}(x):\n  return x * {i} + {i % 7}\n" for i in range(3000)]

  def describe(data_config):
    return "three thousand tiny functions"

  made = tokenizers.make_tokenizer(config.data, sample_texts=sample_texts, describe_dataset=describe)
  cached = tokenizers.sentencepiece_cache_path(config.data, describe)
  assert cached.startswith("gs://fmjax-test/tfds/fmjax_tokenizers/")
  assert os.path.isfile(bucket.local(cached))
  again = tokenizers.make_tokenizer(config.data, sample_texts=sample_texts, describe_dataset=describe)
  assert len(trained) == 1 and again.model_proto == made.model_proto

  tokenizers.save_tokenizer(made, URL + "/tokenizer")
  assert sorted(os.listdir(bucket.local(URL + "/tokenizer"))) == ["tokenizer.json", "tokenizer.model"]
  loaded = tokenizers.load_tokenizer(URL + "/tokenizer")
  text = "def function_12(x):"
  assert loaded.encode(text).tolist() == made.encode(text).tolist()


def _train_rows(metrics_text: str) -> list[int]:
  return [row["step"] for row in map(json.loads, metrics_text.splitlines()) if "train/loss" in row]


def test_training_run_in_a_gs_workdir_resumes_and_serves_inference(tmp_path, bucket):
  config = small_config(tmp_path, train__steps=2)
  first = train.train_and_evaluate(config, URL + "/", stop_at=1)
  assert first["step"] == 1
  run = bucket.local(URL)
  assert json.load(open(os.path.join(run, "config.json")))["train"]["steps"] == 2
  assert os.listdir(os.path.join(run, "checkpoints")) == ["1"]
  assert _train_rows(open(os.path.join(run, "metrics.jsonl")).read()) == [1]

  said = []
  second = train.train_and_evaluate(config, URL, log=said.append)
  assert second["step"] == 2
  assert f"resumed from {URL}/checkpoints at step 1" in said
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["1", "2"]
  # Both invocations' rows: the second rewrote the object with the first's rows kept.
  assert _train_rows(open(os.path.join(run, "metrics.jsonl")).read()) == [1, 2]
  assert os.listdir(os.path.join(run, "tokenizer")) == ["tokenizer.json"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "tensorboard")))

  generator = generate.Generator.from_workdir(URL)
  assert generator.run.step == 2 and generator.run.config.train.steps == 2
  (ids,) = generator.generate_ids(["def "], max_new_tokens=4, temperature=0.0)
  assert 1 <= len(ids) <= 4


def test_relative_local_workdir_still_works(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = small_config(tmp_path, train__steps=1, optim__warmup_steps=0)
  assert train.train_and_evaluate(config, "run")["step"] == 1
  assert os.listdir(tmp_path / "run" / "checkpoints") == ["1"]
  assert _train_rows((tmp_path / "run" / "metrics.jsonl").read_text()) == [1]
  assert inference.load_config("run").train.steps == 1
