"""Tests of fmjax.data: tokenizers, sources (tfds/ArrayRecord) and grain pipelines.

Pure numpy: nothing here initialises a jax backend (other test files configure it first).
All data is made in temporary folders; the default corpus is built once per session.
"""

import importlib.util
import json
import os
import pathlib
import random

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

import fmjax.data as fmdata
from fmjax.data import default_corpus
from fmjax.data import packing
from fmjax.data import sentencepiece_training
from fmjax.data import text_chunks
from fmjax.data import text_files

pytestmark = pytest.mark.smoke  # also runs on Python 3.12 with the newest jax (.ci/run)

_REPO = pathlib.Path(__file__).resolve().parents[1]
_UNSEEN = "naïve café — 中文字符 🙂 \t tab\x00nul ÿ"  # characters absent from the synthetic corpus


def _load_experiment(name: str):
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", _REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(data_dir, **data_overrides):
  config = _load_experiment("gpt").get_config("tiny")
  config.data.data_dir = str(data_dir)
  config.data.prefetch = 0
  config.train.batch_size = 4
  for key, value in data_overrides.items():
    setattr(config.data, key, value)
  return config


def synthetic_text(seed: int, lines: int) -> str:
  """Deterministic pseudo-English: a small word list, so a 512-piece vocabulary is learnable."""
  rng = random.Random(seed)
  syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "po", "an", "el", "or", "us"]
  words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(200)]
  out = []
  for i in range(lines):
    sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
    out.append(f"{i}: {sentence.capitalize()}.\n")
  return "".join(out)


@pytest.fixture(scope="session")
def default_data_dir(tmp_path_factory):
  """A data dir holding the built default corpus (built once, ~1 s)."""
  data_dir = tmp_path_factory.mktemp("tfds_default")
  fmdata.open_split(tiny_config(data_dir).data, "train")
  return data_dir


@pytest.fixture
def text_corpus(tmp_path):
  """Three small text files of distinct synthetic text (~190 KB)."""
  folder = tmp_path / "corpus"
  folder.mkdir()
  for i in range(3):
    (folder / f"part{i}.txt").write_text(synthetic_text(i, 1200), encoding="utf-8")
  return folder


# ---- tokenizers ------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_and_layout():
  tok = fmdata.ByteTokenizer()
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.special_ids == (0, 1, 2, 3, 4) and tok.vocab_size == 261
  text = "def f(x):\n    return 'héllo wörld ✓ 🙂'\n" + _UNSEEN
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= 5 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text
  assert tok.decode(np.concatenate([[tok.bos_id], ids, [tok.eos_id, tok.pad_id]])) == text  # specials dropped
  lengths = tok.token_byte_lengths()
  assert lengths.shape == (tok.vocab_size,) and lengths.dtype == np.int32
  assert lengths[ids].sum() == len(text.encode("utf-8")) and lengths[list(tok.special_ids)].sum() == 0
  assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # a cut multi-byte character does not raise


