"""Tests of the speech data: eSpeak synthesis, the synthesised corpus, the user's audio files
and transcripts, catalog datasets read without TensorFlow, and the grain pipelines.

Pure numpy: nothing here initialises a jax backend. All data is built in temporary folders;
the small synthesised corpus once per module.
"""

import hashlib
import json

import ml_collections
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from fmjax import config_defaults
from fmjax.config_checks import ConfigError
from fmjax.data import ByteTokenizer
from fmjax.data import audio_files
from fmjax.data import building
from fmjax.data import espeak
from fmjax.data import speech
from fmjax.data import speech_corpus

pytestmark = pytest.mark.smoke

TOKENIZER = ByteTokenizer()
RATE = speech.SAMPLE_RATE


def make_config(data_dir, batch_size=4, seed=0, **data):
  data.setdefault("prefetch", 0)
  data.setdefault("max_seconds", 4.0)
  return ml_collections.ConfigDict(dict(
      seed=seed, data=config_defaults.speech_data(data_dir=str(data_dir), **data),
      train=config_defaults.train(batch_size=batch_size)))


def corpus_records(builder) -> dict[str, list[dict]]:
  return {split: [builder.as_data_source(split=split)[i] for i in range(builder.info.splits[split].num_examples)]
          for split in ("train", "validation")}


def audio_hash(records: dict[str, list[dict]]) -> str:
  digest = hashlib.sha256()
  for split in ("train", "validation"):
    for record in sorted(records[split], key=lambda r: r["id"]):
      digest.update(record["audio"].tobytes())
      digest.update(record["text"])
  return digest.hexdigest()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("speech_data")
  building.prepared_builder(lambda: speech_corpus.builder(str(data_dir), "small"))
  return data_dir


@pytest.fixture(scope="module")
def small_records(synth_dir):
  return corpus_records(speech_corpus.builder(str(synth_dir), "small"))


# ---- synthesis and the corpus ----------------------------------------------------------------


def test_synthesis_reproduces_across_calls_and_worker_counts():
  requests = [espeak.Request("seven three nine", "en-us+m3", 150, 40), espeak.Request("move the box", "en+f1", 120, 60)]
  first = espeak.synthesize(requests)
  second = espeak.synthesize(requests, workers=1)
  assert [w.dtype for w in first] == [np.int16, np.int16]
  assert all(np.array_equal(a, b) for a, b in zip(first, second))
  raw = espeak._run_worker([espeak.Request(**r.__dict__) for r in requests])  # pylint: disable=protected-access
  for wave, wave_22k in zip(first, raw):  # 16 kHz: the same duration in 320 / 441 the samples
    assert abs(len(wave) - len(wave_22k) * 320 / 441) <= 1
  assert 0.5 < len(first[0]) / RATE < 2.0 and np.abs(first[0]).max() > 1000


@pytest.mark.parametrize("voice, message", [("en-us+f2", "breath noise"), ("en-us+nope", "not bundled"),
                                            ("xx-yy", "not a bundled voice")])
def test_synthesis_rejects_unreproducible_or_unknown_voices(voice, message):
  with pytest.raises(ValueError, match=message):
    espeak.synthesize([espeak.Request("one", voice)])


def test_corpus_sentences_and_voices(small_records):
  train = {r["text"].decode() for r in small_records["train"]}
  validation = {r["text"].decode() for r in small_records["validation"]}
  assert len(train) == 160 and len(validation) == 32  # distinct sentences
  assert not train & validation
  train_voices = {r["voice"].decode() for r in small_records["train"]}
  validation_voices = {r["voice"].decode() for r in small_records["validation"]}
  assert speech_corpus.HELD_OUT_VOICE in validation_voices and speech_corpus.HELD_OUT_VOICE not in train_voices
  assert train_voices <= set(speech_corpus.TRAIN_VOICES)
  words = {w for text in train | validation for w in text.split()}
  assert words <= set(speech_corpus.VOCABULARY)
  seconds = [len(r["audio"]) / RATE for split in small_records.values() for r in split]
  assert min(seconds) >= speech_corpus.MIN_SECONDS and max(seconds) <= speech_corpus.MAX_SECONDS
  assert all(r["audio"].dtype == np.int16 for r in small_records["train"])


