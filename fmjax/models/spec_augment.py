"""SpecAugment (Park et al., 2019) on log-mel features: frequency and time masking, on the device.

Per example, `freq_masks` bands of mel bins and `time_masks` spans of frames are overwritten.
Each width is drawn uniformly from [0, max width] (so a mask may be empty), and each start
uniformly among the positions where the whole mask fits: mel bins for a band, the example's
valid frames for a span (a span never reaches into padding, and is cut to the valid length when
the example is shorter than the width). Padding frames are never touched.

Masked values become the example's mean over its valid frames and bins, not 0. With
per-utterance normalised features the two coincide (the mean is 0); with raw Whisper log-mel,
0 means log10 power -4, a fairly loud level, while the mean is what the example looks like on
average, so a mask reads as "no information" rather than as a burst of broadband sound.
Time warping is left out: the paper found it contributes least of the three, at the most cost.

Shapes are static (masks are comparisons against drawn bounds, never dynamic slices), so it
jits once, and the result is a function of the rng alone.
"""

import jax
import jax.numpy as jnp


def _check(name: str, value: int) -> None:
  if int(value) < 0:
    raise ValueError(f"spec_augment {name}={value}: must be >= 0")


def _intervals(rng: jax.Array, count: int, max_width: int, room_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(start, end) each (B, count) int32: widths uniform in [0, max_width] cut to `room`, starts
  uniform among the positions in [0, room - width]."""
  b = room_B.shape[0]
  rng_width, rng_start = jax.random.split(rng)
  width_BxC = jax.random.randint(rng_width, (b, count), 0, max_width + 1)
  width_BxC = jnp.minimum(width_BxC, room_B[:, None])
  start_BxC = jax.random.randint(rng_start, (b, count), 0, room_B[:, None] - width_BxC + 1)
  return start_BxC, start_BxC + width_BxC


def _covered(positions: jax.Array, start_BxC: jax.Array, end_BxC: jax.Array) -> jax.Array:
  """(B, len(positions)) bool: the position lies in any of the example's intervals."""
  p = positions[None, :, None]
  return jnp.any((p >= start_BxC[:, None, :]) & (p < end_BxC[:, None, :]), axis=-1)


def spec_augment(feats_BxTxM: jax.Array, frame_mask_BxT: jax.Array, rng: jax.Array, *, freq_masks: int,
                 freq_width: int, time_masks: int, time_width: int) -> jax.Array:
  """Features with frequency bands and time spans set to each example's mean (see module doc)."""
  for name, value in (("freq_masks", freq_masks), ("freq_width", freq_width), ("time_masks", time_masks),
                      ("time_width", time_width)):
    _check(name, value)
  b, t, m = feats_BxTxM.shape
  if frame_mask_BxT.shape != (b, t):
    raise ValueError(f"spec_augment frame_mask_BxT: expected shape {(b, t)}, got {frame_mask_BxT.shape}")
  valid_BxT = frame_mask_BxT.astype(bool)
  rng_freq, rng_time = jax.random.split(rng)

  bands_BxM = jnp.zeros((b, m), bool)
  if freq_masks and freq_width:
    start, end = _intervals(rng_freq, freq_masks, freq_width, jnp.full((b,), m, jnp.int32))
    bands_BxM = _covered(jnp.arange(m), start, end)
  spans_BxT = jnp.zeros((b, t), bool)
  if time_masks and time_width:
    # Valid frames are a prefix (the audio is padded at its end): spans stay inside it.
    length_B = valid_BxT.sum(axis=1).astype(jnp.int32)
    start, end = _intervals(rng_time, time_masks, time_width, length_B)
    spans_BxT = _covered(jnp.arange(t), start, end)

  masked_BxTxM = (bands_BxM[:, None, :] | spans_BxT[:, :, None]) & valid_BxT[:, :, None]
  weights_BxTx1 = valid_BxT[:, :, None].astype(feats_BxTxM.dtype)
  count_B = jnp.maximum(weights_BxTx1.sum(axis=(1, 2)) * m, 1.0)
  mean_B = (feats_BxTxM * weights_BxTx1).sum(axis=(1, 2)) / count_B
  return jnp.where(masked_BxTxM, mean_B[:, None, None].astype(feats_BxTxM.dtype), feats_BxTxM)
