"""Whisper's log-mel features, computed on the device inside the train step.

    audio_BxN (16 kHz float32) -> feats_BxTxM, T = N // 160, M = 80

The recipe is Whisper's: a centred STFT (reflect padding of n_fft // 2 on both sides) with a
25 ms periodic Hann window every 10 ms, the power spectrum, a Slaney-scale, Slaney-normalised
mel filterbank, log10 floored at 1e-10, a dynamic range of 8 decades below each example's
loudest bin, then (x + 4) / 4 to bring the values near unit scale. The STFT yields
N // 160 + 1 frames; the last one (centred at the end of the audio) is dropped, as Whisper
does, so 30 s of audio gives exactly 3000 frames.

Framing uses no gather: with the hop dividing the padded signal into rows of 160 samples, a
400-sample window starting at row t is rows t and t + 1 followed by the first 80 samples of
row t + 2. Three shifted slices of one reshaped array and a concatenation build every frame,
which XLA turns into plain copies rather than a gather of T x 400 indices.

The filterbank is built once, in NumPy, at trace time: it is a constant of the program. The
mel projection runs at full float32 precision: a bf16 matmul (the TPU default) rounds its
inputs to 8 significant bits, errors of order 1e-4 on the final features, the whole tolerance
of the NumPy reference test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400   # 25 ms windows
HOP = 160     # 10 ms between frames
N_MELS = 80

LOG_FLOOR = 1e-10       # power floor before the log
DYNAMIC_RANGE = 8.0     # decades kept below each example's maximum

# The Slaney mel scale: linear (3 mels per 200 Hz) up to 1 kHz, logarithmic above it, with the
# step chosen so that 27 mels span a factor 6.4 in frequency.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz) -> np.ndarray:
  """Slaney mel of a frequency in Hz (scalar or array)."""
  hz = np.asarray(hz, np.float64)
  linear = hz / _LINEAR_HZ_PER_MEL
  logarithmic = _BREAK_MEL + np.log(np.maximum(hz, 1e-12) / _BREAK_HZ) / _LOG_STEP
  return np.where(hz >= _BREAK_HZ, logarithmic, linear)


def mel_to_hz(mel) -> np.ndarray:
  """Inverse of `hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  linear = mel * _LINEAR_HZ_PER_MEL
  logarithmic = _BREAK_HZ * np.exp(_LOG_STEP * (mel - _BREAK_MEL))
  return np.where(mel >= _BREAK_MEL, logarithmic, linear)


def mel_centers_hz(num_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The num_mels + 2 band edges in Hz, evenly spaced in mel from 0 to Nyquist: filter i rises
  from edge i, peaks at edge i + 1 and falls to zero at edge i + 2."""
  return mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), num_mels + 2))


def mel_filterbank(num_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """(num_mels, n_fft // 2 + 1) float32: triangular filters over the rfft bins, on the Slaney
  mel scale, each scaled to unit area per Hz (2 / bandwidth: Slaney normalisation), so that a
  wide high-frequency band does not outweigh a narrow low one."""
  if num_mels < 1:
    raise ValueError(f"mel_filterbank num_mels={num_mels}: must be >= 1")
  if n_fft < 2:
    raise ValueError(f"mel_filterbank n_fft={n_fft}: must be >= 2")
  if sample_rate <= 0:
    raise ValueError(f"mel_filterbank sample_rate={sample_rate}: must be > 0")
  bin_hz_F = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
  edges_hz = mel_centers_hz(num_mels, sample_rate)
  left, center, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
  rising_MxF = (bin_hz_F[None, :] - left) / (center - left)
  falling_MxF = (right - bin_hz_F[None, :]) / (right - center)
  weights_MxF = np.maximum(0.0, np.minimum(rising_MxF, falling_MxF))
  weights_MxF *= 2.0 / (right - left)
  return weights_MxF.astype(np.float32)


def num_frames(num_samples: int) -> int:
  """Frames for `num_samples` of audio: one per hop (Whisper drops the STFT's last frame)."""
  return int(num_samples) // HOP


def periodic_hann(n: int) -> np.ndarray:
  """The periodic Hann window (the DFT-even one: a symmetric window of n + 1 without its end)."""
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def _frames(padded_BxL: jax.Array, count: int) -> jax.Array:
  """(B, count, N_FFT): the windows starting every HOP samples of the padded signal."""
  rows_needed = count - 1 + -(-N_FFT // HOP)  # rows touched by the last window
  b, length = padded_BxL.shape
  extra = rows_needed * HOP - length
  if extra > 0:  # never read: only completes the last row
    padded_BxL = jnp.pad(padded_BxL, ((0, 0), (0, extra)))
  rows_BxRxH = padded_BxL[:, :rows_needed * HOP].reshape(b, rows_needed, HOP)
  pieces, taken, shift = [], 0, 0
  while taken < N_FFT:
    width = min(HOP, N_FFT - taken)
    pieces.append(rows_BxRxH[:, shift:shift + count, :width])
    taken += width
    shift += 1
  return jnp.concatenate(pieces, axis=-1)


@functools.partial(jax.jit, static_argnames=("num_mels",))
def log_mel_spectrogram(audio_BxN: jax.Array, num_mels: int = N_MELS) -> jax.Array:
  """(B, N) 16 kHz waveforms -> (B, N // 160, num_mels) float32 Whisper log-mel features.

  The dynamic-range clamp uses each example's own maximum (padding frames, at the floor, never
  raise it), so an example's features do not depend on what else is in the batch."""
  if audio_BxN.ndim != 2:
    raise ValueError(f"log_mel_spectrogram audio_BxN: expected shape (batch, samples), got {audio_BxN.shape}")
  n = audio_BxN.shape[1]
  if n <= N_FFT // 2 or n < HOP:
    raise ValueError(f"log_mel_spectrogram audio_BxN has {n} samples: must be > {N_FFT // 2} "
                     f"(the reflect padding) and >= {HOP} (one frame)")
  count = num_frames(n)
  audio_BxN = audio_BxN.astype(jnp.float32)
  padded_BxL = jnp.pad(audio_BxN, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
  frames_BxTxW = _frames(padded_BxL, count) * jnp.asarray(periodic_hann(N_FFT))
  spectrum_BxTxF = jnp.fft.rfft(frames_BxTxW, axis=-1)
  power_BxTxF = jnp.square(spectrum_BxTxF.real) + jnp.square(spectrum_BxTxF.imag)
  filters_FxM = jnp.asarray(mel_filterbank(num_mels, N_FFT, SAMPLE_RATE).T)
  mel_BxTxM = jnp.einsum("btf,fm->btm", power_BxTxF, filters_FxM, precision=jax.lax.Precision.HIGHEST)
  log_BxTxM = jnp.log10(jnp.maximum(mel_BxTxM, LOG_FLOOR))
  peak_Bx1x1 = jnp.max(log_BxTxM, axis=(1, 2), keepdims=True)
  log_BxTxM = jnp.maximum(log_BxTxM, peak_Bx1x1 - DYNAMIC_RANGE)
  return (log_BxTxM + 4.0) / 4.0


def frame_mask(audio_lengths_B: jax.Array, num_frames: int) -> jax.Array:
  """(B, num_frames) bool: frame t is real audio when it starts inside the example
  (t * HOP < length), so ceil(length / HOP) frames are valid, capped at num_frames."""
  t_T = jnp.arange(num_frames, dtype=jnp.int32) * HOP
  return t_T[None, :] < jnp.asarray(audio_lengths_B, jnp.int32)[:, None]
