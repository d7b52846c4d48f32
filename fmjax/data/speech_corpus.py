"""The offline default speech dataset: short English commands and digit strings, synthesised.

Every machine with Python can build it (eSpeak NG from the espeakng-loader wheel,
fmjax.data.espeak; ~30 s for the default size on 2 cores), so the speech paradigm runs without a
download. The text is made so that a small model can learn to transcribe it in minutes on a
CPU: a fixed vocabulary of 71 words (digits, colours, objects, places, a few verbs and
prepositions) in a handful of templates ("move the red box to the left", "seven three nine
two"), drawn from a seeded generator, every sentence distinct.

Each utterance is one sentence spoken by one of several English voices (accents x variants),
at a random speed (140-200 words a minute) and base pitch (30-70), with 0-400 ms of silence
before and after (eSpeak adds none; real recordings have anything from none to some, and a
model that only ever heard a pause first mishears speech that starts at once): 1 to 3.5 s each. The
audio is clean: background noise is a training-time augmentation of the pipeline
(config.data.noise_snr_db), so it is fresh every epoch and the stored corpus stays one fixed
thing.

Held out (split 'validation'): sentences never spoken in training, half of them by a voice
never heard in training (HELD_OUT_VOICE), half by training voices. So its error rates measure
transcription of new word sequences, and of a new voice.

Deterministic: synthesis runs in fresh processes over a fixed request order (see espeak.py),
and every random choice comes from the config's seed, so two builds give identical audio.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from fmjax.data import espeak

SAMPLE_RATE = espeak.SAMPLE_RATE   # 16 kHz
MIN_SECONDS, MAX_SECONDS = 1.0, 3.5
RATE_WPM = (140, 200)              # eSpeak's words a minute
PITCH = (30, 70)
SILENCE_SECONDS = (0.0, 0.4)       # before and after the speech, each
DIGIT_WORDS = (3, 7)               # digit strings have 3 to 6 digits
MAX_WORDS = 8                      # longest command: about 3 s at the slowest rate

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown", "grey")
OBJECTS = ("box", "ball", "cup", "book", "chair", "table", "door", "window", "lamp", "key", "phone", "bag",
           "hat", "shoe", "car", "block")
PLACES = ("left", "right", "top", "bottom", "front", "back", "middle", "corner")
SIZES = ("big", "small")
MOVE_VERBS = ("move", "push", "pull", "bring", "slide")
HAND_VERBS = ("open", "close", "find", "take", "lift", "drop", "hold", "show")
PREPOSITIONS = ("on", "in", "under", "near", "behind", "above")
FUNCTION_WORDS = ("the", "to", "put", "please", "now")
VOCABULARY = tuple(sorted(set(DIGITS + COLOURS + OBJECTS + PLACES + SIZES + MOVE_VERBS + HAND_VERBS
                              + PREPOSITIONS + FUNCTION_WORDS)))

# eSpeak voices: accent (language voice) + variant. No breathy variants: they do not reproduce.
TRAIN_VOICES = (
    "en-us", "en-us+f4", "en-us+m3", "en+m1", "en+f1", "en+m5", "en-gb-scotland+m2", "en-gb-x-rp+f4",
    "en-us-nyc+m4", "en-029+m6", "en-gb-x-gbclan+m7", "en-gb-x-gbcwmd+f1",
)
# Its accent and its variant are each heard in training, never together: a new voice.
HELD_OUT_VOICE = "en-gb-x-rp+m3"
VOICES = TRAIN_VOICES + (HELD_OUT_VOICE,)


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
  return words[int(rng.integers(len(words)))]


def _digit_string(rng: np.random.Generator) -> str:
  return " ".join(_pick(rng, DIGITS) for _ in range(int(rng.integers(*DIGIT_WORDS))))


def _clause(rng: np.random.Generator) -> str:
  colour, thing, other = _pick(rng, COLOURS), _pick(rng, OBJECTS), _pick(rng, OBJECTS)
  template = int(rng.integers(4))
  if template == 0:
    return f"{_pick(rng, MOVE_VERBS)} the {colour} {thing} to the {_pick(rng, PLACES)}"
  if template == 1:
    return f"{_pick(rng, HAND_VERBS)} the {_pick(rng, SIZES)} {colour} {thing}"
  if template == 2:
    return f"put the {colour} {thing} {_pick(rng, PREPOSITIONS)} the {other}"
  return f"{_pick(rng, HAND_VERBS)} the {thing} {_pick(rng, PREPOSITIONS)} the {colour} {other}"


def _phrase(rng: np.random.Generator) -> str:
  """One command, with an optional 'please' before it and 'now' after it."""
  while True:
    words = _clause(rng)
    if rng.random() < 0.2:
      words = "please " + words
    if rng.random() < 0.15:
      words += " now"
    if len(words.split()) <= MAX_WORDS:  # so the slowest speech stays within MAX_SECONDS
      return words


def sentences(count: int, seed: int) -> list[str]:
  """`count` distinct sentences (35% digit strings, the rest commands) in a seeded order."""
  rng = np.random.default_rng([seed, 1])
  found: dict[str, None] = {}
  while len(found) < count:
    found.setdefault(_digit_string(rng) if rng.random() < 0.35 else _phrase(rng))
  return list(found)


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  train_size: int = 4000
  validation_size: int = 240
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Utterance:
  split: str
  id: int
  text: str
  voice: str
  rate: int
  pitch: int
  lead_seconds: float   # silence before the speech
  tail_seconds: float   # silence after it


def utterances(config: CorpusConfig) -> list[Utterance]:
  """Every utterance of the corpus, train then validation, with all its random choices."""
  texts = sentences(config.train_size + config.validation_size, config.seed)
  order = np.random.default_rng([config.seed, 2]).permutation(len(texts))
  rng = np.random.default_rng([config.seed, 3])
  planned = []
  for position, index in enumerate(order):
    split = "train" if position < config.train_size else "validation"
    if split == "train":
      voice = _pick(rng, TRAIN_VOICES)
    else:  # half the held-out sentences in the held-out voice, alternating
      voice = HELD_OUT_VOICE if (position - config.train_size) % 2 == 0 else _pick(rng, TRAIN_VOICES)
    planned.append(Utterance(
        split=split, id=position, text=texts[index], voice=voice,
        rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)), pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        lead_seconds=float(rng.uniform(*SILENCE_SECONDS)), tail_seconds=float(rng.uniform(*SILENCE_SECONDS))))
  return planned


def _with_silence(speech: np.ndarray, plan: Utterance) -> np.ndarray:
  """Silence around the speech, shortened to stay within MAX_SECONDS and lengthened (at the
  end) to reach MIN_SECONDS."""
  lead, tail = (int(round(s * SAMPLE_RATE)) for s in (plan.lead_seconds, plan.tail_seconds))
  longest, shortest = int(MAX_SECONDS * SAMPLE_RATE), int(MIN_SECONDS * SAMPLE_RATE)
  if len(speech) > longest:
    raise ValueError(f"utterance {plan.id} ({plan.text!r}, {plan.voice}, {plan.rate} wpm) is "
                     f"{len(speech) / SAMPLE_RATE:.2f} s of speech, over MAX_SECONDS={MAX_SECONDS}")
  excess = len(speech) + lead + tail - longest
  if excess > 0:
    lead -= excess // 2
    tail -= excess - excess // 2
  tail += max(0, shortest - (len(speech) + lead + tail))
  return np.concatenate([np.zeros(lead, np.int16), speech, np.zeros(tail, np.int16)])


class FmjaxSpeech(tfds.core.GeneratorBasedBuilder):
  """Synthesised English commands and digit strings at 16 kHz, with a held-out voice."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "100-400 ms of silence around each utterance.",
                   "1.1.0": "0-400 ms, so that some utterances start with speech at once."}
  BUILDER_CONFIGS = [
      CorpusConfig(name="default", description="4000 training and 240 held-out utterances"),
      # A few seconds to build: for tests and quick looks.
      CorpusConfig(name="small", description="160 training and 32 held-out utterances", train_size=160,
                   validation_size=32),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,  # needed because this module is not in a tfds dataset folder
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # int16 samples at SAMPLE_RATE, stored as raw bytes (100x faster to write than tfds'
            # default int64 list). A plain tensor: tfds.features.Audio needs TensorFlow.
            "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES),
            "text": tfds.features.Text(),
            "voice": tfds.features.Text(),
            "id": tfds.features.Scalar(dtype=np.int32),  # position in `utterances(config)`
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    planned = utterances(self.builder_config)
    spoken = espeak.synthesize([espeak.Request(u.text, u.voice, u.rate, u.pitch) for u in planned])
    audio = [_with_silence(speech, plan) for speech, plan in zip(spoken, planned)]
    return {split: self._generate_examples([(u, a) for u, a in zip(planned, audio) if u.split == split])
            for split in ("train", "validation")}

  def _generate_examples(self, examples):
    for plan, audio in examples:
      yield plan.id, {"audio": audio, "text": plan.text, "voice": plan.voice, "id": plan.id}


def builder(data_dir: str, config: str = "default") -> FmjaxSpeech:
  """`config`: 'default' (4000 + 240 utterances) or 'small' (160 + 32)."""
  return FmjaxSpeech(config=config, data_dir=data_dir, file_format="array_record")
