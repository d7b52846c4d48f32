"""(audio, transcript) data for the speech paradigm: sources, grain pipelines and eval sets.

Three kinds of dataset, picked by config.data:
  audio_dir (+ transcripts_file)  the user's wav / flac files (audio_files.py), read where they
                                  are; checked in full before training (`validate`); held out:
                                  the eval_fraction of files whose paths hash lowest
  dataset == 'speech_synth'       synthesised English commands and digit strings (offline, built
                                  on first use; speech_corpus.py); 'speech_synth/small' is a
                                  few-second build for tests
  any other dataset               a tfds catalog dataset prepared as ArrayRecord: librispeech
                                  (audio_key 'speech', text_key 'text'), speech_commands
                                  (audio_key 'audio', label_key 'label': the transcript is the
                                  label's name)
Each split is read as a grain MapDataset of utterances {'audio': float32 [n] at 16 kHz in
[-1, 1], 'text': str, 'source': str (names the utterance in errors)}.

Batches carry the padded waveform; log-mel features are computed on the device:
  'audio'          float32 [b, N]   N = round(config.data.max_seconds * 16000), zero padded
  'audio_lengths'  int32 [b]        valid samples
  'text_tokens'    int32 [b, L]     [BOS] ids [EOS] 0 ... (only with a tokenizer)
  'eval_index'     int32 [b]        eval batches only: position in the eval set, -1 = padding
Audio longer than the window is cropped (config.data.crop: a random window in training, the
first one in evaluation; for masked pretraining) or is bad input (config.data.bad_audio:
'error' names it and stops, 'skip' drops it and counts it in the log).

Noise is a training augmentation here, not part of any stored corpus: with
config.data.noise_snr_db != 0 every training utterance gets white or pink noise at an SNR drawn
uniformly from [noise_snr_db, noise_snr_db + NOISE_SNR_SPAN_DB] dB, fresh every epoch.

Training: this host's utterances -> seeded shuffle per epoch -> repeat -> decode -> per element,
with a generator seeded by (seed, index): crop, noise, pad, tokenize -> batch -> prefetch. Every
stage is a grain dataset with checkpointable state, so the iterator resumes exactly.
"""

import concurrent.futures
import dataclasses
import functools
import io
import os
import threading
from collections.abc import Callable, Iterator

from absl import logging
from etils import epath
import grain
import numpy as np
import tensorflow_datasets as tfds

from fmjax.data import audio_files
from fmjax import field_checks
from fmjax.data import batching
from fmjax.data import building
from fmjax.data import catalog
from fmjax.data import hashing
from fmjax.data import pair_files
from fmjax.data import image_folder
from fmjax.data import image_text
from fmjax.data import speech_corpus
from fmjax.data import tokenizers
from fmjax.data.pipeline import local_batch_size
from fmjax.data.pipeline import shard_for_process

SAMPLE_RATE = 16_000
SYNTH = "speech_synth"
BAD_AUDIO_POLICIES = ("error", "skip")
NOISE_SNR_SPAN_DB = 20.0
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
_TOKENIZERS = ("byte", "sentencepiece")
_FOLDER_SPLITS = ("train", "validation")
_CHECK_THREADS = 8  # libsndfile decodes outside the GIL


_THREADS = 8  # decoding (libsndfile, tfds parsing) and resampling release the GIL: threads scale


def _read_options(batch_size: int) -> grain.ReadOptions:
  return batching.read_options(batch_size, _THREADS)


def window_samples(data_config) -> int:
  """N: the samples of one padded utterance."""
  return int(round(float(data_config.max_seconds) * SAMPLE_RATE))


# ---- the user's folder: listing and the preflight pass ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """One usable utterance of the user's folder."""
  where: str    # "file:line" (or the path, without a transcripts file), for messages
  path: str     # absolute
  text: str
  samples: int  # at 16 kHz


@dataclasses.dataclass(frozen=True)
class UserAudio:
  """The user's folder after the preflight pass."""
  train: tuple[Entry, ...]
  validation: tuple[Entry, ...]
  skipped: tuple[tuple[str, str], ...]      # (where, problem) of each line dropped


_absolute = pair_files.absolute


def _folder_files(audio_dir: str) -> list[str]:
  return pair_files.files_under(audio_dir, AUDIO_SUFFIXES)


