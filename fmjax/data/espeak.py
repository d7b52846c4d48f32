"""Speech synthesis with eSpeak NG, offline, through the `espeakng-loader` wheel.

The wheel bundles libespeak-ng and its voice data, so no system package is needed. The library
is driven through ctypes in synchronous mode: a callback collects its 22.05 kHz int16 samples.

Determinism: repeated synthesis inside one process is not bit-identical (the library keeps
state from one utterance to the next), but a fresh process that makes the same sequence of calls
reproduces its output exactly. So `synthesize` never synthesises in the calling process: the
requests are cut into chunks of a fixed size (CHUNK_SIZE, independent of the machine), each
chunk is spoken by a fresh worker process running this file, and the audio is a function of the
request list alone, however many workers run at once. The worker imports only numpy and ctypes
(it starts in ~0.1 s); resampling to 16 kHz happens in the caller, in threads.

Variants that add breath noise (f2, f3, f5, whisper, ...) are refused: their noise differs even
between fresh processes, so nothing made with them could be rebuilt identically.

Speed: about 500x real time on one core here (2400 s of speech in 4.6 s), plus resampling.

The worker can also be run by hand: `python -m fmjax.data.espeak OUT.npz < requests.json`
(a JSON list of {"text", "voice", "rate", "pitch"}) writes the raw 22.05 kHz samples.
"""

import concurrent.futures
import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

ESPEAK_RATE = 22_050       # what libespeak-ng produces
SAMPLE_RATE = 16_000       # what synthesize returns
CHUNK_SIZE = 256           # requests per worker process; part of what fixes the output
RATE_RANGE = (80, 450)     # words per minute espeak accepts
PITCH_RANGE = (0, 100)
_INSTALL_HINT = "pip install espeakng-loader"

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK = 0


@dataclasses.dataclass(frozen=True)
class Request:
  """One utterance: `voice` is a language voice, optionally with a variant ('en-us+m3')."""
  text: str
  voice: str = "en-us"
  rate: int = 175    # words per minute
  pitch: int = 50    # base pitch, 0..100


def _loader():
  try:
    import espeakng_loader  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise RuntimeError(f"speech synthesis needs the espeakng-loader wheel: {_INSTALL_HINT}") from None
  return espeakng_loader


def data_path() -> str:
  """The bundled espeak-ng-data folder."""
  return _loader().get_data_path()


def _first_language(path: str) -> str | None:
  with open(path, encoding="utf-8", errors="replace") as handle:
    for line in handle:
      parts = line.split()
      if len(parts) >= 2 and parts[0] == "language":
        return parts[1]
  return None


def _voice_files() -> dict[str, str]:
  """{voice name: its language} for every language voice of the bundled data. The library
  takes a voice by its file name, case-insensitively ('en' is British English, 'en-us')."""
  root = os.path.join(data_path(), "lang")
  return {name.lower(): _first_language(os.path.join(folder, name)) or ""
          for folder, _, files in os.walk(root) for name in files}


def voices(prefix: str = "en") -> list[str]:
  """Voice names of the bundled data whose language starts with `prefix` ('en', 'en-us',
  'en-gb-scotland', ...), sorted: names espeak_SetVoiceByName accepts."""
  return sorted(name for name, language in _voice_files().items() if language.startswith(prefix))


def variants() -> list[str]:
  """Voice variants of the bundled data ('m3', 'f2', 'klatt', ...), added as 'voice+variant'."""
  return sorted(os.listdir(os.path.join(data_path(), "voices", "!v")))


def breathy_variants() -> list[str]:
  """Variants that add breath noise: it differs from one process to the next, so synthesis
  with them is not reproducible (checked: 16 fresh runs of f2 gave 5 different outputs)."""
  found = []
  for name in variants():
    with open(os.path.join(data_path(), "voices", "!v", name), encoding="utf-8", errors="replace") as handle:
      for line in handle:
        parts = line.split()
        if parts and parts[0] == "breath" and any(p.lstrip("-").isdigit() and int(p) for p in parts[1:]):
          found.append(name)
          break
  return found


def _as_request(request) -> Request:
  if isinstance(request, Request):
    return request
  if isinstance(request, dict):
    return Request(**request)
  raise TypeError(f"expected an espeak.Request or a dict, got {type(request).__name__}")


def check_requests(requests: Sequence[Request]) -> None:
  """ValueError naming the first request the library would reject, silently misread (it
  ignores an unknown variant) or not reproduce (breathy variants)."""
  known_voices, breathy = set(_voice_files()), set(breathy_variants())
  known_variants = set(variants()) - breathy
  for i, r in enumerate(requests):
    voice, _, variant = r.voice.partition("+")
    if voice.lower() not in known_voices:
      raise ValueError(f"request {i}: voice {r.voice!r}: {voice!r} is not a bundled voice; "
                       f"English ones are {voices('en')}")
    if variant in breathy:
      raise ValueError(f"request {i}: voice {r.voice!r}: variant {variant!r} adds breath noise, which eSpeak NG "
                       f"does not reproduce from run to run; choose one of {sorted(known_variants)}")
    if variant and variant not in known_variants:
      raise ValueError(f"request {i}: voice {r.voice!r}: variant {variant!r} is not bundled; choose one of "
                       f"{sorted(known_variants)}")
    if not RATE_RANGE[0] <= r.rate <= RATE_RANGE[1]:
      raise ValueError(f"request {i}: rate={r.rate}: must be in {RATE_RANGE} words per minute")
    if not PITCH_RANGE[0] <= r.pitch <= PITCH_RANGE[1]:
      raise ValueError(f"request {i}: pitch={r.pitch}: must be in {PITCH_RANGE}")
    if not r.text.strip():
      raise ValueError(f"request {i}: empty text")


