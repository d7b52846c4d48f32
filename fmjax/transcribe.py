"""Transcribing audio with a speech_seq2seq run: KV-cached greedy decoding or beam search.

    python -m fmjax.transcribe --workdir DIR --audio a.wav [--audio b.flac ...] [--beam 4]
        [--max_tokens N]

prints one transcript per file. Files may have any sample rate (resampled to 16 kHz) and must
fit the run's window (config.data.max_seconds); longer ones are an error naming the file.
Files are transcribed in batches of the same padded shape, so each setting compiles once. A
request the run cannot serve (no speech_seq2seq run in DIR, a file that is missing, does not
decode or is too long, a setting out of range) is one `error: ...` line and exit status 2,
before the model is loaded.

Python:
    transcriber = Transcriber.from_workdir(DIR)
    transcriber.transcribe(["a.wav", waveform_16k_float32], beam=4)   # -> list of strings
"""

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from fmjax import argument_checks, cli_errors, inference, speech_decoding
from fmjax.data import audio_files
from fmjax.objectives import speech_common, speech_features, speech_seq2seq

_BATCH = 8  # utterances per decoding call; padded to this

Audio = Union[str, np.ndarray]


def waveform(audio: Audio, name: str, window: int) -> np.ndarray:
  """float32 mono at 16 kHz from a file path or an array; empty audio, or more than `window`
  samples (the run's config.data.max_seconds), is a ValueError naming it."""
  wave = audio_files.read_audio(audio, speech_common.SAMPLE_RATE) if isinstance(audio, str) else \
      np.asarray(audio, np.float32).reshape(-1)
  if len(wave) > window:
    seconds = window / speech_common.SAMPLE_RATE
    raise ValueError(f"{name}: {len(wave) / speech_common.SAMPLE_RATE:.2f} s of audio is longer than the run's "
                     f"window of {seconds:g} s (config.data.max_seconds); cut it into pieces first")
  if len(wave) == 0:
    raise ValueError(f"{name}: no audio samples")
  return wave


def decode_length(run: inference.RunFiles, max_tokens: int) -> int:
  """Columns of a decoded row ([BOS] tokens [EOS]): `max_tokens`, or the run's text_len for 0.
  The decoder's learned positions end at text_len, which bounds it."""
  text_len = int(run.config.data.text_len)
  if max_tokens == 0:
    return text_len
  return argument_checks.integer(max_tokens, "--max_tokens", 2, text_len + 1,
                                 note=f" (0: the run's config.data.text_len, {text_len})")


def check_request(run: inference.RunFiles, audios: Sequence[Audio], *, beam: int, max_tokens: int) -> list[np.ndarray]:
  """The waveforms of a transcription request this run can serve, else a ValueError. Reads no
  parameters: works on the files of a run (inference.open_run) as on a loaded one."""
  argument_checks.integer(beam, "--beam", 1, note=" (1: greedy)")
  decode_length(run, max_tokens)
  window = speech_common.window_samples(run.config)
  return [waveform(a, a if isinstance(a, str) else f"audio {i}", window) for i, a in enumerate(audios)]


class Transcriber:
  def __init__(self, run: inference.LoadedRun):
    self.run = run
    self.tokenizer = run.assets.tokenizer
    self.window = speech_common.window_samples(run.config)
    self._graphdef, self._state = nnx.split(run.model)
    self._compiled = {}

  @classmethod
  def from_workdir(cls, workdir: str) -> "Transcriber":
    return cls(inference.load_run(workdir, expect_objective="speech_seq2seq"))

  def _decode_fn(self, beam: int, max_len: int):
    key = (beam, max_len)
    if key not in self._compiled:
      task = self.run.model.task

      def decode(state, batch):
        model = nnx.merge(self._graphdef, state)
        feats, frame_mask = speech_features.features(batch, task.features)
        if beam == 1:
          return speech_decoding.greedy_tokens(model, feats, frame_mask, bos_id=task.bos_id, eos_id=task.eos_id,
                                               max_len=max_len)
        tokens, _ = speech_decoding.beam_tokens(model, feats, frame_mask, beam=beam, bos_id=task.bos_id,
                                                eos_id=task.eos_id, max_len=max_len)
        return tokens
      self._compiled[key] = jax.jit(decode)
    return self._compiled[key]

  def transcribe(self, audios: Sequence[Audio], *, beam: int = 1, max_tokens: int = 0) -> list[str]:
    waves = check_request(self.run, audios, beam=beam, max_tokens=max_tokens)
    max_len = decode_length(self.run, max_tokens)
    texts = []
    for start in range(0, len(waves), _BATCH):
      chunk = waves[start:start + _BATCH]
      audio = np.zeros((_BATCH, self.window), np.float32)
      lengths = np.zeros((_BATCH,), np.int32)
      for i, wave in enumerate(chunk):
        audio[i, :len(wave)], lengths[i] = wave, len(wave)
      lengths[len(chunk):] = lengths[0]  # padding rows: any valid audio, results dropped
      audio[len(chunk):] = audio[0]
      batch = {"audio": jnp.asarray(audio), "audio_lengths": jnp.asarray(lengths)}
      tokens = jax.device_get(self._decode_fn(beam, max_len)(self._state, batch))
      texts += speech_seq2seq.token_texts(self.tokenizer, tokens[:len(chunk)], self.tokenizer.eos_id)
    return texts


FLAGS = flags.FLAGS


def define_flags():
  # Defined when run as a program (cli_errors.run; see fmjax/fill_mask.py).
  flags.DEFINE_string("workdir", None, "workdir of a speech_seq2seq training run")
  flags.DEFINE_multi_string("audio", None, "a wav or flac file to transcribe; repeat for several")
  flags.DEFINE_integer("beam", 1, "beam width, an integer >= 1 (1: greedy)")
  flags.DEFINE_integer("max_tokens", 0, "tokens per transcript at most, 2 to the run's config.data.text_len + 1 "
                       "(0: config.data.text_len)")


def main(argv):
  del argv
  cli_errors.require(workdir=FLAGS.workdir, audio=FLAGS.audio)
  files = inference.open_run(FLAGS.workdir, expect_objective="speech_seq2seq")
  # Read (and checked against the run's window) before the model loads; the waveforms are
  # then transcribed as they are.
  waves = check_request(files, FLAGS.audio, beam=FLAGS.beam, max_tokens=FLAGS.max_tokens)
  transcriber = Transcriber(inference.restore(files))
  texts = transcriber.transcribe(waves, beam=FLAGS.beam, max_tokens=FLAGS.max_tokens)
  print(f"# {FLAGS.workdir} at step {transcriber.run.step}, beam {FLAGS.beam}")
  for path, text in zip(FLAGS.audio, texts):
    print(f"{path}\t{text}")


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