def _listed(data_config) -> tuple[str, list[audio_files.Transcript], tuple]:
  """(audio_dir, the lines to check, an identity of the inputs for fingerprints)."""
  audio_dir = _absolute(data_config.audio_dir)
  if not os.path.isdir(audio_dir):
    raise FileNotFoundError(f"config.data.audio_dir={data_config.audio_dir!r}: no such directory ({audio_dir})")
  if not data_config.transcripts_file:  # audio alone: for masked pretraining
    lines = [audio_files.Transcript(where=os.path.join(audio_dir, f), audio=f, text="") for f in _folder_files(audio_dir)]
    if not lines:
      raise ValueError(f"config.data.audio_dir={data_config.audio_dir!r}: no audio files "
                       f"({', '.join(AUDIO_SUFFIXES)}) under it")
    stats = [os.stat(os.path.join(audio_dir, line.audio)) for line in lines]
    return audio_dir, lines, (audio_dir, tuple((l.audio, s.st_size, s.st_mtime_ns) for l, s in zip(lines, stats)))
  transcripts = _absolute(data_config.transcripts_file)
  if not os.path.isfile(transcripts):
    raise FileNotFoundError(f"config.data.transcripts_file={data_config.transcripts_file!r}: no such file ({transcripts})")
  stat = os.stat(transcripts)
  identity = (transcripts, stat.st_size, stat.st_mtime_ns, audio_dir)
  return audio_dir, audio_files.read_transcripts(transcripts, audio_dir), identity


def _probe(path: str) -> tuple[int, str | None]:
  """(samples at 16 kHz, None) when the whole file decodes, else (0, the problem)."""
  if not os.path.isfile(path):
    return 0, "does not exist"
  try:
    import soundfile  # pylint: disable=g-import-not-at-top
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)  # all of it: truncation shows
  except Exception as e:  # pylint: disable=broad-except
    return 0, f"cannot decode ({type(e).__name__}: {e})"
  if len(samples) == 0:
    return 0, "holds no samples"
  return audio_files.resampled_length(len(samples), int(rate), SAMPLE_RATE), None


def _policy_text(policy: str) -> str:
  return f"(config.data.bad_audio={policy!r}; 'skip' drops such lines and counts them)"


@functools.lru_cache(maxsize=8)
def _check_folder(identity: tuple, audio_dir: str, lines: tuple[audio_files.Transcript, ...], text_required: bool,
                  window: int, crop: bool, policy: str, fraction: float) -> UserAudio:
  del identity  # part of the cache key only: a changed file is checked again
  with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
    probes = list(pool.map(lambda line: _probe(os.path.join(audio_dir, line.audio)), lines))
  usable, skipped = [], []
  for line, (samples, problem) in zip(lines, probes):
    path = os.path.join(audio_dir, line.audio)
    if problem is None and text_required and not line.text:
      problem = "has an empty transcript"
    if problem is None and not crop and samples > window:
      problem = (f"is {samples / SAMPLE_RATE:.2f} s long, over the {window / SAMPLE_RATE:g} s window "
                 "(config.data.max_seconds; config.data.crop=True crops instead)")
    if problem is None:
      usable.append(Entry(where=line.where, path=path, text=line.text, samples=samples))
    elif policy == "error":
      raise ValueError(f"{line.where}: audio file {path!r} {problem} {_policy_text(policy)}")
    else:
      skipped.append((line.where, problem))
  if skipped:
    logging.warning("%s: skipped %d of %d utterances (config.data.bad_audio='skip'); first: %s %s",
                    audio_dir, len(skipped), len(lines), *skipped[0])
  paths = sorted({e.path for e in usable})
  if len(paths) < 2:
    raise ValueError(f"config.data.audio_dir={audio_dir!r}: {len(paths)} usable audio file(s) of {len(lines)} listed; "
                     "at least 2 are needed (training and held-out ones, config.data.eval_fraction)")
  held = image_folder.held_out(paths, fraction)
  return UserAudio(train=tuple(e for e in usable if e.path not in held),
                   validation=tuple(e for e in usable if e.path in held), skipped=tuple(skipped))