def test_corpus_builds_identically_twice(tmp_path, small_records):
  again = building.prepared_builder(lambda: speech_corpus.builder(str(tmp_path), "small"))
  assert audio_hash(corpus_records(again)) == audio_hash(small_records)


@pytest.mark.slow
def test_full_corpus_builds_identically_twice(tmp_path):
  hashes = []
  for name in ("a", "b"):
    builder = building.prepared_builder(lambda name=name: speech_corpus.builder(str(tmp_path / name)))
    records = corpus_records(builder)
    assert len(records["train"]) == 4000 and len(records["validation"]) == 240
    hashes.append(audio_hash(records))
  assert hashes[0] == hashes[1]


# ---- the user's audio files ------------------------------------------------------------------


def sine(seconds, rate, hz=440.0, amplitude=0.5):
  t = np.arange(int(seconds * rate)) / rate
  return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(wave, rate):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.argmax(spectrum) * rate / len(wave)


def test_read_audio_resamples_stereo_to_16k_mono(tmp_path):
  left, right = sine(1.0, 44_100, 440.0), sine(1.0, 44_100, 440.0, amplitude=0.3)
  path = tmp_path / "tone.wav"
  soundfile.write(path, np.stack([left, right], axis=1), 44_100, subtype="PCM_16")
  wave = audio_files.read_audio(str(path))
  assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == RATE
  assert abs(peak_hz(wave, RATE) - 440.0) < 2.0
  assert abs(np.abs(wave[1000:-1000]).max() - 0.4) < 0.01  # the channels' mean


def test_read_audio_flac_and_bad_files(tmp_path):
  path = tmp_path / "tone.flac"
  soundfile.write(path, sine(0.5, 8_000, 1000.0), 8_000)
  wave = audio_files.read_audio(str(path))
  assert len(wave) == RATE // 2 and abs(peak_hz(wave, RATE) - 1000.0) < 4.0
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF not really a wav file")
  with pytest.raises(ValueError, match="broken.wav.*cannot decode"):
    audio_files.read_audio(str(broken))
  with pytest.raises(ValueError, match="missing.wav.*does not exist"):
    audio_files.read_audio(str(tmp_path / "missing.wav"))


def test_read_transcripts_tsv_and_jsonl(tmp_path):
  tsv = tmp_path / "t.tsv"
  tsv.write_text("audio\ttext\na/one.wav\t hello there \n\nb.flac\ttab\tinside\n")
  lines = audio_files.read_transcripts(str(tsv), str(tmp_path))
  assert [(l.audio, l.text) for l in lines] == [("a/one.wav", "hello there"), ("b.flac", "tab\tinside")]
  assert lines[1].where == f"{tsv}:4"
  jsonl = tmp_path / "t.jsonl"
  jsonl.write_text(json.dumps({"audio": "x.wav", "text": "yes"}) + "\n" + "{broken\n")
  with pytest.raises(ValueError, match=r"t\.jsonl:2: not valid JSON"):
    audio_files.read_transcripts(str(jsonl), str(tmp_path))
  jsonl.write_text(json.dumps({"audio": "x.wav", "caption": "yes"}) + "\n")
  with pytest.raises(ValueError, match=r"t\.jsonl:1: expected an object"):
    audio_files.read_transcripts(str(jsonl), str(tmp_path))
  tsv.write_text("no tab here\n")
  with pytest.raises(ValueError, match=r"t\.tsv:1: expected"):
    audio_files.read_transcripts(str(tsv), str(tmp_path))
  tsv.write_text("../outside.wav\thi\n")
  with pytest.raises(ValueError, match=r"t\.tsv:1: .*inside it"):
    audio_files.read_transcripts(str(tsv), str(tmp_path))


