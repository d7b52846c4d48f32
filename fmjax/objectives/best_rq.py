"""BEST-RQ's targets and masking (Chiu et al., 2022), as pure functions on the device.

    feats -> normalize_features -> stack_frames -> quantize(projection, codebook) -> codes_BxU
    valid units -> span_mask -> fill_masked(feats)  -> the encoder's input

* Normalisation: per utterance and per mel bin, over the valid frames. The paper calls it
  critical: without it the random projection would mostly see loudness and the channel's
  spectral tilt rather than what changes from frame to frame.
* Stacking: `stack` consecutive frames (the encoder's subsampling factor) make one unit, so there
  is one target per encoder output.
* Quantiser: a random projection to a few dimensions and the nearest of a random codebook, both
  l2-normalised, so the code depends only on the direction of the projected vector (targets do
  not change if the input is scaled). Nearest in l2 between unit vectors is the largest dot
  product, one matmul and an argmax. The quantiser is FROZEN: `make_quantizer` regenerates it
  in NumPy from a seed wherever the loss is traced; it is never a parameter, never stored, and
  the same at every step, after a resume and on every host. The projection and the codebook
  come from independent child seeds, so changing the codebook size leaves the projection alone.
  Both products run at full float32 precision: on a TPU a bf16 matmul would flip near-ties and
  make the targets depend on the platform.
* Masking: each valid unit starts a span with probability `prob`; a span covers `span` units
  (overlapping spans merge, spans stop at the padding). An example with valid units but no
  span drawn gets one span at a random place, so its loss is always defined. Masked units'
  input frames are replaced by N(0, noise_std) noise, as the paper does (not a learned vector).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZE_EPS = 1e-5   # added to the variance: a constant bin (e.g. clamped silence) maps to 0
HIGHEST = jax.lax.Precision.HIGHEST


def normalize_features(feats_BxTxM: jax.Array, frame_mask_BxT: jax.Array) -> jax.Array:
  """Per utterance and mel bin: (x - mean) / std over the valid frames; padding frames become 0."""
  valid_BxTx1 = frame_mask_BxT.astype(jnp.float32)[:, :, None]
  feats = feats_BxTxM.astype(jnp.float32)
  count_Bx1x1 = jnp.maximum(valid_BxTx1.sum(axis=1, keepdims=True), 1.0)
  mean_Bx1xM = (feats * valid_BxTx1).sum(axis=1, keepdims=True) / count_Bx1x1
  centered_BxTxM = (feats - mean_Bx1xM) * valid_BxTx1
  var_Bx1xM = jnp.square(centered_BxTxM).sum(axis=1, keepdims=True) / count_Bx1x1
  return centered_BxTxM * jax.lax.rsqrt(var_Bx1xM + NORMALIZE_EPS)


def _check_stack(stack: int) -> None:
  if int(stack) < 1:
    raise ValueError(f"best_rq stack={stack}: must be >= 1 (frames per encoder unit)")


def stack_frames(feats_BxTxM: jax.Array, stack: int) -> jax.Array:
  """(B, T, M) -> (B, T // stack, stack * M): each unit is its frames' features side by side,
  frame by frame; trailing frames that do not fill a unit are dropped."""
  _check_stack(stack)
  b, t, m = feats_BxTxM.shape
  u = t // stack
  return feats_BxTxM[:, :u * stack].reshape(b, u, stack * m)


def stack_mask(frame_mask_BxT: jax.Array, stack: int) -> jax.Array:
  """(B, T) -> (B, T // stack) bool: a unit is valid when all its frames are."""
  _check_stack(stack)
  b, t = frame_mask_BxT.shape
  u = t // stack
  return frame_mask_BxT[:, :u * stack].astype(bool).reshape(b, u, stack).all(axis=-1)


def make_quantizer(seed: int, input_dim: int, proj_dim: int = 16,
                   codebook_size: int = 8192) -> Tuple[np.ndarray, np.ndarray]:
  """(projection (input_dim, proj_dim), codebook (codebook_size, proj_dim)) float32 NumPy arrays,
  a pure function of the arguments: a Xavier-uniform projection and standard-normal codebook
  rows scaled to unit length."""
  for name, value, least in (("seed", seed, 0), ("input_dim", input_dim, 1), ("proj_dim", proj_dim, 1),
                             ("codebook_size", codebook_size, 1)):
    if int(value) < least:
      raise ValueError(f"best_rq.make_quantizer {name}={value}: must be >= {least}")
  rng_projection, rng_codebook = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
  limit = np.sqrt(6.0 / (input_dim + proj_dim))
  projection_FxP = rng_projection.uniform(-limit, limit, (input_dim, proj_dim))
  codebook_KxP = rng_codebook.standard_normal((codebook_size, proj_dim))
  codebook_KxP /= np.linalg.norm(codebook_KxP, axis=1, keepdims=True)
  return projection_FxP.astype(np.float32), codebook_KxP.astype(np.float32)


def _unit_rows(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))


def quantize(stacked_BxUxF: jax.Array, projection_FxP: jax.Array, codebook_KxP: jax.Array) -> jax.Array:
  """(B, U) int32: the index of the codebook row nearest (in l2, after both are l2-normalised)
  to each unit's projection. The (B, U, K) similarities exist transiently (16 x 750 x 8192
  float32 is 0.4 GB for 30 s at batch 16, stack 4): fine on an accelerator."""
  if stacked_BxUxF.shape[-1] != projection_FxP.shape[0]:
    raise ValueError(f"best_rq.quantize: units have {stacked_BxUxF.shape[-1]} features but the projection "
                     f"expects {projection_FxP.shape[0]} (stack * num_mels)")
  if projection_FxP.shape[1] != codebook_KxP.shape[1]:
    raise ValueError(f"best_rq.quantize: projection gives {projection_FxP.shape[1]} dims, codebook rows have "
                     f"{codebook_KxP.shape[1]}")
  projected_BxUxP = jnp.einsum("buf,fp->bup", stacked_BxUxF.astype(jnp.float32),
                               jnp.asarray(projection_FxP, jnp.float32), precision=HIGHEST)
  codebook_KxP = _unit_rows(jnp.asarray(codebook_KxP, jnp.float32))
  similarity_BxUxK = jnp.einsum("bup,kp->buk", _unit_rows(projected_BxUxP), codebook_KxP, precision=HIGHEST)
  return jnp.argmax(similarity_BxUxK, axis=-1).astype(jnp.int32)


def _window_any(x_BxU: jax.Array, span: int) -> jax.Array:
  """(B, U) bool: any x in [u - span + 1, u] (each true x covers itself and the span - 1 after)."""
  c_BxU = jnp.cumsum(x_BxU.astype(jnp.int32), axis=1)
  before_BxU = jnp.pad(c_BxU, ((0, 0), (span, 0)))[:, :x_BxU.shape[1]]
  return (c_BxU - before_BxU) > 0


def span_mask(rng: jax.Array, valid_BxU: jax.Array, *, prob: float, span: int) -> jax.Array:
  """(B, U) bool: the units to mask (see module doc); never a padding unit, at least one unit
  in every example that has a valid one."""
  if not 0.0 <= float(prob) <= 1.0:
    raise ValueError(f"best_rq.span_mask prob={prob}: must be in [0, 1]")
  if int(span) < 1:
    raise ValueError(f"best_rq.span_mask span={span}: must be >= 1")
  valid_BxU = valid_BxU.astype(bool)
  b, u = valid_BxU.shape
  rng_starts, rng_fallback = jax.random.split(rng)
  starts_BxU = (jax.random.uniform(rng_starts, (b, u)) < prob) & valid_BxU
  masked_BxU = _window_any(starts_BxU, span) & valid_BxU

  # The fallback span starts at a random unit from which a whole span of valid units follows;
  # where none does (an example shorter than a span), at the first valid unit.
  valid_ahead_BxV = jnp.pad(valid_BxU.astype(jnp.int32), ((0, 0), (1, span)))
  c_BxV = jnp.cumsum(valid_ahead_BxV, axis=1)
  fits_BxU = (c_BxV[:, span:span + u] - c_BxV[:, :u]) == span
  first_BxU = jax.nn.one_hot(jnp.argmax(valid_BxU, axis=1), u, dtype=bool)
  candidates_BxU = jnp.where(fits_BxU.any(axis=1, keepdims=True), fits_BxU, first_BxU)
  scores_BxU = jnp.where(candidates_BxU, jax.random.uniform(rng_fallback, (b, u)), -1.0)
  start_Bx1 = jnp.argmax(scores_BxU, axis=1)[:, None]
  positions_1xU = jnp.arange(u)[None, :]
  fallback_BxU = (positions_1xU >= start_Bx1) & (positions_1xU < start_Bx1 + span) & valid_BxU
  needs_B = valid_BxU.any(axis=1) & ~masked_BxU.any(axis=1)
  return masked_BxU | (fallback_BxU & needs_B[:, None])


def fill_masked(feats_BxTxM: jax.Array, unit_mask_BxU: jax.Array, stack: int, rng: jax.Array,
                noise_std: float = 0.1) -> jax.Array:
  """The encoder's input: every frame of a masked unit replaced by N(0, noise_std^2) noise; other
  frames (and the trailing frames past the last whole unit) unchanged."""
  _check_stack(stack)
  if float(noise_std) < 0:
    raise ValueError(f"best_rq.fill_masked noise_std={noise_std}: must be >= 0")
  b, t, _ = feats_BxTxM.shape
  u = unit_mask_BxU.shape[1]
  if u * stack > t:
    raise ValueError(f"best_rq.fill_masked: {u} units of {stack} frames exceed the {t} frames of feats_BxTxM")
  frames_BxT = jnp.repeat(unit_mask_BxU.astype(bool), stack, axis=1)
  frames_BxT = jnp.pad(frames_BxT, ((0, 0), (0, t - u * stack)))
  noise = noise_std * jax.random.normal(rng, feats_BxTxM.shape, jnp.float32)
  return jnp.where(frames_BxT[:, :, None], noise.astype(feats_BxTxM.dtype), feats_BxTxM)