def check_user_audio(data_config, text_required: bool = True) -> UserAudio:
  """The preflight pass over the user's folder: every listed file exists and decodes (all of
  it), transcripts are non-empty (when text is required) and, with crop off, fit the window.
  A bad line raises under bad_audio='error'; under 'skip' it is dropped and counted in
  `skipped` (and the log). Cached per process for unchanged inputs."""
  policy = data_config.bad_audio
  if policy not in BAD_AUDIO_POLICIES:
    raise ValueError(f"config.data.bad_audio={policy!r}: choose one of {BAD_AUDIO_POLICIES}")
  fraction = float(data_config.eval_fraction)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"config.data.eval_fraction={fraction}: must be in (0, 1) (the share of files held out)")
  if text_required and not data_config.transcripts_file:
    raise ValueError(f"config.data.transcripts_file is empty: transcription needs a transcript for each file "
                     f"of config.data.audio_dir={data_config.audio_dir!r}")
  audio_dir, lines, identity = _listed(data_config)
  return _check_folder(identity, audio_dir, tuple(lines), bool(text_required), window_samples(data_config),
                       bool(data_config.crop), policy, fraction)


# ---- catalog datasets, read without TensorFlow -----------------------------------------------

_AUDIO_CLASS = "tensorflow_datasets.core.features.audio_feature.Audio"
_TENSOR_CLASS = "tensorflow_datasets.core.features.tensor_feature.Tensor"


def _version_dirs(path: epath.Path) -> list[epath.Path]:
  if not path.is_dir():
    return []
  found = []
  for child in path.iterdir():
    try:
      tfds.core.Version(child.name)
    except ValueError:
      continue
    if (child / "dataset_info.json").exists():
      found.append(child)
  return sorted(found, key=lambda p: tfds.core.Version(p.name))


def _not_prepared(name: str, data_dir: str, reason: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"config.data.dataset={name!r}: {reason} in data dir {data_dir!r} (config.data.data_dir, else "
      f"${building.DATA_DIR_ENV}, else ~/tensorflow_datasets). Prepare it once with:\n  "
      f"{catalog.prepare_command(name, data_dir)}\n(this step needs TensorFlow and network access; training then "
      f"reads it without either), or set config.data.data_dir to where it is prepared. "
      f"config.data.dataset={SYNTH!r} uses the offline synthesised speech instead.")


def _prepared_dir(name: str, data_dir: str) -> epath.Path:
  """The folder of a prepared 'name[/config][:version]' under data_dir; with no config
  given, the dataset's only prepared config."""
  base, _, version = name.partition(":")
  dataset, _, config = base.partition("/")
  root = epath.Path(data_dir) / dataset
  if config:
    candidates = _version_dirs(root / config)
  else:
    candidates = _version_dirs(root)
    if not candidates and root.is_dir():
      configs = [child for child in root.iterdir() if _version_dirs(child)]
      if len(configs) > 1:
        raise ValueError(f"config.data.dataset={name!r}: several configs are prepared under {root} "
                         f"({sorted(c.name for c in configs)}); name one as '{dataset}/<config>'")
      candidates = _version_dirs(configs[0]) if configs else []
  if version:
    candidates = [c for c in candidates if c.name == version]
  if not candidates:
    raise _not_prepared(name, data_dir, f"not prepared (no dataset_info.json under {root})")
  return candidates[-1]


def _audio_as_tensors(feature_proto, rates: dict, encoded: set, path: str = "") -> None:
  """Rewrites tfds Audio features as the tensors they are stored as (tfds' Audio class needs
  TensorFlow even to be constructed), noting each one's sample rate (and which hold encoded
  files), in place."""
  if feature_proto.HasField("features_dict"):
    for key, child in feature_proto.features_dict.features.items():
      _audio_as_tensors(child, rates, encoded, f"{path}/{key}" if path else key)
    return
  if feature_proto.python_class_name != _AUDIO_CLASS:
    return
  from tensorflow_datasets.core.proto import feature_pb2  # pylint: disable=g-import-not-at-top

  audio = feature_proto.audio
  rates[path] = int(audio.sample_rate) or SAMPLE_RATE  # 0: unknown; speech corpora are 16 kHz
  if audio.lazy_decode:  # the original file's bytes
    encoded.add(path)
    tensor = feature_pb2.TensorFeature(shape=feature_pb2.Shape(dimensions=[]), dtype="string", encoding="none")
  else:
    tensor = feature_pb2.TensorFeature(shape=audio.shape, dtype=audio.dtype, encoding=audio.encoding or "none")
  feature_proto.Clear()
  feature_proto.python_class_name = _TENSOR_CLASS
  feature_proto.tensor.CopyFrom(tensor)