def write_folder(root, count=10, seconds=1.0, extra=()):
  """`count` tones (word{i}.wav) with transcripts, plus `extra` (name, transcript, samples or
  bytes) lines. Returns (audio_dir, transcripts_file)."""
  audio_dir = root / "audio"
  audio_dir.mkdir()
  lines = []
  for i in range(count):
    soundfile.write(audio_dir / f"word{i}.wav", sine(seconds, 22_050, 200.0 + 50 * i), 22_050)
    lines.append(f"word{i}.wav\tword number {i}")
  for name, text, content in extra:
    if isinstance(content, bytes):
      (audio_dir / name).write_bytes(content)
    else:
      soundfile.write(audio_dir / name, content, RATE)
    lines.append(f"{name}\t{text}")
  transcripts = root / "transcripts.tsv"
  transcripts.write_text("\n".join(lines) + "\n")
  return audio_dir, transcripts


BAD_LINES = (("broken.wav", "broken", b"not audio at all"), ("quiet.wav", "", sine(1.0, RATE)),
             ("long.wav", "far too long", sine(5.0, RATE)))


@pytest.mark.parametrize("bad, message", [(0, "broken.wav' cannot decode"), (1, "quiet.wav' has an empty transcript"),
                                          (2, "long.wav' is 5.00 s long, over the 4 s window")])
def test_bad_user_audio_is_named_before_training(tmp_path, bad, message):
  audio_dir, transcripts = write_folder(tmp_path, extra=[BAD_LINES[bad]])
  config = make_config(tmp_path / "data", audio_dir=str(audio_dir), transcripts_file=str(transcripts))
  with pytest.raises(ValueError, match=rf"transcripts.tsv:11: audio file .*{message}"):
    speech.validate(config)


def test_bad_user_audio_skipped_and_counted(tmp_path):
  audio_dir, transcripts = write_folder(tmp_path, extra=BAD_LINES)
  config = make_config(tmp_path / "data", audio_dir=str(audio_dir), transcripts_file=str(transcripts), bad_audio="skip",
                       eval_fraction=0.2)
  assert speech.validate(config) == 3
  user = speech.check_user_audio(config.data)
  assert [where.rsplit(":", 1)[1] for where, _ in user.skipped] == ["11", "12", "13"]
  assert len(user.train) == 8 and len(user.validation) == 2
  texts = {TOKENIZER.decode(row) for row in next(iter(speech.make_train_dataset(
      config, TOKENIZER, process_index=0, process_count=1)))["text_tokens"]}
  assert texts <= {f"word number {i}" for i in range(10)}
  assert sorted(speech.eval_transcripts(config)) == sorted(e.text for e in user.validation)
  # Cropping makes the long file usable: only the other two are dropped.
  assert speech.validate(make_config(tmp_path / "data", audio_dir=str(audio_dir), transcripts_file=str(transcripts),
                                     bad_audio="skip", crop=True)) == 2


