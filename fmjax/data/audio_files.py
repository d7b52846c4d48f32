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
import math
import os

import numpy as np

from fmjax.data import pair_files



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


TRANSCRIPT_FIELDS = pair_files.Fields(path="audio", text="text", example_path="relative/path.wav",
                                     path_headers=("audio", "path", "file"),
                                     text_headers=("text", "transcript", "sentence"))


def read_transcripts(transcripts_file: str, audio_dir: str) -> list[Transcript]:
  """Every non-blank line of the TSV or JSONL file (fmjax.data.pair_files), in order. Paths must
  stay inside audio_dir. Malformed lines are ValueErrors naming file:line."""
  root = os.path.abspath(audio_dir)
  found = []
  for row in pair_files.read_rows(transcripts_file, TRANSCRIPT_FIELDS):
    where, audio = row.where, row.path
    if not audio:
      raise ValueError(f"{where}: empty audio path")
    relative = os.path.normpath(audio)
    if os.path.isabs(relative) or not os.path.abspath(os.path.join(root, relative)).startswith(root + os.sep):
      raise ValueError(f"{where}: audio path {audio!r} must be relative to the audio folder {audio_dir!r}, inside it")
    found.append(Transcript(where=where, audio=relative, text=row.text))
  return found