@dataclasses.dataclass(frozen=True)
class _Catalog:
  builder: tfds.core.DatasetBuilder
  rates: dict          # audio feature -> sample rate
  encoded: frozenset   # audio features that hold encoded files


@functools.lru_cache(maxsize=8)
def _open_catalog(name: str, data_dir: str) -> _Catalog:
  from tensorflow_datasets.core import dataset_info  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=g-import-not-at-top

  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top

  builder_dir = _prepared_dir(name, data_dir)
  proto = dataset_info.read_proto_from_builder_dir(builder_dir)
  if not proto.HasField("features"):  # kept in features.json: read as a proto, not as tfds objects
    json_format.Parse((builder_dir / "features.json").read_text(), proto.features, ignore_unknown_fields=True)
  rates, encoded = {}, set()
  _audio_as_tensors(proto.features, rates, encoded)
  builder = read_only_builder.ReadOnlyBuilder(builder_dir, info_proto=proto)
  random_access = {tfds.core.FileFormat.ARRAY_RECORD, tfds.core.FileFormat.PARQUET}
  if not random_access & builder.info.available_file_formats():
    raise _not_prepared(name, data_dir, "prepared only in a format without random access (ArrayRecord is needed)")
  return _Catalog(builder, rates, frozenset(encoded))


# ---- opening a split -------------------------------------------------------------------------


def _kind(data_config) -> str:
  if data_config.audio_dir or data_config.transcripts_file:
    return "folder"
  if data_config.dataset == SYNTH or str(data_config.dataset).startswith(SYNTH + "/"):
    return "synth"
  if not data_config.dataset:
    raise ValueError(f"config.data.dataset is empty and config.data.audio_dir is empty: use {SYNTH!r} (offline), a "
                     "prepared tfds name such as 'librispeech', or the user's audio_dir + transcripts_file")
  return "catalog"


def _synth_config(data_config) -> str:
  config = data_config.dataset.partition("/")[2] or "default"
  known = [c.name for c in speech_corpus.FmjaxSpeech.BUILDER_CONFIGS]
  if config not in known:
    raise ValueError(f"config.data.dataset={data_config.dataset!r}: unknown size {config!r}; choose "
                     f"{SYNTH!r} or one of {[f'{SYNTH}/{k}' for k in known]}")
  return config


def _as_text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _label_text(name: str) -> str:
  return name.strip("_").replace("_", " ")  # speech_commands: '_silence_' -> 'silence'


def _to_float(audio, rate: int, encoded: bool, source: str) -> np.ndarray:
  """A stored waveform (integer PCM, float, or an encoded file's bytes) -> float32 mono 16 kHz."""
  if encoded:
    import soundfile  # pylint: disable=g-import-not-at-top
    try:
      audio, rate = soundfile.read(io.BytesIO(bytes(audio)), dtype="float32", always_2d=False)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{source}: cannot decode the stored audio ({type(e).__name__}: {e})") from None
  audio = np.asarray(audio)
  if np.issubdtype(audio.dtype, np.integer):
    # tfds stores speech corpora as 16-bit PCM values (librispeech in an int64 tensor).
    audio = audio.astype(np.float32) / 32768.0
  return audio_files.resample(audio_files.to_mono(audio.astype(np.float32)), rate, SAMPLE_RATE)


@dataclasses.dataclass(frozen=True)
class _Records:
  """A prepared tfds dataset (the synthesised corpus or a catalog one) and where its parts are."""
  builder: tfds.core.DatasetBuilder
  audio_key: str
  text_key: str                # '' = transcripts are label names, or there are none
  label_key: str               # '' = no labels
  label_names: tuple[str, ...]
  rate: int
  encoded: bool


def _feature_keys(builder) -> list[str]:
  features = builder.info.features
  return list(features.keys()) if hasattr(features, "keys") else []


