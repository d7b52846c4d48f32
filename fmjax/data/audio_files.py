"""The user's audio: reading wav / flac files, and their transcripts file.

Decoding goes through `soundfile` (its wheel bundles libsndfile: WAV, FLAC, OGG and more, no
system package). Every file comes back the same way whatever it holds: float32 mono in
[-1, 1] at the asked rate. Channels are averaged; other rates are resampled with a polyphase
filter at the exact rational ratio (44.1 kHz -> 16 kHz is 160/441).

The transcripts file is TSV (`relative/path.wav<TAB>transcript`) or JSONL
(`{"audio": "relative/path.wav", "text": "..."}`), paths relative to the audio folder. A line
that cannot be parsed is an error naming the file and line; whether an empty transcript or a
bad file is an error or is skipped is the caller's policy (fmjax.data.speech).
"""

import dataclasses
import functools
import json
import math
import os

import numpy as np

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_TSV_SUFFIXES = (".tsv", ".txt")


def _soundfile():
  try:
    import soundfile  # pylint: disable=g-import-not-at-top
  except (ImportError, OSError) as e:  # OSError: libsndfile missing from a source install
    raise RuntimeError(f"reading audio files needs soundfile ({e}): pip install soundfile") from None
  return soundfile


@functools.lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
  """scipy's default resample_poly filter for up/down, designed once: the design costs twice
  the filtering of a 2 s utterance."""
  from scipy import signal  # pylint: disable=g-import-not-at-top  (slow import; only when resampling)

  half_len = 10 * max(up, down)
  return signal.firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """float samples at from_rate -> float32 at to_rate (polyphase, exact ratio)."""
  if from_rate == to_rate:
    return np.asarray(samples, np.float32)
  from scipy import signal  # pylint: disable=g-import-not-at-top

  divisor = math.gcd(int(from_rate), int(to_rate))
  up, down = int(to_rate) // divisor, int(from_rate) // divisor
  out = signal.resample_poly(np.asarray(samples, np.float32), up, down, window=_lowpass(up, down))
  return out.astype(np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
  """(N,) or (N, channels) -> (N,): the channels' mean."""
  return samples if samples.ndim == 1 else samples.mean(axis=1)


def read_audio(path: str, sample_rate: int = 16_000) -> np.ndarray:
  """The file's audio as float32 mono in [-1, 1] at `sample_rate`. A file that does not
  decode is a ValueError naming it."""
  sf = _soundfile()
  if not os.path.isfile(path):
    raise ValueError(f"audio file {path!r} does not exist (or is not a file)")
  try:
    samples, rate = sf.read(path, dtype="float32", always_2d=False)
  except Exception as e:  # pylint: disable=broad-except
    # libsndfile reports unknown formats, truncation and bad headers as sf.LibsndfileError,
    # RuntimeError or TypeError depending on the version: all mean the same here.
    raise ValueError(f"audio file {path!r}: cannot decode ({type(e).__name__}: {e})") from None
  wave = resample(to_mono(samples), int(rate), int(sample_rate))
  return np.clip(wave, -1.0, 1.0)  # float files may hold values just outside; PCM never does


def resampled_length(frames: int, from_rate: int, to_rate: int) -> int:
  """The length `resample` gives for `frames` samples: ceil(frames * to / from)."""
  if from_rate == to_rate:
    return int(frames)
  return -(-int(frames) * int(to_rate) // int(from_rate))


@dataclasses.dataclass(frozen=True)
class Transcript:
  """One line of the transcripts file."""
  where: str   # "file:line", for messages
  audio: str   # path relative to the audio folder, normalised
  text: str    # stripped; may be '' (the caller decides)


def _format_of(path: str, first_line: str) -> str:
  suffix = os.path.splitext(path)[1].lower()
  if suffix in _JSONL_SUFFIXES:
    return "jsonl"
  if suffix in _TSV_SUFFIXES:
    return "tsv"
  return "jsonl" if first_line.lstrip().startswith("{") else "tsv"


def _parse_jsonl(line: str, where: str) -> tuple[str, str]:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e.msg}); "
                     "expected {\"audio\": \"rel/path.wav\", \"text\": \"...\"}") from None
  if not isinstance(record, dict) or not isinstance(record.get("audio"), str) or not isinstance(record.get("text"), str):
    raise ValueError(f"{where}: expected an object with string fields \"audio\" and \"text\", got {line.strip()[:120]!r}")
  return record["audio"], record["text"]


def _parse_tsv(line: str, where: str) -> tuple[str, str]:
  if "\t" not in line:
    raise ValueError(f"{where}: expected 'relative/path.wav<TAB>transcript' (no tab in {line.strip()[:120]!r})")
  audio, text = line.split("\t", 1)  # a transcript may itself hold tabs
  return audio, text


def read_transcripts(transcripts_file: str, audio_dir: str) -> list[Transcript]:
  """Every non-blank line of the TSV or JSONL file (by suffix, else by its first line), in
  order. A TSV header row 'audio<TAB>text' (or path / file / transcript) is skipped. Paths must
  stay inside audio_dir. Malformed lines are ValueErrors naming file:line."""
  try:
    with open(transcripts_file, "rb") as handle:
      raw = handle.read()
  except OSError as e:
    raise ValueError(f"transcripts file {transcripts_file!r}: cannot read ({e.strerror})") from None
  try:
    text = raw.decode("utf-8-sig")  # a BOM from spreadsheet exports is not part of line 1
  except UnicodeDecodeError as e:
    raise ValueError(f"{transcripts_file}: not UTF-8 text (byte {e.start})") from None
  rows = text.splitlines()
  fmt = _format_of(transcripts_file, next((row for row in rows if row.strip()), ""))
  root = os.path.abspath(audio_dir)
  found = []
  for number, row in enumerate(rows, start=1):
    if not row.strip():
      continue
    where = f"{transcripts_file}:{number}"
    audio, transcript = (_parse_jsonl if fmt == "jsonl" else _parse_tsv)(row, where)
    audio = audio.strip()
    if fmt == "tsv" and not found and audio.lower() in ("audio", "path", "file") and \
        transcript.strip().lower() in ("text", "transcript", "sentence"):
      continue  # a header row
    if not audio:
      raise ValueError(f"{where}: empty audio path")
    relative = os.path.normpath(audio)
    if os.path.isabs(relative) or not os.path.abspath(os.path.join(root, relative)).startswith(root + os.sep):
      raise ValueError(f"{where}: audio path {audio!r} must be relative to the audio folder {audio_dir!r}, inside it")
    found.append(Transcript(where=where, audio=relative, text=transcript.strip()))
  return found