def test_sentencepiece_trains_round_trips_caches_and_saves(tmp_path, text_corpus, monkeypatch):
  config = tiny_config(tmp_path / "tfds", files=str(text_corpus / "*.txt"), tokenizer="sentencepiece",
                       vocab_size=512, tokenizer_dir=str(tmp_path / "tok_cache"))
  tok = fmdata.make_tokenizer(config.data)
  assert isinstance(tok, fmdata.SentencePieceTokenizer) and tok.vocab_size == 512
  assert tok.special_ids == (0, 1, 2, 3, 4)
  for text in [synthetic_text(7, 3), _UNSEEN, "  indented\n\n\tand  spaced  ", ""]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and not set(ids.tolist()) & set(tok.special_ids)
    assert tok.decode(ids) == text  # byte fallback: nothing becomes <unk>
    assert tok.token_byte_lengths()[ids].sum() == len(text.encode("utf-8"))
  common = synthetic_text(0, 20)
  assert len(tok.encode(common)) < 0.6 * len(common.encode())  # it learned pieces, not just bytes

  # Cached: a second make loads the file instead of training again.
  [model_file] = (tmp_path / "tok_cache").glob("*.model")
  mtime = model_file.stat().st_mtime_ns
  monkeypatch.setattr(sentencepiece_training, "train", lambda *a, **k: pytest.fail("trained twice"))
  again = fmdata.make_tokenizer(config.data)
  assert model_file.stat().st_mtime_ns == mtime
  assert np.array_equal(again.encode(_UNSEEN), tok.encode(_UNSEEN))

  # Save / load round trip, without the dataset or the cache.
  for original in (tok, fmdata.ByteTokenizer()):
    folder = tmp_path / f"saved_{original.kind}"
    fmdata.save_tokenizer(original, str(folder))
    loaded = fmdata.load_tokenizer(str(folder))
    assert type(loaded) is type(original) and loaded.vocab_size == original.vocab_size
    assert loaded.special_ids == original.special_ids
    assert np.array_equal(loaded.encode(common + _UNSEEN), original.encode(common + _UNSEEN))
    assert np.array_equal(loaded.token_byte_lengths(), original.token_byte_lengths())


def test_tokenizer_config_errors(tmp_path):
  with pytest.raises(ValueError, match=r"config\.data\.vocab_size=100.*at least 512"):
    fmdata.make_tokenizer(tiny_config(tmp_path, tokenizer="sentencepiece", vocab_size=100).data)
  with pytest.raises(ValueError, match=r"config\.data\.tokenizer='bpe'.*'byte' or 'sentencepiece'"):
    fmdata.make_tokenizer(tiny_config(tmp_path, tokenizer="bpe").data)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    fmdata.load_tokenizer(str(tmp_path))


# ---- sources ---------------------------------------------------------------------------------


def test_split_at_lines_and_tail_cut():
  text = "a\n" * 10 + "x" * 25 + "\nend"
  pieces = text_chunks.split_at_lines(text, 8)
  assert "".join(pieces) == text and all(len(p) <= 8 for p in pieces)
  assert pieces[:3] == ["a\na\na\na\n", "a\na\na\na\n", "a\na\n"]  # cut after whole lines where possible
  cut = text_chunks.tail_cut(text, 0.3)
  assert text[cut - 1] == "\n" and 0 < cut < len(text)
  assert text_chunks.tail_cut(text, 0.0) == len(text)


def test_default_corpus_builds_with_disjoint_splits(default_data_dir):
  builder = default_corpus.builder(str(default_data_dir))
  assert builder.is_prepared()
  ids = {}
  for split in ("train", "validation"):
    source = builder.as_data_source(split=split)
    ids[split] = {source[i]["id"].decode() for i in range(len(source))}
  assert not ids["train"] & ids["validation"]  # no document in both splits
  assert any(i.startswith("topic:") for i in ids["train"] | ids["validation"])
  assert "os.py" in ids["train"] | ids["validation"]
  assert 0.01 < len(ids["validation"]) / len(ids["train"]) < 0.15
  train = fmdata.open_split(tiny_config(default_data_dir).data, "train")
  assert isinstance(train[0]["text"], str) and len(train) > 500


def _records_by_part(config, data_dir, split):
  """Texts of a text-files split, reassembled per file in original order (storage is hashed)."""
  source = text_files.builder(config.data, str(data_dir)).as_data_source(split=split)
  rows = sorted((source[i]["id"].decode(), int(source[i]["part"]), source[i]["text"].decode()) for i in range(len(source)))
  files = {}
  for path, _, text in rows:
    files[path] = files.get(path, "") + text
  return files