def _records(data_config, text_required: bool) -> _Records:
  data_dir = building.resolve_data_dir(data_config)
  if _kind(data_config) == "synth":
    config = _synth_config(data_config)
    builder = building.prepared_builder(lambda: speech_corpus.builder(data_dir, config))
    return _Records(builder, "audio", "text", "", (), SAMPLE_RATE, False)
  opened = _open_catalog(data_config.dataset, data_dir)
  builder, keys = opened.builder, _feature_keys(opened.builder)
  audio_key = data_config.audio_key
  if audio_key not in keys:
    raise ValueError(f"config.data.audio_key={audio_key!r} is not a feature of {builder.info.full_name}; its features "
                     f"are {sorted(keys)} (librispeech: 'speech', speech_commands: 'audio').")
  text_key = data_config.text_key if data_config.text_key in keys else ""
  label_key = data_config.label_key if not text_key and data_config.label_key in keys else ""
  if text_required and not text_key and not label_key:
    raise ValueError(f"config.data.text_key={data_config.text_key!r} and config.data.label_key={data_config.label_key!r}: "
                     f"neither is a feature of {builder.info.full_name} (features: {sorted(keys)}); transcripts "
                     "come from one of them.")
  names = tuple(_label_text(n) for n in builder.info.features[label_key].names) if label_key else ()
  return _Records(builder, audio_key, text_key, label_key, names, opened.rates.get(audio_key, SAMPLE_RATE),
                  audio_key in opened.encoded)


def _record_text(records: _Records, record) -> str:
  if records.text_key:
    return _as_text(record[records.text_key])
  if records.label_key:
    return records.label_names[int(record[records.label_key])]
  return ""


def _decode_record(index: int, record, *, records: _Records, where: str) -> dict:
  source = f"{where} #{index}"
  return {"audio": _to_float(record[records.audio_key], records.rate, records.encoded, source),
          "text": _record_text(records, record), "source": source}


def _decode_entry(entry: Entry) -> dict:
  return {"audio": audio_files.read_audio(entry.path, SAMPLE_RATE), "text": entry.text, "source": entry.where}


def _split_records(records: _Records, split: str) -> grain.MapDataset:
  available = list(records.builder.info.splits.keys())
  base = split.split("[")[0]
  if "+" not in split and base not in available:
    raise ValueError(f"split {split!r} (config.data.train_split / config.data.eval_split) is not in "
                     f"{records.builder.info.full_name}; its splits are {available}.")
  if base in available and records.builder.info.splits[base].num_examples == 0:
    return grain.MapDataset.source([])
  return grain.MapDataset.source(records.builder.as_data_source(split=split))


def _folder_split(user: UserAudio, split: str) -> tuple[Entry, ...]:
  if split not in _FOLDER_SPLITS:
    raise ValueError(f"split {split!r} (config.data.train_split / config.data.eval_split): the user's audio folder has "
                     f"the splits {_FOLDER_SPLITS}")
  return user.train if split == "train" else user.validation


def open_utterances(data_config, split: str, text_required: bool = True) -> grain.MapDataset:
  """The split as a grain MapDataset of utterances {'audio', 'text', 'source'} (see the module
  notes), decoded lazily, in the stored (fixed) order."""
  if _kind(data_config) == "folder":
    entries = _folder_split(check_user_audio(data_config, text_required), split)
    return grain.MapDataset.source(list(entries)).map(_decode_entry)
  records = _records(data_config, text_required)
  where = f"{records.builder.info.full_name} split {split!r}"
  return _split_records(records, split).map_with_index(functools.partial(_decode_record, records=records, where=where))


def _split_texts(data_config, split: str) -> tuple[Callable[[int], str], int]:
  """(the transcript of utterance i, the split's size): for the user's folder without reading
  audio, for tfds datasets without resampling it."""
  if _kind(data_config) == "folder":
    entries = _folder_split(check_user_audio(data_config), split)
    return (lambda i: entries[i].text), len(entries)
  records = _records(data_config, text_required=True)
  source = _split_records(records, split)
  return (lambda i: _record_text(records, source[i])), len(source)


def describe_dataset(data_config) -> str:
  """A string naming the training transcripts exactly: equal strings mean equal text (it keys
  cached tokenizers)."""
  kind = _kind(data_config)
  if kind == "folder":
    _, lines, identity = _listed(data_config)
    name = "fmjax_audio_folder/" + hashing.fingerprint(identity, lines, float(data_config.eval_fraction),
                                                      data_config.bad_audio, window_samples(data_config),
                                                      bool(data_config.crop))
  elif kind == "synth":
    name = f"fmjax_speech/{_synth_config(data_config)}:{speech_corpus.FmjaxSpeech.VERSION}"
  else:
    records = _records(data_config, text_required=True)
    name = records.builder.info.full_name
    name += f" text_key={records.text_key}" if records.text_key else f" label_key={records.label_key}"
  return f"{name} split={data_config.train_split}"