def resample_to_16k(samples_22k: np.ndarray) -> np.ndarray:
  """int16 22.05 kHz -> int16 16 kHz (polyphase, 320 / 441)."""
  from fmjax.data import audio_files  # pylint: disable=g-import-not-at-top  (the worker needs none of it)

  if len(samples_22k) == 0:
    return np.zeros(0, np.int16)
  resampled = audio_files.resample(samples_22k.astype(np.float32), ESPEAK_RATE, SAMPLE_RATE)
  return np.clip(np.round(resampled), -32768, 32767).astype(np.int16)


def _run_worker(chunk: list[Request]) -> list[np.ndarray]:
  payload = json.dumps([dataclasses.asdict(r) for r in chunk])
  with tempfile.TemporaryDirectory(prefix="fmjax-espeak-") as tmp:
    out = os.path.join(tmp, "audio.npz")
    # -P: the script's folder (fmjax/data, whose module names are generic) stays off sys.path.
    done = subprocess.run([sys.executable, "-P", os.path.abspath(__file__), out], input=payload.encode("utf-8"),
                          capture_output=True, check=False)
    if done.returncode != 0:
      lines = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
      raise RuntimeError(f"espeak worker failed (exit {done.returncode}): {lines[-1] if lines else 'no message'}")
    with np.load(out) as saved:
      samples, lengths = saved["samples"], saved["lengths"]
  return np.split(samples, np.cumsum(lengths)[:-1]) if len(lengths) else []


def synthesize(requests: Sequence[Request | dict], *, workers: int | None = None) -> list[np.ndarray]:
  """The requests spoken, as int16 16 kHz arrays in request order. The result depends on the
  list only (see the module notes), not on `workers` (default: one per CPU)."""
  _loader()  # the install hint here, before any process starts
  requests = [_as_request(r) for r in requests]
  check_requests(requests)
  chunks = [requests[i:i + CHUNK_SIZE] for i in range(0, len(requests), CHUNK_SIZE)]
  workers = max(1, min(workers or os.cpu_count() or 1, len(chunks) or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    raw = [wave for spoken in pool.map(_run_worker, chunks) for wave in spoken]
    # scipy's polyphase filter releases the GIL: threads resample in parallel.
    return list(pool.map(resample_to_16k, raw))


# ---- the worker (a fresh process per chunk) --------------------------------------------------

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
  """libespeak-ng in synchronous mode, collecting each utterance's samples."""

  def __init__(self):
    loader = _loader()
    try:
      lib = ctypes.CDLL(loader.get_library_path())
    except OSError as e:
      raise RuntimeError(f"cannot load libespeak-ng from the espeakng-loader wheel ({e}); reinstall it: "
                         f"{_INSTALL_HINT}") from None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, loader.get_data_path().encode("utf-8"), 0)
    if rate != ESPEAK_RATE:
      raise RuntimeError(f"libespeak-ng initialised at {rate} Hz, expected {ESPEAK_RATE} (data path or version?)")
    self._lib = lib
    self._pieces: list[np.ndarray] = []
    self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it later
    lib.espeak_SetSynthCallback(self._callback)

  def _collect(self, wav, count, events) -> int:
    del events
    if count > 0:
      self._pieces.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0  # 0 = go on

  def speak(self, request: Request) -> np.ndarray:
    lib = self._lib
    if lib.espeak_SetVoiceByName(request.voice.encode("utf-8")) != _EE_OK:
      raise RuntimeError(f"voice {request.voice!r} not found in the bundled data")
    lib.espeak_SetParameter(_PARAM_RATE, int(request.rate), 0)
    lib.espeak_SetParameter(_PARAM_PITCH, int(request.pitch), 0)
    text = request.text.encode("utf-8") + b"\0"
    self._pieces = []
    if lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != _EE_OK:
      raise RuntimeError(f"espeak_Synth failed for {request.text!r}")
    lib.espeak_Synchronize()
    return np.concatenate(self._pieces).astype(np.int16) if self._pieces else np.zeros(0, np.int16)


def _worker_main(out_path: str) -> None:
  requests = [Request(**r) for r in json.loads(sys.stdin.read())]
  engine = _Engine()
  waves = [engine.speak(r) for r in requests]
  lengths = np.asarray([len(w) for w in waves], np.int64)
  samples = np.concatenate(waves) if waves else np.zeros(0, np.int16)
  np.savez(out_path, samples=samples, lengths=lengths)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m fmjax.data.espeak OUT.npz < requests.json")
  try:
    _worker_main(sys.argv[1])
  except RuntimeError as e:
    sys.exit(str(e))