def test_text_files_tail_split_single_file(tmp_path):
  path = tmp_path / "one.txt"
  text = synthetic_text(3, 2000)  # ~85 KB: several 16k-character records
  path.write_text(text, encoding="utf-8")
  config = tiny_config(tmp_path / "tfds", files=str(path), eval_fraction=0.1)
  fmdata.open_split(config.data, "train")  # builds
  train = _records_by_part(config, tmp_path / "tfds", "train")[str(path)]
  validation = _records_by_part(config, tmp_path / "tfds", "validation")[str(path)]
  assert train + validation == text  # a contiguous tail: nothing lost, nothing in both
  assert validation.startswith(text.splitlines(keepends=True)[len(train.splitlines())])
  assert 0.08 < len(validation) / len(text) < 0.12
  assert len(fmdata.open_split(config.data, "train")) >= 4  # cut into records for shuffling

  before = fmdata.describe_dataset(config.data)
  path.write_text(text + "one more line\n", encoding="utf-8")  # an edited file is rebuilt
  assert fmdata.describe_dataset(config.data) != before
  validation = fmdata.open_split(config.data, "validation")
  assert any("one more line" in validation[i]["text"] for i in range(len(validation)))


def test_text_files_with_eval_files(tmp_path, text_corpus):
  config = tiny_config(tmp_path / "tfds", files=str(text_corpus / "*.txt"), eval_files=str(text_corpus / "part2.txt"))
  fmdata.open_split(config.data, "train")
  train = _records_by_part(config, tmp_path / "tfds", "train")
  validation = _records_by_part(config, tmp_path / "tfds", "validation")
  # part2 matches both globs: validation only, never trained on.
  assert sorted(os.path.basename(p) for p in train) == ["part0.txt", "part1.txt"]
  assert list(validation) == [str(text_corpus / "part2.txt")]
  assert validation[str(text_corpus / "part2.txt")] == (text_corpus / "part2.txt").read_text(encoding="utf-8")
  assert train[str(text_corpus / "part0.txt")] == (text_corpus / "part0.txt").read_text(encoding="utf-8")


def test_glob_matching_nothing_names_the_field(tmp_path, text_corpus):
  with pytest.raises(FileNotFoundError, match=r"config\.data\.files=.*'/no/such/dir/\*\.txt' matches no files"):
    fmdata.open_split(tiny_config(tmp_path, files=f"{text_corpus}/*.txt,/no/such/dir/*.txt").data, "train")
  with pytest.raises(FileNotFoundError, match=r"config\.data\.eval_files"):
    fmdata.open_split(tiny_config(tmp_path, files=f"{text_corpus}/*.txt", eval_files=str(tmp_path / "nope")).data, "train")


def test_missing_catalog_dataset_explains_how_to_prepare(tmp_path):
  config = tiny_config(tmp_path, dataset="lm1b")
  with pytest.raises(FileNotFoundError) as error:
    fmdata.open_split(config.data, "train")
  message = str(error.value)
  assert "config.data.dataset='lm1b'" in message and str(tmp_path) in message
  assert f"tfds build lm1b --data_dir {tmp_path} --file_format=array_record" in message
  with pytest.raises(FileNotFoundError, match="(?s)no_such_dataset_xyz.*tfds build no_such_dataset_xyz"):
    fmdata.open_split(tiny_config(tmp_path, dataset="no_such_dataset_xyz").data, "train")