def training_texts(data_config, max_chars: int, seed: int = 0) -> Iterator[str]:
  """Training transcripts for a tokenizer in a seeded random order, stopping once max_chars
  characters are yielded. Label datasets yield each class name once (that is all their text)."""
  if _kind(data_config) == "catalog":
    records = _records(data_config, text_required=True)
    if not records.text_key:
      yield from records.label_names
      return
  text_of, count = _split_texts(data_config, data_config.train_split)
  if count == 0:
    raise ValueError(f"the training split {data_config.train_split!r} of {describe_dataset(data_config)} is empty.")
  total = 0
  for index in np.random.default_rng(seed).permutation(count):
    text = text_of(int(index))
    yield text
    total += len(text)
    if total >= max_chars:
      return


# ---- per-utterance preprocessing -------------------------------------------------------------


def pink_noise(count: int, rng: np.random.Generator) -> np.ndarray:
  """Unit-power noise whose power falls as 1/f (white noise shaped in the frequency domain)."""
  spectrum = np.fft.rfft(rng.standard_normal(count, dtype=np.float32))
  frequencies = np.arange(len(spectrum), dtype=np.float64)
  frequencies[0] = 1.0
  spectrum /= np.sqrt(frequencies)
  spectrum[0] = 0.0
  noise = np.fft.irfft(spectrum, n=count)
  return noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
  """White or pink noise (even odds) at `snr_db` below the utterance's mean power."""
  power = float(np.mean(np.square(audio, dtype=np.float64))) if len(audio) else 0.0
  if power == 0.0:
    return audio  # silence has no level to be below
  noise = rng.standard_normal(len(audio), dtype=np.float32) if rng.random() < 0.5 else pink_noise(len(audio), rng)
  scale = np.sqrt(power / 10.0 ** (snr_db / 10.0))
  return (audio + scale * noise).astype(np.float32)


_skipped_lock = threading.Lock()
_skipped_count = [0]


def skipped_in_pipeline() -> int:
  """How many utterances the pipelines of this process dropped as too long (bad_audio='skip')."""
  return _skipped_count[0]


def _fits(utterance: dict, *, window: int, crop: bool, policy: str) -> bool:
  """Whether the utterance can be used: it has samples and, with crop off, fits the window."""
  n = len(utterance["audio"])
  if n and (crop or n <= window):
    return True
  problem = "holds no samples" if n == 0 else (
      f"is {n / SAMPLE_RATE:.2f} s long, over the {window / SAMPLE_RATE:g} s window (config.data.max_seconds; "
      "config.data.crop=True crops instead)")
  if policy == "error":
    raise ValueError(f"{utterance['source']}: the audio {problem} {_policy_text(policy)}")
  with _skipped_lock:
    _skipped_count[0] += 1
    count = _skipped_count[0]
  if count & (count - 1) == 0:  # 1, 2, 4, 8, ...: a trickle of log lines, however many
    logging.warning("skipped %d utterances so far (config.data.bad_audio='skip'); latest: %s %s", count,
                    utterance["source"], problem)
  return False


def _row(audio: np.ndarray, text: str, *, window: int, tokenizer, text_len: int) -> dict:
  audio_N = np.zeros(window, np.float32)
  audio_N[:len(audio)] = audio
  row = {"audio": audio_N, "audio_lengths": np.int32(len(audio))}
  if tokenizer is not None:
    row["text_tokens"] = image_text.encode_caption(tokenizer, text, text_len)
  return row


def _train_example(utterance: dict, rng: np.random.Generator, *, window: int, noise_snr_db: float, tokenizer,
                   text_len: int) -> dict:
  audio = utterance["audio"]
  if len(audio) > window:  # crop is on (_fits dropped the rest)
    start = int(rng.integers(0, len(audio) - window + 1))
    audio = audio[start:start + window]
  if noise_snr_db:
    audio = add_noise(audio, rng, float(rng.uniform(noise_snr_db, noise_snr_db + NOISE_SNR_SPAN_DB)))
  return _row(audio, utterance["text"], window=window, tokenizer=tokenizer, text_len=text_len)


def _eval_example(utterance: dict, *, window: int, tokenizer, text_len: int) -> dict:
  return _row(utterance["audio"][:window], utterance["text"], window=window, tokenizer=tokenizer, text_len=text_len)


# ---- training --------------------------------------------------------------------------------


