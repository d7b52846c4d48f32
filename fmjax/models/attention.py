"""Attention maths shared by every transformer in fmjax: masks, rotary positions, the kernel.

Layout everywhere is (batch, time, heads, head_dim), the layout `jax.nn.dot_product_attention`
takes. Masks are boolean, True where a query may attend to a key, shaped (B, 1, T, S) so one
mask serves all heads.
"""

from typing import Optional

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "einsum", "cudnn")


def resolve_implementation(name: str) -> str:
  """'auto' picks cuDNN's fused kernel on GPUs (an order of magnitude faster than XLA's at
  GPT-2 sizes), fmjax's own heads-major einsums on CPU (`attend_einsum`: 2.7x jax's XLA path
  forward + backward at the tiny GPT's sizes on 2 cores), and jax's XLA path on TPU. cuDNN raises
  on CPU and TPU, so it is never the default there. The platform is that of the mesh in use
  (`jax.set_mesh`), so a step compiled ahead of time for TPU chips on a CPU host (fmjax.aot)
  gets the TPU's choice; without a mesh, jax's default backend."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {name!r}: choose one of {IMPLEMENTATIONS}")
  if name == "auto":
    return {"gpu": "cudnn", "cpu": "einsum"}.get(_target_platform(), "xla")
  return name


def _target_platform() -> str:
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return getattr(device, "platform", None) or jax.default_backend()


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


# cuDNN's fused kernels reject some lengths (odd ones with a bias in training, for instance a ViT's
# 197 tokens); padding to a multiple of this keeps every length on the fused path.
CUDNN_LENGTH_MULTIPLE = 64


def attend(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, *, mask: Optional[jax.Array], is_causal: bool,
           implementation: str) -> jax.Array:
  """Scaled dot-product attention; the result has the query's shape and dtype."""
  implementation = resolve_implementation(implementation)
  if implementation == "cudnn" and q_BxTxHxDh.dtype == jnp.float32:
    implementation = "xla"  # cuDNN's fused kernel is half precision only
  if implementation == "cudnn":
    return attend_padded(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask=mask, is_causal=is_causal,
                         implementation="cudnn", multiple=CUDNN_LENGTH_MULTIPLE)
  if implementation == "einsum":
    return attend_einsum(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask=mask, is_causal=is_causal)
  return jax.nn.dot_product_attention(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask=mask, is_causal=is_causal,
                                      implementation=implementation)


# What masked scores become: finite, so a query that may see no key at all (padding) gets a
# uniform average instead of NaN, as in jax.nn.dot_product_attention.
_MASKED_SCORE = -0.7 * float(jnp.finfo(jnp.float32).max)


# Causal attention on the einsum path splits the queries into blocks of this many, each scoring
# only the keys up to its own end: at 128 tokens (two blocks) a quarter of the scores and their
# softmax are never computed, and the tiny GPT's attention runs 1.7x faster forward + backward on
# 2 CPU cores. Smaller blocks skip more but make more, smaller matmuls (32 measured no faster).
CAUSAL_QUERY_BLOCK = 64


def attend_einsum(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, *, mask: Optional[jax.Array], is_causal: bool,
                  query_block: int = CAUSAL_QUERY_BLOCK) -> jax.Array:
  """The same maths as jax.nn.dot_product_attention (scores and softmax in float32, scale
  1/sqrt(head_dim), `is_causal` lets query t see keys 0..t), laid out heads-major (B, H, T, Dh)
  before the two batched matmuls and with the scale folded into the queries. On XLA:CPU the
  library's layout makes every batched matmul and its gradient go through transposed copies.

  Masked scores get a large negative bias added (cheaper on XLA:CPU than selecting them, and
  the same result: next to the bias a score is below float32's resolution). Causal self-attention
  runs in query blocks of `query_block` that skip the keys no query of theirs may see; a query
  that may see no key at all then averages the values up to its block's end rather than all of
  them (its output is padding either way, and training gives it no weight). Each block's
  softmax attention has its gradient written out (`_softmax_attention`)."""
  head_dim, t, s = q_BxTxHxDh.shape[-1], q_BxTxHxDh.shape[1], k_BxSxHxDh.shape[1]
  q_BxHxTxDh = jnp.swapaxes(q_BxTxHxDh * jnp.asarray(head_dim ** -0.5, q_BxTxHxDh.dtype), 1, 2)
  k_BxHxSxDh, v_BxHxSxDh = jnp.swapaxes(k_BxSxHxDh, 1, 2), jnp.swapaxes(v_BxSxHxDh, 1, 2)
  if mask is not None:
    mask = jnp.broadcast_to(mask, mask.shape[:-2] + (t, s))
    if is_causal:
      mask = mask & jnp.tril(jnp.ones((t, s), bool))
    # Under an additive bias a query that may see no key (padding) would pass gradients to q and
    # k through its uniform softmax, where the library's select passes none; a zeroed query keeps
    # the same uniform average and passes none.
    q_BxHxTxDh = jnp.where(mask.any(-1, keepdims=True), q_BxHxTxDh, 0)
  skip_future = is_causal and t == s
  ends = range(query_block, t, query_block) if skip_future else ()
  blocks = list(zip((0, *ends), (*ends, t)))
  outs = []
  for start, end in blocks:
    keys = end if skip_future else s  # keys past a block's last query are all in its future
    if mask is not None:
      block_mask = mask[..., start:end, :keys]
    else:
      block_mask = jnp.tril(jnp.ones((end - start, keys), bool), k=start) if is_causal else None
    bias = None if block_mask is None else jnp.where(block_mask, 0.0, _MASKED_SCORE)
    outs.append(_softmax_attention(q_BxHxTxDh[:, :, start:end], k_BxHxSxDh[:, :, :keys],
                                   v_BxHxSxDh[:, :, :keys], bias))
  out_BxHxTxDh = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return jnp.swapaxes(out_BxHxTxDh, 1, 2).astype(q_BxTxHxDh.dtype)


