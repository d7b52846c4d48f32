"""GPT: token (+ learned position) embeddings, a causal transformer stack, tied output head."""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.models import attention
from fmjax.models.transformer import LayerNorm, StackConfig, TransformerStack, dense, dropout, embed_lookup, param



@dataclasses.dataclass(frozen=True)
class GptConfig:
  vocab_size: int
  max_len: int
  stack: StackConfig
  positions: str = "learned"
  tie_embeddings: bool = True


class Gpt(nnx.Module):
  def __init__(self, cfg: GptConfig, rngs: nnx.Rngs):
    d = cfg.stack.embed_dim
    self.cfg = cfg
    self.embed = param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, d), ("vocab", "embed"))
    if cfg.positions == "learned":
      self.pos_embed = param(rngs, nnx.initializers.normal(0.01), (cfg.max_len, d), (None, "embed"))
    self.stack = TransformerStack(cfg.stack, rngs)
    self.ln_final = LayerNorm(d, rngs)
    if not cfg.tie_embeddings:
      self.head = param(rngs, nnx.initializers.normal(0.02), (d, cfg.vocab_size), ("embed", "vocab"))

  def __call__(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array, mask: Optional[jax.Array],
               is_causal: bool, dropout_rng: Optional[jax.Array] = None, caches: Any = None,
               cache_index: Optional[jax.Array] = None):
    """Logits (B, T, vocab) in the compute dtype, and the updated caches (None when training).

    `mask` (B, 1, T, S) is the full attention mask, or None with `is_causal` for plain causal
    attention (the fast path the fused kernels know)."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    rng_embed, rng_stack = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x_BxTxD = self.embed_inputs(tokens_BxT, positions_BxT=positions_BxT, dropout_rng=rng_embed)
    x_BxTxD, caches = self.stack(x_BxTxD, positions_BxT=positions_BxT, mask=mask, is_causal=is_causal,
                                 dropout_rng=rng_stack, caches=caches, cache_index=cache_index)
    x_BxTxD = self.ln_final(x_BxTxD)
    with jax.named_scope("output_head"):
      head_DxV = self.embed[...].T if cfg.tie_embeddings else self.head[...]
      logits_BxTxV = dense(x_BxTxD, head_DxV.astype(dt))
    return parallel.constrain(logits_BxTxV, ("batch", "length", "vocab")), caches

  def embed_inputs(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array,
                   dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """What the first block reads (B, T, D): token (+ learned position) embeddings, dropped out.
    Split from __call__ so that a probe can run the blocks one at a time (fmjax.text_features)."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    x_BxTxD = embed_lookup(self.embed[...], tokens_BxT, dt)
    if cfg.positions == "learned":
      x_BxTxD = x_BxTxD + jnp.take(self.pos_embed[...], positions_BxT, axis=0).astype(dt)
    return parallel.constrain(dropout(x_BxTxD, cfg.stack.dropout, dropout_rng), ("batch", "length", "act_embed"))

  def init_caches(self, batch: int, length: int):
    return self.stack.init_caches(batch, length, self.cfg.stack.compute_dtype)


def training_mask(segment_ids_BxT: Optional[jax.Array], tokens_BxT: jax.Array):
  """(mask, is_causal) for a packed training batch: causal within each document when segment ids
  are given, else plain causal (mask None lets fused kernels skip materialising it)."""
  if segment_ids_BxT is None:
    return None, True
  slots_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
  mask = attention.segment_mask(segment_ids_BxT, segment_ids_BxT) & attention.causal_mask(slots_BxT, slots_BxT)
  return mask, False


def param_count(cfg: GptConfig) -> int:
  """Parameters, counting a tied embedding once."""
  s = cfg.stack
  d, f, L = s.embed_dim, s.mlp_dim, s.num_layers
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
  total = cfg.vocab_size * d + L * per_layer + 2 * d
  if cfg.positions == "learned":
    total += cfg.max_len * d
  if not cfg.tie_embeddings:
    total += d * cfg.vocab_size
  return total


def train_flops_per_token(cfg: GptConfig, seq_len: int) -> float:
  """Forward + backward FLOPs per token, PaLM's estimate (as nanoGPT reports MFU, so ratios with
  that peer compare like with like): 6N for the weight matmuls (N counts the output head, not
  embedding lookups) plus 12 * L * T * D for attention scores and values."""
  s = cfg.stack
  d, L = s.embed_dim, s.num_layers
  n_matmul = L * (4 * d * d + 2 * d * s.mlp_dim) + d * cfg.vocab_size
  return 6.0 * n_matmul + 12.0 * L * seq_len * d
