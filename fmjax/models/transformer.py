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
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
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

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


def param(rngs: nnx.Rngs, init, shape, names) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape))


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
    project = lambda w, b: jnp.einsum("btd,dhk->bthk", x_BxTxD, w[...].astype(dt)) + b[...].astype(dt)
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
    y_BxTxHxDh = attention.attend(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh, mask=mask,
                                  is_causal=is_causal, implementation=cfg.attention)
    y_BxTxD = jnp.einsum("bthk,hkd->btd", y_BxTxHxDh, self.out[...].astype(dt)) + self.out_bias[...].astype(dt)
    return y_BxTxD, cache


class Mlp(nnx.Module):
  def __init__(self, cfg: StackConfig, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    out_init = nnx.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    self.fc = param(rngs, init, (cfg.embed_dim, cfg.mlp_dim), ("embed", "mlp"))
    self.fc_bias = param(rngs, nnx.initializers.zeros, (cfg.mlp_dim,), ("mlp",))
    self.proj = param(rngs, out_init, (cfg.mlp_dim, cfg.embed_dim), ("mlp", "embed"))
    self.proj_bias = param(rngs, nnx.initializers.zeros, (cfg.embed_dim,), (None,))

  def __call__(self, x_BxTxD):
    dt = x_BxTxD.dtype
    h_BxTxF = jax.nn.gelu(x_BxTxD @ self.fc[...].astype(dt) + self.fc_bias[...].astype(dt), approximate=True)
    h_BxTxF = parallel.constrain(h_BxTxF, ("batch", "length", "mlp"))
    return h_BxTxF @ self.proj[...].astype(dt) + self.proj_bias[...].astype(dt)


class Block(nnx.Module):
  """x + attn(ln(x)); x + mlp(ln(x)), with dropout on each residual branch.

  With adaLN: x + gate * attn(ln(x) * (1 + scale) + shift), likewise for the MLP, the six
  vectors computed from `condition_BxD`."""

  def __init__(self, cfg: StackConfig, rngs: nnx.Rngs):
    self.ln_attn = LayerNorm(cfg.embed_dim, rngs, affine=not cfg.adaln)
    self.attn = SelfAttention(cfg, rngs)
    self.ln_mlp = LayerNorm(cfg.embed_dim, rngs, affine=not cfg.adaln)
    self.mlp = Mlp(cfg, rngs)
    self.modulation = AdaLNModulation(cfg.embed_dim, 6, rngs) if cfg.adaln else None
    self.rate = cfg.dropout

  def __call__(self, x_BxTxD, *, positions_BxT, mask, is_causal, dropout_rng=None, cache=None,
               cache_index=None, condition_BxD=None):
    rng_attn, rng_mlp = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self._modulation(condition_BxD, x_BxTxD.dtype)
    y, cache = self.attn(modulate(self.ln_attn(x_BxTxD), shift_attn, scale_attn), positions_BxT=positions_BxT,
                         mask=mask, is_causal=is_causal, cache=cache, cache_index=cache_index)
    x_BxTxD = x_BxTxD + _gate(dropout(y, self.rate, rng_attn), gate_attn)
    y = self.mlp(modulate(self.ln_mlp(x_BxTxD), shift_mlp, scale_mlp))
    x_BxTxD = x_BxTxD + _gate(dropout(y, self.rate, rng_mlp), gate_mlp)
    return parallel.constrain(x_BxTxD, ("batch", "length", "act_embed")), cache

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
               cache_index=None, condition_BxD=None):
    """Returns (x, caches); `caches` is a list (or a stacked pytree under scan) of {'k','v'}.
    `condition_BxD` (adaLN stacks only) is the same for every layer."""
    cfg = self.cfg
    layer_rngs = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)

    def apply_block(graphdef, state, x, rng, cache):
      block = nnx.merge(graphdef, state)
      return block(x, positions_BxT=positions_BxT, mask=mask, is_causal=is_causal,
                   dropout_rng=rng, cache=cache, cache_index=cache_index, condition_BxD=condition_BxD)

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

  def init_caches(self, batch: int, length: int, dtype: Any) -> Any:
    """Zeroed key/value caches for `length` slots, laid out as `__call__` expects them."""
    cfg = self.cfg
    shape = (batch, length, cfg.num_heads, cfg.head_dim)
    one = lambda: {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    if cfg.scan_layers:
      return jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.num_layers,) + a.shape), one())
    return [one() for _ in range(cfg.num_layers)]