class FmjaxTestCatalog(tfds.core.GeneratorBasedBuilder):
  """A stand-in for a prepared catalog dataset, with its text under another feature name."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "content": tfds.features.Text(), "label": np.int64}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(30), "test": self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"content": f"example {i} of {n}", "label": i}


def test_prepared_catalog_dataset_by_name(tmp_path):
  FmjaxTestCatalog(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config = tiny_config(tmp_path, dataset="fmjax_test_catalog", text_key="content", eval_split="test")
  test = fmdata.open_split(config.data, "test")
  assert sorted(test[i]["text"] for i in range(len(test))) == sorted(f"example {i} of 5" for i in range(5))
  assert "fmjax_test_catalog/1.0.0" in fmdata.describe_dataset(config.data)
  with pytest.raises(ValueError, match=r"config\.data\.text_key='text'.*\['content', 'label'\]"):
    fmdata.open_split(tiny_config(tmp_path, dataset="fmjax_test_catalog").data, "train")
  with pytest.raises(ValueError, match=r"split 'validation'.*\['train', 'test'\]|split 'validation'.*\['test', 'train'\]"):
    fmdata.open_split(config.data, "validation")


# ---- pipelines -------------------------------------------------------------------------------


def test_process_shards_are_disjoint_and_cover_the_source(default_data_dir):
  source = fmdata.open_split(tiny_config(default_data_dir).data, "validation")
  indices = grain.MapDataset.range(len(source))
  shards = [list(fmdata.shard_for_process(indices, i, 2)) for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == list(range(len(source)))
  texts = [[r["text"] for r in fmdata.shard_for_process(source, i, 2)] for i in range(2)]
  assert sorted(texts[0] + texts[1]) == sorted(source[i]["text"] for i in range(len(source)))
  with pytest.raises(ValueError, match="process_index=2"):
    fmdata.shard_for_process(source, 2, 2)


def _check_row_features(batch, packed_length):
  seg, pos = batch["segment_ids"], batch["positions"]
  for k in ("tokens", "segment_ids", "positions"):
    assert batch[k].dtype == np.int32 and batch[k].shape[1] == packed_length
  assert (pos >= 0).all() and (pos <= packed_length - 1).all()
  for s, p in zip(seg, pos):
    assert s[0] == 1 and p[0] == 0  # each row starts a segment at position 0
    steps = np.diff(s)
    real = s[1:] > 0
    assert ((steps == 0) | (steps == 1))[real].all()  # 1, 1, ..., 2, 2, ... within a row
    new_segment = (steps == 1) & real
    assert (p[1:][new_segment] == 0).all()  # positions restart at each new document
    continuing = (steps == 0) & real
    assert (p[1:][continuing] == p[:-1][continuing] + 1).all()


def test_packing_loses_and_reorders_nothing(default_data_dir):
  config = tiny_config(default_data_dir, shuffle=False)
  config.data.eval_split = "validation"
  tok = fmdata.ByteTokenizer()
  length = 33
  source = fmdata.open_split(config.data, "train")
  expected = np.concatenate([np.concatenate([[tok.bos_id], tok.encode(source[i]["text"]), [tok.eos_id]]) for i in range(3)])
  iterator = iter(fmdata.make_train_dataset(config, tok, process_index=0, process_count=1, packed_length=length))
  rows = []
  while sum(len(r) for r in rows) < len(expected):
    batch = next(iterator)
    assert batch["tokens"].shape == (config.train.batch_size, length)
    _check_row_features(batch, length)
    rows.extend(batch["tokens"])
  assert np.array_equal(np.concatenate(rows)[: len(expected)], expected)
  # A document start in the packed stream is a bos token at segment start (or a row start).
  batch = next(iterator)
  seg = batch["segment_ids"]
  starts = np.zeros_like(seg, dtype=bool)
  starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
  assert (batch["tokens"][starts] == tok.bos_id).all()


def test_packing_without_segment_ids(default_data_dir):
  config = tiny_config(default_data_dir, segment_ids=False, shuffle=False)
  iterator = iter(fmdata.make_train_dataset(config, fmdata.ByteTokenizer(), process_index=0, process_count=1, packed_length=64))
  batches = [next(iterator) for _ in range(20)]
  iterator.close()
  for batch in batches:
    assert (batch["segment_ids"] == 1).all()
    assert (batch["positions"] == np.arange(64)).all()
  bos = sum(int((b["tokens"] == fmdata.ByteTokenizer().bos_id).sum()) for b in batches)
  assert bos > 0  # documents are still packed, with their separators


def test_restart_positions_pure():
  seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2, 2, 2]])
  assert packing.restart_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 0, 0], [0, 0, 1, 2, 3, 4, 5, 6]]


def test_train_iterator_resumes_exactly_with_prefetch(default_data_dir):
  config = tiny_config(default_data_dir, prefetch=2, shuffle=True)
  config.seed = 3
  tok = fmdata.ByteTokenizer()

  def transform(row):  # a plain callable transform, as objectives pass them
    return {**row, "doubled": row["tokens"] * 2}

  def make():
    return fmdata.make_train_dataset(config, tok, process_index=1, process_count=2, packed_length=65, transforms=[transform])

  iterator = iter(make())
  for _ in range(5):
    next(iterator)
  # grain.checkpoint.CheckpointSave stores get_state() as JSON: round-trip it the same way.
  state = json.loads(json.dumps(iterator.get_state()))
  expected = [next(iterator) for _ in range(4)]
  resumed = iter(make())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert sorted(got) == ["doubled", "positions", "segment_ids", "tokens"]
    assert got["tokens"].shape == (config.train.batch_size // 2, 65)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  fresh = iter(make())
  assert not np.array_equal(next(fresh)["tokens"], expected[0]["tokens"])  # it did not just restart
  for it in (iterator, resumed, fresh):
    it.close()


def test_eval_batches_fixed_count_and_zero_padding(tmp_path, text_corpus):
  config = tiny_config(tmp_path / "tfds", files=str(text_corpus / "*.txt"), eval_fraction=0.02, eval_batches=6)
  config.train.batch_size = 8
  tok = fmdata.ByteTokenizer()
  validation = fmdata.open_split(config.data, "validation")
  total_tokens = sum(len(tok.encode(validation[i]["text"])) + 2 for i in range(len(validation)))
  length = 257
  per_host = [fmdata.make_eval_batches(config, tok, process_index=i, process_count=2, packed_length=length) for i in range(2)]
  for batches in per_host:
    assert len(batches) == 6
    for batch in batches:
      assert {k: v.shape for k, v in batch.items()} == {k: (4, length) for k in ("tokens", "segment_ids", "positions")}
    assert (batches[-1]["segment_ids"] == 0).all()  # the shard ran out: zero batches pad the list
  # Every validation token is there exactly once (the data fits in 6 batches per host).
  real = sum(int((b["segment_ids"] > 0).sum()) for batches in per_host for b in batches)
  assert real == total_tokens
  again = fmdata.make_eval_batches(config, tok, process_index=0, process_count=2, packed_length=length)
  assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(again, per_host[0]))  # fixed

  # More hosts than documents: every host still gets its own rows of each global batch, with the
  # transforms' features.
  config.data.eval_batches = 2
  hosts = len(validation) + 1
  config.train.batch_size = 2 * hosts
  last = fmdata.make_eval_batches(config, tok, process_index=hosts - 1, process_count=hosts, packed_length=16,
                                  transforms=[lambda row: {**row, "weights": np.ones(16, np.float32)}])
  assert len(last) == 2 and all(b["tokens"].shape == b["weights"].shape == (2, 16) for b in last)


def test_empty_validation_split_is_an_error(tmp_path, text_corpus):
  config = tiny_config(tmp_path / "tfds", files=str(text_corpus / "*.txt"), eval_fraction=0.0)
  with pytest.raises(ValueError, match=r"validation split 'validation'.*empty.*eval_files"):
    fmdata.make_eval_batches(config, fmdata.ByteTokenizer(), process_index=0, process_count=1, packed_length=16)


def test_batch_size_must_divide_by_process_count(default_data_dir):
  config = tiny_config(default_data_dir)
  config.train.batch_size = 5
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=5"):
    fmdata.make_train_dataset(config, fmdata.ByteTokenizer(), process_index=0, process_count=2, packed_length=16)