def make_train_dataset(config, tokenizer: tokenizers.Tokenizer | None, *, process_index: int,
                       process_count: int) -> grain.IterDataset:
  """Endless host-local batches {'audio', 'audio_lengths'[, 'text_tokens']} (module notes),
  b = config.train.batch_size // process_count. Iterate with `iter(...)`; the iterator has
  get_state / set_state for grain.checkpoint.CheckpointSave / CheckpointRestore."""
  data = config.data
  batch_size = local_batch_size(config, process_count)
  utterances = open_utterances(data, data.train_split, text_required=tokenizer is not None)
  ds = shard_for_process(utterances, process_index, process_count)
  if len(ds) == 0:
    raise ValueError(f"training split {data.train_split!r} (config.data.train_split) of {describe_dataset(data)} "
                     f"has no utterances for process {process_index} of {process_count}.")
  if data.shuffle:
    ds = ds.shuffle(seed=int(config.seed) % 2**32)  # before repeat: reshuffled every epoch
  window = window_samples(data)
  ds = ds.repeat().filter(functools.partial(_fits, window=window, crop=bool(data.crop), policy=data.bad_audio))
  example = functools.partial(_train_example, window=window, noise_snr_db=float(data.noise_snr_db),
                              tokenizer=tokenizer, text_len=int(data.text_len))
  # Seeded by (seed, element index): crops and noise resume exactly and differ by epoch.
  ds = ds.random_map(example, seed=(int(config.seed) + 1) % 2**32)
  return batching.training_batches(ds, batch_size, prefetch=data.prefetch, max_threads=_THREADS)


# ---- evaluation ------------------------------------------------------------------------------


def _eval_candidates(data_config, text_required: bool) -> grain.MapDataset:
  """The first eval_examples utterances (0 = all) of a seed-0 shuffle of the eval split: spread
  over the split, and the same set whatever config.seed is."""
  utterances = open_utterances(data_config, data_config.eval_split, text_required)
  if len(utterances) == 0:
    raise ValueError(f"evaluation split {data_config.eval_split!r} (config.data.eval_split) of "
                     f"{describe_dataset(data_config)} is empty.")
  return image_text._fixed_subset(utterances, int(data_config.eval_examples))  # pylint: disable=protected-access


def _eval_set(data_config, text_required: bool) -> tuple[grain.MapDataset, list[int], list[str]]:
  """(the candidates, the positions among them that are used, their transcripts). A candidate
  too long for the window (crop off) is an error or is left out, as config.data.bad_audio says;
  every host drops the same ones, so eval_index means the same on all of them."""
  candidates = _eval_candidates(data_config, text_required)
  fits = functools.partial(_fits, window=window_samples(data_config), crop=bool(data_config.crop),
                           policy=data_config.bad_audio)
  checked = candidates.map(lambda u: (fits(u), u["text"])).to_iter_dataset(_read_options(64))
  kept = [(i, text) for i, (ok, text) in enumerate(checked) if ok]
  if not kept:
    raise ValueError(f"evaluation split {data_config.eval_split!r} of {describe_dataset(data_config)}: all "
                     f"{len(candidates)} utterances were skipped (config.data.bad_audio='skip'): none fits the "
                     f"{window_samples(data_config) / SAMPLE_RATE:g} s window (config.data.max_seconds).")
  return candidates, [i for i, _ in kept], [text for _, text in kept]


def eval_transcripts(config) -> list[str]:
  """The reference transcripts of the eval set, in eval_index order."""
  return _eval_set(config.data, text_required=True)[2]