def test_user_folder_pipeline_reads_and_resamples(tmp_path):
  audio_dir, transcripts = write_folder(tmp_path, count=6, seconds=0.5)
  config = make_config(tmp_path / "data", audio_dir=str(audio_dir), transcripts_file=str(transcripts), max_seconds=1.0,
                       eval_fraction=0.34)
  batch = next(iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1)))
  assert batch["audio"].shape == (4, RATE) and (batch["audio_lengths"] == RATE // 2).all()
  assert not batch["audio"][:, RATE // 2:].any()
  refs = speech.eval_transcripts(config)
  assert len(refs) == 2
  (evals,) = speech.make_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  assert list(evals["eval_index"]) == [0, 1, -1, -1] and list(evals["audio_lengths"][2:]) == [0, 0]
  assert [TOKENIZER.decode(evals["text_tokens"][i]) for i in range(2)] == refs


# ---- the pipelines on the synthesised corpus -------------------------------------------------


def test_train_batches_shapes_padding_and_tokens(synth_dir):
  config = make_config(synth_dir, dataset="speech_synth/small", max_seconds=3.0, text_len=48)
  iterator = iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1))
  batch = next(iterator)
  assert batch["audio"].shape == (4, 3 * RATE) and batch["audio"].dtype == np.float32
  assert batch["audio_lengths"].dtype == np.int32 and batch["text_tokens"].shape == (4, 48)
  for row, length in zip(batch["audio"], batch["audio_lengths"]):
    assert RATE <= length <= 3 * RATE and np.abs(row[:length]).max() > 0.05 and not row[length:].any()
    assert np.abs(row).max() <= 1.0
  assert (batch["text_tokens"][:, 0] == TOKENIZER.bos_id).all()
  words = {w for row in batch["text_tokens"] for w in TOKENIZER.decode(row).split()}
  assert words <= set(speech_corpus.VOCABULARY)
  no_text = next(iter(speech.make_train_dataset(config, None, process_index=0, process_count=1)))
  assert set(no_text) == {"audio", "audio_lengths"}


def test_train_iterator_resumes_exactly_with_noise_and_crop(synth_dir):
  config = make_config(synth_dir, dataset="speech_synth/small", max_seconds=1.0, crop=True, noise_snr_db=5.0,
                       prefetch=2)
  iterator = iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1))
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  resumed = iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert all(np.array_equal(want[k], got[k]) for k in want)
  assert (expected[0]["audio_lengths"] == RATE).all()  # every utterance is over 1 s: cropped


def test_too_long_synth_audio_is_bad_input_without_crop(synth_dir):
  config = make_config(synth_dir, dataset="speech_synth/small", max_seconds=1.2, prefetch=0)
  with pytest.raises(ValueError, match=r"fmjax_speech/small.*#\d+: the audio is .* over the 1.2 s window"):
    next(iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1)))
  config.data.bad_audio = "skip"
  before = speech.skipped_in_pipeline()
  batch = next(iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1)))
  assert (batch["audio_lengths"] <= 1.2 * RATE).all() and speech.skipped_in_pipeline() > before


def test_eval_batches_fixed_padded_and_aligned(synth_dir):
  config = make_config(synth_dir, dataset="speech_synth/small", batch_size=8, eval_examples=20)
  first = speech.make_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  second = speech.make_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  assert len(first) == 3
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(first, second) for k in a)
  assert list(first[-1]["eval_index"]) == [16, 17, 18, 19, -1, -1, -1, -1]
  assert not first[-1]["audio_lengths"][4:].any() and not first[-1]["audio"][4:].any()
  refs = speech.eval_transcripts(config)
  assert len(refs) == 20
  for batch in first:
    for index, tokens in zip(batch["eval_index"], batch["text_tokens"]):
      if index >= 0:
        assert TOKENIZER.decode(tokens) == refs[index]
  # Two hosts: their batches, concatenated in process order, are the one-host batches.
  config.train.batch_size = 8
  hosts = [speech.make_eval_batches(config, TOKENIZER, process_index=p, process_count=2) for p in (0, 1)]
  for whole, half0, half1 in zip(first, *hosts):
    assert np.array_equal(whole["eval_index"], np.concatenate([half0["eval_index"], half1["eval_index"]]))


def test_training_texts_and_description(synth_dir):
  config = make_config(synth_dir, dataset="speech_synth/small")
  texts = list(speech.training_texts(config.data, max_chars=300))
  assert 300 <= sum(map(len, texts)) < 400 and texts == list(speech.training_texts(config.data, max_chars=300))
  assert speech.describe_dataset(config.data) == "fmjax_speech/small:1.1.0 split=train"


# ---- catalog datasets ------------------------------------------------------------------------


