"""Transformer blocks shared by every paradigm: pre-LayerNorm attention + MLP, stacked.

GPT stacks them with a causal mask, BERT and the ViT/text towers without one. Every parameter
carries logical axis names ('embed', 'mlp', 'heads', 'kv', 'vocab', 'layers'); the mapping of
those names onto the device mesh lives in `fmjax.parallel` and nowhere else.

Blocks are applied functionally (split / merge around `jax.lax.scan` and `jax.checkpoint`), so
scan-over-layers, rematerialisation and the KV cache are plain JAX, with no module state.

With `adaln=True` (the DiT denoiser) each block is conditioned by adaLN-Zero: a zero-initialised
Dense of SiLU(condition) gives a shift, scale and gate per branch; the LayerNorms lose their own
affine parameters (the per-example shift and scale replace them) and every block starts as the
identity, since all its gates are zero.

With `cross_attention=True` (a decoder reading an encoder, as in Whisper) each block gains a
third, pre-LN sublayer between self-attention and the MLP: queries from the block's input,
keys and values from `context_BxSxD` (the encoder's output), a key mask from
`context_mask_BxS`, no causal mask and no rotary positions (the context carries its own). For
decoding, the context's keys and values are computed once per layer and kept in the caches
next to the self-attention ones, so each new token costs one query projection per layer.
"""

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax import parallel
from fmjax.models import attention

REMAT_POLICIES = ("none", "full", "dots")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class StackConfig:
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: str = "float32"            # compute dtype; parameters are always float32
  attention: str = "auto"
  rotary: bool = False
  scan_layers: bool = False
  remat: str = "none"
  adaln: bool = False               # adaLN-Zero conditioning: blocks take condition_BxD
  cross_attention: bool = False     # blocks also attend to a context (an encoder's output)

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


def param(rngs: nnx.Rngs, init, shape, names) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape))


def dense(x: jax.Array, w: jax.Array, in_dims: int = 1) -> jax.Array:
  """Contracts the last `in_dims` axes of x with the first `in_dims` of w, as ONE 2-D matmul:
  (B, T, ...in) x (...in, ...out) -> (B, T, ...out), with batch and time flattened into rows.

  The same product as the einsum, but its weight gradient is then a plain (in, rows) x (rows, out)
  matmul. Written as an einsum over (B, T), the gradient contracts two axes at once, and XLA:CPU
  first copied the activations into a transposed layout (about 6% of the tiny GPT's step on 2
  cores, gone this way). GPUs and TPUs see the same matmul either way."""
  lead, inner = x.shape[:x.ndim - in_dims], x.shape[x.ndim - in_dims:]
  if tuple(w.shape[:in_dims]) != tuple(inner):
    raise ValueError(f"dense: x's last {in_dims} dims {inner} do not match w's first {tuple(w.shape[:in_dims])}")
  out = w.shape[in_dims:]
  rows = int(np.prod(lead))
  y = x.reshape(rows, int(np.prod(inner))) @ w.reshape(int(np.prod(inner)), int(np.prod(out)))
  return y.reshape(*lead, *out)


def embed_lookup(table_VxD: jax.Array, ids: jax.Array, dtype) -> jax.Array:
  """Rows of an embedding table for `ids`. The table is gathered whole along its feature dim:
  a gather from a table sharded that way makes XLA replicate it anyway, less efficiently."""
  table_VxD = parallel.constrain(table_VxD, ("vocab", "act_embed"))
  return jnp.take(table_VxD, ids, axis=0).astype(dtype)