def make_eval_batches(config, tokenizer: tokenizers.Tokenizer | None, *, process_index: int,
                      process_count: int) -> list[dict[str, np.ndarray]]:
  """The fixed held-out utterances as host-local batches {'audio', 'audio_lengths'[,
  'text_tokens'], 'eval_index'}, the first window of each; the last batch is zero-padded
  (eval_index -1, audio_lengths 0). Every host returns as many batches, and the global batches
  (hosts' batches concatenated in process order) are the same for any process count."""
  data = config.data
  batch_size = local_batch_size(config, process_count)
  candidates, positions, _ = _eval_set(data, text_required=tokenizer is not None)
  window, text_len = window_samples(data), int(data.text_len)
  zero = _row(np.zeros(0, np.float32), "", window=window, tokenizer=tokenizer, text_len=text_len)
  if tokenizer is not None:
    zero["text_tokens"] = np.zeros_like(zero["text_tokens"])
  zero["eval_index"] = np.int32(-1)
  own = image_text._own_rows(len(positions), batch_size, process_index, process_count)  # pylint: disable=protected-access
  wanted = [i for rows in own for i in rows]
  make = functools.partial(_eval_example, window=window, tokenizer=tokenizer, text_len=text_len)
  read = grain.MapDataset.source(wanted).map(lambda i: dict(make(candidates[positions[i]]), eval_index=np.int32(i)))
  rows = iter(list(read.to_iter_dataset(_read_options(batch_size))) if wanted else [])
  batches = []
  for batch_rows in own:
    chunk = [next(rows) for _ in batch_rows]
    padded = chunk + [zero] * (batch_size - len(chunk))
    batches.append({key: np.stack([row[key] for row in padded]) for key in zero})
  return batches


# ---- config checks ---------------------------------------------------------------------------


def validate(config, text_required: bool = True) -> int:
  """Checks config.data (ConfigError naming the field), then, for the user's folder, the
  preflight pass (check_user_audio) before anything trains. Returns the number of utterances
  skipped by it (bad_audio='skip'; also logged), 0 for the other sources.
  text_required=False (masked pretraining) lets the folder come without transcripts."""
  data = config.data
  check = field_checks.section_checker(data, "data")
  is_int, is_number = field_checks.is_int, field_checks.is_number

  check(is_number(data.max_seconds) and data.max_seconds > 0, "max_seconds", "must be > 0 (seconds of audio per utterance)")
  check(isinstance(data.crop, bool), "crop", "must be True or False")
  check(is_number(data.noise_snr_db), "noise_snr_db", "must be a number of dB (0 = no noise)")
  check(data.bad_audio in BAD_AUDIO_POLICIES, "bad_audio", f"choose one of {BAD_AUDIO_POLICIES}")
  check(is_number(data.eval_fraction) and 0.0 < data.eval_fraction < 1.0, "eval_fraction", "must be in (0, 1)")
  check(is_int(data.text_len) and data.text_len >= 3, "text_len", "must be an integer >= 3 (BOS, a token, EOS)")
  check(is_int(data.eval_examples) and data.eval_examples >= 0, "eval_examples", "must be an integer >= 0 (0 = all)")
  check(is_int(data.prefetch) and data.prefetch >= 0, "prefetch", "must be an integer >= 0 (0 = no prefetching)")
  check(data.tokenizer in _TOKENIZERS, "tokenizer", f"choose one of {_TOKENIZERS}")
  check(isinstance(data.shuffle, bool), "shuffle", "must be True or False")
  for field in ("train_split", "eval_split"):
    check(isinstance(data[field], str) and bool(data[field]), field, "must name a split")
  kind = _kind(data) if (data.audio_dir or data.transcripts_file or data.dataset) else ""
  if kind == "folder":
    check(bool(data.audio_dir), "audio_dir", f"must be set with config.data.transcripts_file={data.transcripts_file!r}")
    if text_required:
      check(bool(data.transcripts_file), "transcripts_file", f"must be set with config.data.audio_dir={data.audio_dir!r}: "
            "transcription needs a transcript per file")
    for field in ("train_split", "eval_split"):
      check(data[field] in _FOLDER_SPLITS, field, f"the user's audio folder has the splits {_FOLDER_SPLITS}")
    return len(check_user_audio(data, text_required).skipped)
  check(bool(kind), "dataset", f"must be {SYNTH!r}, a prepared tfds name, or set audio_dir + transcripts_file")
  if kind == "synth":
    try:
      _synth_config(data)
    except ValueError as e:
      raise field_checks.ConfigError(str(e)) from None
    # Known without reading anything: fail now rather than at the first long utterance.
    check(data.crop or data.bad_audio == "skip" or data.max_seconds >= speech_corpus.MAX_SECONDS, "max_seconds",
          f"{SYNTH!r} utterances are up to {speech_corpus.MAX_SECONDS} s long; set max_seconds >= "
          f"{speech_corpus.MAX_SECONDS}, crop=True, or bad_audio='skip'")
  else:
    check(bool(data.audio_key), "audio_key", "must name the audio feature of the dataset")
    if text_required:
      check(bool(data.text_key or data.label_key), "text_key",
            "text_key or label_key must be set: transcripts come from one of them")
  return 0