class FakeCommands(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stands in for speech_commands: 8 kHz int64 PCM (as tfds' Audio stores it) and labels."""

  VERSION = tfds.core.Version("0.0.3")
  name = "fake_commands"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        "label": tfds.features.ClassLabel(names=["yes", "no", "_silence_"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(6)), "validation": self._generate_examples(range(6, 9))}

  def _generate_examples(self, indices):
    for i in indices:
      yield i, {"audio": (sine(0.5, 8_000, 500.0) * 20_000).astype(np.int64), "label": i % 3}


def prepare_fake_commands(data_dir):
  """Builds FakeCommands, then marks its audio as tfds' Audio feature, as a real prepared
  speech dataset's features.json has it (tfds' Audio class needs TensorFlow to load)."""
  builder = FakeCommands(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  features_file = data_dir / "fake_commands" / "0.0.3" / "features.json"
  features = json.loads(features_file.read_text())
  features["featuresDict"]["features"]["audio"] = {
      "pythonClassName": "tensorflow_datasets.core.features.audio_feature.Audio",
      "audio": {"shape": {"dimensions": ["-1"]}, "dtype": "int64", "sampleRate": "8000", "encoding": "none"}}
  features_file.write_text(json.dumps(features))


def test_catalog_audio_with_labels_read_without_tensorflow(tmp_path):
  prepare_fake_commands(tmp_path)
  config = make_config(tmp_path, dataset="fake_commands", max_seconds=1.0, eval_examples=3)
  assert speech.validate(config) == 0
  assert sorted(speech.eval_transcripts(config)) == ["no", "silence", "yes"]
  batch = next(iter(speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1)))
  assert (batch["audio_lengths"] == RATE // 2).all()
  assert abs(peak_hz(batch["audio"][0, :RATE // 2], RATE) - 500.0) < 4.0
  assert abs(np.abs(batch["audio"][0]).max() - 0.5 * 20_000 / 32768) < 0.01  # int PCM scaled by 2**15
  assert sorted(speech.training_texts(config.data, 10_000)) == ["no", "silence", "yes"]
  assert "label_key=label" in speech.describe_dataset(config.data)
  assert len(speech.open_utterances(config.data, "train+validation")) == 9  # tfds split expressions
  config.data.audio_key = "speech"
  with pytest.raises(ValueError, match="audio_key='speech' is not a feature.*'audio', 'label'"):
    speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1)


def test_unknown_or_unprepared_datasets_give_clear_errors(tmp_path):
  config = make_config(tmp_path, dataset="librispeech", audio_key="speech", eval_split="dev_clean")
  with pytest.raises(FileNotFoundError, match="(?s)librispeech.*not prepared.*tfds build librispeech"):
    speech.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1)
  config = make_config(tmp_path, dataset="speech_synth/huge")
  with pytest.raises(ConfigError, match="unknown size 'huge'"):
    speech.validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("max_seconds", 0.0, "config.data.max_seconds=0.0: must be > 0"),
    ("max_seconds", 2.0, "config.data.max_seconds=2.0: 'speech_synth' utterances are up to 3.5 s long"),
    ("bad_audio", "ignore", "config.data.bad_audio='ignore': choose one of"),
    ("eval_fraction", 1.0, "config.data.eval_fraction=1.0: must be in"),
    ("text_len", 2, "config.data.text_len=2: must be an integer >= 3"),
    ("dataset", "", "config.data.dataset='': must be 'speech_synth'"),
])
def test_config_field_errors(tmp_path, field, value, message):
  config = make_config(tmp_path)
  config.data[field] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    speech.validate(config)


def test_noise_has_the_asked_snr():
  rng = np.random.default_rng(0)
  clean = sine(2.0, RATE)
  for _ in range(4):
    noisy = speech.add_noise(clean, rng, 10.0)
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert abs(snr - 10.0) < 0.3
  pink = speech.pink_noise(RATE, rng)
  spectrum = np.abs(np.fft.rfft(pink)) ** 2
  assert spectrum[50:100].mean() > 8 * spectrum[2000:4000].mean()  # power falls with frequency