def dropout(x: jax.Array, rate: float, rng: Optional[jax.Array]) -> jax.Array:
  """Inverted dropout; a None rng means deterministic (evaluation, generation)."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class LayerNorm(nnx.Module):
  def __init__(self, dim: int, rngs: nnx.Rngs, eps: float = 1e-6, affine: bool = True):
    if affine:
      self.scale = param(rngs, nnx.initializers.ones, (dim,), (None,))
      self.bias = param(rngs, nnx.initializers.zeros, (dim,), (None,))
    self.affine = affine
    self.eps = eps

  @jax.named_scope("layernorm")
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    # Statistics in float32 even under bf16 compute: cheap, and keeps small-variance rows stable.
    x32 = x_BxTxD.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.affine:
      y = y * self.scale[...] + self.bias[...]
    return y.astype(x_BxTxD.dtype)


class AdaLNModulation(nnx.Module):
  """SiLU(condition) -> a zero-initialised Dense to `parts` vectors of width D (shifts, scales,
  gates). Zeros make every modulated LayerNorm a plain one and every gated branch vanish at init."""

  def __init__(self, dim: int, parts: int, rngs: nnx.Rngs):
    self.kernel = param(rngs, nnx.initializers.zeros, (dim, parts * dim), ("embed", "mlp"))
    self.bias = param(rngs, nnx.initializers.zeros, (parts * dim,), (None,))
    self.parts = parts

  def __call__(self, condition_BxD: jax.Array, dtype) -> list[jax.Array]:
    c_BxD = jax.nn.silu(condition_BxD.astype(dtype))
    out_BxPD = c_BxD @ self.kernel[...].astype(dtype) + self.bias[...].astype(dtype)
    # Batch-sharded and whole along the features, as the activations these vectors scale. Left to
    # itself, XLA (jax 0.10.2, CPU, a (2, 2, 2) mesh) mixed up batch rows in the attention after
    # the modulated LayerNorm; tests/test_diffusion_models.py compares sharded with one device.
    out_BxPD = parallel.constrain(out_BxPD, ("batch", "act_embed"))
    return jnp.split(out_BxPD, self.parts, axis=-1)


def modulate(x_BxTxD: jax.Array, shift_BxD: Optional[jax.Array], scale_BxD: Optional[jax.Array]) -> jax.Array:
  """x * (1 + scale) + shift per example (scale centred on 1, so zeros are the identity); None:
  no adaLN, x as it is."""
  if shift_BxD is None:
    return x_BxTxD
  return x_BxTxD * (1 + scale_BxD[:, None]) + shift_BxD[:, None]


def _gate(y_BxTxD: jax.Array, gate_BxD: Optional[jax.Array]) -> jax.Array:
  return y_BxTxD if gate_BxD is None else y_BxTxD * gate_BxD[:, None]


class SelfAttention(nnx.Module):
  def __init__(self, cfg: StackConfig, rngs: nnx.Rngs):
    d, h, dh = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    init = nnx.initializers.normal(0.02)
    # Residual projections scaled by 1/sqrt(2 * layers), as in GPT-2.
    out_init = nnx.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    self.query = param(rngs, init, (d, h, dh), ("embed", "heads", "kv"))
    self.key = param(rngs, init, (d, h, dh), ("embed", "heads", "kv"))
    self.value = param(rngs, init, (d, h, dh), ("embed", "heads", "kv"))
    self.query_bias = param(rngs, nnx.initializers.zeros, (h, dh), ("heads", "kv"))
    self.key_bias = param(rngs, nnx.initializers.zeros, (h, dh), ("heads", "kv"))
    self.value_bias = param(rngs, nnx.initializers.zeros, (h, dh), ("heads", "kv"))
    self.out = param(rngs, out_init, (h, dh, d), ("heads", "kv", "embed"))
    self.out_bias = param(rngs, nnx.initializers.zeros, (d,), (None,))
    self.cfg = cfg

  def __call__(self, x_BxTxD, *, positions_BxT, mask, is_causal, cache=None, cache_index=None):
    cfg, dt = self.cfg, x_BxTxD.dtype
    project = jax.named_scope("attention_projections")(lambda w, b: dense(x_BxTxD, w[...].astype(dt)) + b[...].astype(dt))
    q_BxTxHxDh = project(self.query, self.query_bias)
    k_BxTxHxDh = project(self.key, self.key_bias)
    v_BxTxHxDh = project(self.value, self.value_bias)
    if cfg.rotary:
      q_BxTxHxDh = attention.rotary(q_BxTxHxDh, positions_BxT)
      k_BxTxHxDh = attention.rotary(k_BxTxHxDh, positions_BxT)
    if cache is not None:
      # Decoding: write this step's keys/values at slot `cache_index`, attend over the cache.
      k_BxSxHxDh = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BxTxHxDh.astype(cache["k"].dtype), cache_index, 1)
      v_BxSxHxDh = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BxTxHxDh.astype(cache["v"].dtype), cache_index, 1)
      cache = {"k": k_BxSxHxDh, "v": v_BxSxHxDh}
      k_BxTxHxDh, v_BxTxHxDh = k_BxSxHxDh.astype(dt), v_BxSxHxDh.astype(dt)
    with jax.named_scope("attention"):
      y_BxTxHxDh = attention.attend(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh, mask=mask,
                                    is_causal=is_causal, implementation=cfg.attention)
    with jax.named_scope("attention_projections"):
      y_BxTxD = dense(y_BxTxHxDh, self.out[...].astype(dt), in_dims=2) + self.out_bias[...].astype(dt)
    return y_BxTxD, cache


class CrossAttention(SelfAttention):
  """Queries from x, keys and values from a context: the same parameters as self-attention
  (the key/value projections read the context, so it must have the stack's width)."""

  def context_kv(self, context_BxSxD: jax.Array) -> dict:
    """The context's keys and values (B, S, H, Dh) in the compute dtype: what decoding caches."""
    dt = self.cfg.compute_dtype
    context_BxSxD = context_BxSxD.astype(dt)
    project = lambda w, b: dense(context_BxSxD, w[...].astype(dt)) + b[...].astype(dt)
    return {"cross_k": project(self.key, self.key_bias), "cross_v": project(self.value, self.value_bias)}

  def __call__(self, x_BxTxD, *, kv, mask):
    dt = x_BxTxD.dtype
    q_BxTxHxDh = dense(x_BxTxD, self.query[...].astype(dt)) + self.query_bias[...].astype(dt)
    y_BxTxHxDh = attention.attend(q_BxTxHxDh, kv["cross_k"].astype(dt), kv["cross_v"].astype(dt), mask=mask,
                                  is_causal=False, implementation=self.cfg.attention)
    return dense(y_BxTxHxDh, self.out[...].astype(dt), in_dims=2) + self.out_bias[...].astype(dt)


def context_attention_mask(context_mask_BxS: Optional[jax.Array], queries: int) -> Optional[jax.Array]:
  """(B, S) key mask -> (B, 1, T, S), spelled out along T: the padded (cuDNN) path pads that axis."""
  if context_mask_BxS is None:
    return None
  b, s = context_mask_BxS.shape
  return jnp.broadcast_to(context_mask_BxS.astype(bool)[:, None, None, :], (b, 1, queries, s))


class Mlp(nnx.Module):
  def __init__(self, cfg: StackConfig, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    out_init = nnx.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    self.fc = param(rngs, init, (cfg.embed_dim, cfg.mlp_dim), ("embed", "mlp"))
    self.fc_bias = param(rngs, nnx.initializers.zeros, (cfg.mlp_dim,), ("mlp",))
    self.proj = param(rngs, out_init, (cfg.mlp_dim, cfg.embed_dim), ("mlp", "embed"))
    self.proj_bias = param(rngs, nnx.initializers.zeros, (cfg.embed_dim,), (None,))

  @jax.named_scope("mlp")
  def __call__(self, x_BxTxD):
    dt = x_BxTxD.dtype
    h_BxTxF = jax.nn.gelu(dense(x_BxTxD, self.fc[...].astype(dt)) + self.fc_bias[...].astype(dt), approximate=True)
    h_BxTxF = parallel.constrain(h_BxTxF, ("batch", "length", "mlp"))
    return dense(h_BxTxF, self.proj[...].astype(dt)) + self.proj_bias[...].astype(dt)


class Block(nnx.Module):
  """x + attn(ln(x)); x + mlp(ln(x)), with dropout on each residual branch.

  With adaLN: x + gate * attn(ln(x) * (1 + scale) + shift), likewise for the MLP, the six
  vectors computed from `condition_BxD`. With cross-attention: x + cross(ln(x), context) between
  the two, with its own dropout."""

  def __init__(self, cfg: StackConfig, rngs: nnx.Rngs):
    if cfg.cross_attention and cfg.adaln:
      raise ValueError("StackConfig: cross_attention=True with adaln=True is not supported (adaLN modulates "
                       "only the self-attention and MLP branches); choose one")
    self.ln_attn = LayerNorm(cfg.embed_dim, rngs, affine=not cfg.adaln)
    self.attn = SelfAttention(cfg, rngs)
    if cfg.cross_attention:
      self.ln_cross = LayerNorm(cfg.embed_dim, rngs)
      self.cross_attn = CrossAttention(cfg, rngs)
    else:
      self.ln_cross = self.cross_attn = None
    self.ln_mlp = LayerNorm(cfg.embed_dim, rngs, affine=not cfg.adaln)
    self.mlp = Mlp(cfg, rngs)
    self.modulation = AdaLNModulation(cfg.embed_dim, 6, rngs) if cfg.adaln else None
    self.rate = cfg.dropout

  def __call__(self, x_BxTxD, *, positions_BxT, mask, is_causal, dropout_rng=None, cache=None,
               cache_index=None, condition_BxD=None, context_BxSxD=None, context_mask_BxS=None):
    cross = self.cross_attn is not None
    if not cross and (context_BxSxD is not None or context_mask_BxS is not None):
      raise ValueError("context_BxSxD / context_mask_BxS given to a transformer block with cross_attention=False; "
                       "only cross-attention stacks (StackConfig.cross_attention=True) take a context")
    rng_attn, rng_cross, rng_mlp = None, None, None
    if dropout_rng is not None:
      # Two keys without cross-attention, as before it existed: the same dropout masks.
      rng_attn, rng_mlp, *rest = jax.random.split(dropout_rng, 3 if cross else 2)
      rng_cross = rest[0] if cross else None
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self._modulation(condition_BxD, x_BxTxD.dtype)
    self_cache = None if cache is None else {"k": cache["k"], "v": cache["v"]}
    y, self_cache = self.attn(modulate(self.ln_attn(x_BxTxD), shift_attn, scale_attn), positions_BxT=positions_BxT,
                              mask=mask, is_causal=is_causal, cache=self_cache, cache_index=cache_index)
    x_BxTxD = x_BxTxD + _gate(dropout(y, self.rate, rng_attn), gate_attn)
    if cross:
      kv = self._cross_kv(cache, context_BxSxD)
      y = self.cross_attn(self.ln_cross(x_BxTxD), kv=kv,
                          mask=context_attention_mask(context_mask_BxS, x_BxTxD.shape[1]))
      x_BxTxD = x_BxTxD + dropout(y, self.rate, rng_cross)
      if cache is not None:
        self_cache = {**self_cache, "cross_k": kv["cross_k"], "cross_v": kv["cross_v"]}
    y = self.mlp(modulate(self.ln_mlp(x_BxTxD), shift_mlp, scale_mlp))
    x_BxTxD = x_BxTxD + _gate(dropout(y, self.rate, rng_mlp), gate_mlp)
    return parallel.constrain(x_BxTxD, ("batch", "length", "act_embed")), self_cache

  def _cross_kv(self, cache, context_BxSxD) -> dict:
    """The context's keys and values: from the cache when decoding filled it, else projected now."""
    if cache is not None and "cross_k" in cache:
      return {"cross_k": cache["cross_k"], "cross_v": cache["cross_v"]}
    if context_BxSxD is None:
      raise ValueError("a cross-attention block (StackConfig.cross_attention=True) needs context_BxSxD, or caches "
                       "made with init_caches(..., context_BxSxD=...)")
    return self.cross_attn.context_kv(context_BxSxD)

  def _modulation(self, condition_BxD, dtype) -> list:
    """adaLN's six (B, D) vectors, or six Nones for a block without adaLN."""
    if self.modulation is None:
      if condition_BxD is not None:
        raise ValueError("condition_BxD given to a transformer block with adaln=False; only adaLN stacks "
                         "(StackConfig.adaln=True) take a condition")
      return [None] * 6
    if condition_BxD is None:
      raise ValueError("an adaLN block (StackConfig.adaln=True) needs condition_BxD, shape (batch, embed_dim)")
    return self.modulation(condition_BxD, dtype)


def _remat(fn, policy: str):
  if policy == "none":
    return fn
  if policy == "full":
    return jax.checkpoint(fn)
  if policy == "dots":
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  raise ValueError(f"remat policy {policy!r}: choose one of {REMAT_POLICIES}")


class TransformerStack(nnx.Module):
  """`num_layers` blocks, either as a list or stacked on a leading 'layers' axis for lax.scan
  (one compiled block instead of L copies: faster compiles for deep models)."""

  def __init__(self, cfg: StackConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_stacked(layer_rngs):
        return Block(cfg, layer_rngs)
      self.layers = make_stacked(rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])

  def __call__(self, x_BxTxD, *, positions_BxT, mask, is_causal, dropout_rng=None, caches=None,
               cache_index=None, condition_BxD=None, context_BxSxD=None, context_mask_BxS=None):
    """Returns (x, caches); `caches` is a list (or a stacked pytree under scan) of {'k','v'}
    (plus {'cross_k','cross_v'} in a cross-attention stack). `condition_BxD` (adaLN stacks
    only) and the context (cross-attention stacks only; True in `context_mask_BxS` where a
    context position may be attended to) are the same for every layer."""
    cfg = self.cfg
    layer_rngs = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)
    if context_BxSxD is not None:
      context_BxSxD = parallel.constrain(context_BxSxD, ("batch", "length", "act_embed"))

    def apply_block(graphdef, state, x, rng, cache):
      block = nnx.merge(graphdef, state)
      return block(x, positions_BxT=positions_BxT, mask=mask, is_causal=is_causal,
                   dropout_rng=rng, cache=cache, cache_index=cache_index, condition_BxD=condition_BxD,
                   context_BxSxD=context_BxSxD, context_mask_BxS=context_mask_BxS)

    if cfg.scan_layers:
      graphdef, stacked = nnx.split(self.layers)
      step = _remat(lambda x, xs: apply_block(graphdef, xs[0], x, xs[1], xs[2]), cfg.remat)
      return jax.lax.scan(step, x_BxTxD, (stacked, layer_rngs, caches))

    new_caches = []
    for i, block in enumerate(self.layers):
      graphdef, state = nnx.split(block)
      fn = _remat(lambda s, x, r, c, g=graphdef: apply_block(g, s, x, r, c), cfg.remat)
      x_BxTxD, cache = fn(state, x_BxTxD, None if layer_rngs is None else layer_rngs[i],
                          None if caches is None else caches[i])
      new_caches.append(cache)
    return x_BxTxD, (None if caches is None else new_caches)

  def init_caches(self, batch: int, length: int, dtype: Any, context_BxSxD: Optional[jax.Array] = None) -> Any:
    """Zeroed key/value caches for `length` slots, laid out as `__call__` expects them. A
    cross-attention stack given `context_BxSxD` also gets each layer's context keys and values,
    computed here once for the whole decode."""
    cfg = self.cfg
    if context_BxSxD is not None and not cfg.cross_attention:
      raise ValueError("init_caches: context_BxSxD given to a stack with cross_attention=False")
    shape = (batch, length, cfg.num_heads, cfg.head_dim)
    one = lambda: {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    if cfg.scan_layers:
      caches = jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.num_layers,) + a.shape), one())
    else:
      caches = [one() for _ in range(cfg.num_layers)]
    if context_BxSxD is None:
      return caches
    if context_BxSxD.shape[0] != batch:
      raise ValueError(f"init_caches: context_BxSxD has batch {context_BxSxD.shape[0]}, the caches {batch}")
    cross = self.cross_caches(context_BxSxD)
    if cfg.scan_layers:
      return {**caches, **jax.tree.map(lambda a: a.astype(dtype), cross)}
    return [{**c, **jax.tree.map(lambda a: a.astype(dtype), x)} for c, x in zip(caches, cross)]

  def cross_caches(self, context_BxSxD: jax.Array) -> Any:
    """Each layer's {'cross_k', 'cross_v'} (B, S, H, Dh) for a context: a list, or one pytree
    stacked on a leading layer axis under scan_layers."""
    if not self.cfg.cross_attention:
      raise ValueError("cross_caches: this stack has cross_attention=False")
    context_BxSxD = parallel.constrain(context_BxSxD, ("batch", "length", "act_embed"))
    if self.cfg.scan_layers:
      graphdef, stacked = nnx.split(self.layers)
      return jax.vmap(lambda state: nnx.merge(graphdef, state).cross_attn.context_kv(context_BxSxD))(stacked)
    return [block.cross_attn.context_kv(context_BxSxD) for block in self.layers]

  def gather_cache_rows(self, caches: Any, rows_N: jax.Array, keys: Sequence[str] = ("k", "v")) -> Any:
    """Caches whose batch row n is row `rows_N[n]` of `caches`, for the entries named in `keys`
    (beam search reorders the self-attention entries by beam origin; the others are kept)."""
    axis = 1 if self.cfg.scan_layers else 0
    pick = lambda c: {k: (jnp.take(v, rows_N, axis=axis) if k in keys else v) for k, v in c.items()}
    return pick(caches) if self.cfg.scan_layers else [pick(c) for c in caches]

  def cache_length(self, caches: Any) -> int:
    """Slots of the self-attention caches."""
    return (caches["k"] if self.cfg.scan_layers else caches[0]["k"]).shape[-3]