def _probabilities(q_BxHxTxDh, k_BxHxSxDh, bias):
  scores_BxHxTxS = jnp.einsum("bhtd,bhsd->bhts", q_BxHxTxDh, k_BxHxSxDh, preferred_element_type=jnp.float32)
  if bias is not None:
    scores_BxHxTxS = scores_BxHxTxS + bias
  return jax.nn.softmax(scores_BxHxTxS, axis=-1)


def _transposed_product(a_BxHxTxM, b_BxHxTxN):
  """einsum('bhtm,bhtn->bhmn') as a dot whose left operand contracts its minor dimension.

  Left alone, XLA folds any transpose into the dot's dimension numbers, so the left operand
  contracts over its major dimension; XLA:CPU's fast matmul library (YNNPACK) rejects that form
  and its fallback runs these attention-gradient matmuls 2-3x slower. The barriers keep the
  transposed copy of `a` and the (M, N) product as written. Elsewhere they only fix the order."""
  a_BxHxMxT = jax.lax.optimization_barrier(jnp.swapaxes(a_BxHxTxM, 2, 3))
  return jax.lax.optimization_barrier(jnp.einsum("bhmt,bhtn->bhmn", a_BxHxMxT, b_BxHxTxN))


@jax.custom_vjp
def _softmax_attention(q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, bias):
  """softmax(q k^T + bias) v for queries already scaled, heads-major; `bias` (broadcastable to
  (B, H, T, S), float32) or None. The gradient is written out (`_softmax_attention_bwd`)."""
  return _softmax_attention_fwd(q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, bias)[0]


def _softmax_attention_fwd(q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, bias):
  probs_BxHxTxS = _probabilities(q_BxHxTxDh, k_BxHxSxDh, bias)
  out_BxHxTxDh = jnp.einsum("bhts,bhsd->bhtd", probs_BxHxTxS.astype(v_BxHxSxDh.dtype), v_BxHxSxDh)
  return out_BxHxTxDh, (q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, bias, probs_BxHxTxS, out_BxHxTxDh)


def _softmax_attention_bwd(residuals, d_out_BxHxTxDh):
  """The softmax gradient P * (dP - rowsum(dP * P)) with the row sum taken as rowsum(dO * O)
  (the two are equal): a reduction over head_dim instead of over every key, as flash attention
  does. The two products that contract over queries go through `_transposed_product`."""
  q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, bias, probs_BxHxTxS, out_BxHxTxDh = residuals
  dtype = q_BxHxTxDh.dtype
  d_probs_BxHxTxS = jnp.einsum("bhtd,bhsd->bhts", d_out_BxHxTxDh, v_BxHxSxDh, preferred_element_type=jnp.float32)
  row_BxHxTx1 = jnp.sum(d_out_BxHxTxDh.astype(jnp.float32) * out_BxHxTxDh.astype(jnp.float32), -1, keepdims=True)
  d_scores_BxHxTxS = (probs_BxHxTxS * (d_probs_BxHxTxS - row_BxHxTx1)).astype(dtype)
  d_q_BxHxTxDh = jnp.einsum("bhts,bhsd->bhtd", d_scores_BxHxTxS, k_BxHxSxDh)
  d_k_BxHxSxDh = jnp.swapaxes(_transposed_product(q_BxHxTxDh, d_scores_BxHxTxS), 2, 3)
  d_v_BxHxSxDh = jnp.swapaxes(_transposed_product(d_out_BxHxTxDh, probs_BxHxTxS.astype(dtype)), 2, 3)
  d_bias = None if bias is None else jnp.zeros_like(bias)  # masks are data: nothing flows back
  return d_q_BxHxTxDh, d_k_BxHxSxDh, d_v_BxHxSxDh, d_bias


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def attend_padded(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, *, mask: Optional[jax.Array], is_causal: bool,
                  implementation: str, multiple: int) -> jax.Array:
  """Attention with the query and key lengths padded up to `multiple`; padded keys are never
  attended to (sequence lengths, or False in the mask), padded queries are cut off. A mask
  becomes an additive bias, the form the fused kernel takes for arbitrary masks."""
  (b, t), s = q_BxTxHxDh.shape[:2], k_BxSxHxDh.shape[1]
  t_pad, s_pad = -t % multiple, -s % multiple
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0))) if n else x
  q, k, v = pad(q_BxTxHxDh, t_pad), pad(k_BxSxHxDh, s_pad), pad(v_BxSxHxDh, s_pad)
  bias, lengths = None, {}
  if mask is not None:
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, t_pad), (0, s_pad)))  # padding: False
    bias = jnp.where(mask, 0.0, -1e9).astype(q.dtype)
  elif t_pad or s_pad:
    lengths = {"query_seq_lengths": jnp.full((b,), t, jnp.int32),
               "key_value_seq_lengths": jnp.full((b,), s, jnp.int32)}
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=is_causal, implementation=implementation,
                                     **lengths)
  return out[:, :t]
