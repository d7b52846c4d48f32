"""Attention maths shared by every transformer in fmjax: masks, rotary positions, the kernel.

Layout everywhere is (batch, time, heads, head_dim), the layout `jax.nn.dot_product_attention`
takes. Masks are boolean, True where a query may attend to a key, shaped (B, 1, T, S) so one
mask serves all heads.
"""

from typing import Optional

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def resolve_implementation(name: str) -> str:
  """'auto' picks cuDNN's fused kernel on GPUs (an order of magnitude faster than XLA's at
  GPT-2 sizes) and XLA elsewhere; cuDNN raises on CPU and TPU, so it is never the default there."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {name!r}: choose one of {IMPLEMENTATIONS}")
  if name == "auto":
    return "cudnn" if jax.default_backend() == "gpu" else "xla"
  return name


def segment_mask(query_segments_BxT: jax.Array, key_segments_BxS: jax.Array) -> jax.Array:
  """Queries see keys of their own packed document only; segment 0 is padding and sees nothing."""
  same_BxTxS = query_segments_BxT[:, :, None] == key_segments_BxS[:, None, :]
  valid_BxTxS = same_BxTxS & (key_segments_BxS[:, None, :] > 0)
  return valid_BxTxS[:, None]


def causal_mask(query_positions_BxT: jax.Array, key_positions_BxS: jax.Array) -> jax.Array:
  """Query at slot t sees keys at slots <= t (slots, not document positions)."""
  return (key_positions_BxS[:, None, :] <= query_positions_BxT[:, :, None])[:, None]


def rotary(x_BxTxHxDh: jax.Array, positions_BxT: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (RoPE), half-split convention, computed in float32."""
  head_dim = x_BxTxHxDh.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary positions need an even head dimension, got {head_dim}")
  half = head_dim // 2
  inv_freq_F = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * inv_freq_F
  sin_BxTx1xF = jnp.sin(angles_BxTxF)[:, :, None, :]
  cos_BxTx1xF = jnp.cos(angles_BxTxF)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxHxDh.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_BxTx1xF - x2 * sin_BxTx1xF, x2 * cos_BxTx1xF + x1 * sin_BxTx1xF], -1)
  return rotated.astype(x_BxTxHxDh.dtype)


def attend(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, *, mask: Optional[jax.Array], is_causal: bool,
           implementation: str) -> jax.Array:
  """Scaled dot-product attention; the result has the query's shape and dtype."""
  implementation = resolve_implementation(implementation)
  if implementation == "cudnn" and q_BxTxHxDh.dtype == jnp.float32:
    implementation = "xla"  # cuDNN's fused kernel is half precision only
  bias = None
  if implementation == "cudnn" and mask is not None:
    # The fused kernel takes an additive bias for arbitrary (e.g. per-document) masks.
    bias = jnp.where(mask, 0.0, -1e9).astype(q_BxTxHxDh.dtype)
    mask = None
  return jax.nn.dot_product_attention(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, bias=bias, mask=mask,
                                      is_causal=is_causal, implementation=implementation)
