"""BERT: a bidirectional encoder from the shared transformer blocks, and its tied MLM head.

    token + position (+ token-type) embeddings -> LayerNorm -> dropout
    -> TransformerStack (pre-LN blocks, no causal mask; a padding / per-document mask)
    -> final LayerNorm = the contextual embeddings
    MLM head: dense + gelu + LayerNorm, then the input embedding table (tied; optionally a
    separate decoder) + an output bias.

The blocks are GPT's pre-LN blocks (as in Cramming), not BERT's original post-LN ones: the
same code, and stabler at large learning rates. The head can run on all positions or only on
gathered ones (sparse prediction), see `fmjax.objectives.masked_lm`.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.models import attention
from fmjax.models.transformer import LayerNorm, StackConfig, TransformerStack, dropout, embed_lookup, param



@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  max_len: int                 # rows of the learned position table
  stack: StackConfig
  positions: str = "learned"
  type_vocab_size: int = 0     # token types (BERT's sentence A/B); 0: no type embedding
  tie_embeddings: bool = True  # the decoder is the input embedding table (BERT), or its own


def attention_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """Bidirectional: every token sees every token of its own packed document, and no padding
  (segment id 0). With config.data.segment_ids=False the row is one segment, so this is a plain
  padding mask."""
  return attention.segment_mask(segment_ids_BxT, segment_ids_BxT)


class Bert(nnx.Module):
  def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
    d, init = cfg.stack.embed_dim, nnx.initializers.normal(0.02)
    self.cfg = cfg
    self.embed = param(rngs, init, (cfg.vocab_size, d), ("vocab", "embed"))
    if cfg.positions == "learned":
      self.pos_embed = param(rngs, init, (cfg.max_len, d), (None, "embed"))
    if cfg.type_vocab_size:
      self.type_embed = param(rngs, init, (cfg.type_vocab_size, d), (None, "embed"))
    self.ln_embed = LayerNorm(d, rngs)
    self.stack = TransformerStack(cfg.stack, rngs)
    self.ln_final = LayerNorm(d, rngs)
    self.head = param(rngs, init, (d, d), ("embed", None))
    self.head_bias = param(rngs, nnx.initializers.zeros, (d,), (None,))
    self.ln_head = LayerNorm(d, rngs)
    if not cfg.tie_embeddings:
      self.decoder = param(rngs, init, (d, cfg.vocab_size), ("embed", "vocab"))
    self.out_bias = param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), ("vocab",))

  def encode(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array, segment_ids_BxT: jax.Array,
             token_types_BxT: Optional[jax.Array] = None, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """Contextual embeddings (B, T, D) in the compute dtype."""
    rng_embed, rng_stack = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x_BxTxD = self.embed_inputs(tokens_BxT, positions_BxT=positions_BxT, token_types_BxT=token_types_BxT,
                                dropout_rng=rng_embed)
    x_BxTxD, _ = self.stack(x_BxTxD, positions_BxT=positions_BxT, mask=attention_mask(segment_ids_BxT),
                            is_causal=False, dropout_rng=rng_stack)
    return self.ln_final(x_BxTxD)

  def embed_inputs(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array,
                   token_types_BxT: Optional[jax.Array] = None, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """What the first block reads (B, T, D): token + position (+ type) embeddings, LayerNorm,
    dropout. Split from encode so that a probe can run the blocks one at a time
    (fmjax.text_features)."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    x_BxTxD = embed_lookup(self.embed[...], tokens_BxT, dt)
    if cfg.positions == "learned":
      x_BxTxD = x_BxTxD + jnp.take(self.pos_embed[...], positions_BxT, axis=0).astype(dt)
    if cfg.type_vocab_size:
      types_BxT = jnp.zeros_like(tokens_BxT) if token_types_BxT is None else token_types_BxT
      x_BxTxD = x_BxTxD + jnp.take(self.type_embed[...], types_BxT, axis=0).astype(dt)
    x_BxTxD = dropout(self.ln_embed(x_BxTxD), cfg.stack.dropout, dropout_rng)
    return parallel.constrain(x_BxTxD, ("batch", "length", "act_embed"))

  def mlm_logits(self, h_BxNxD: jax.Array) -> jax.Array:
    """Vocabulary logits (B, N, V) for N encoded positions (all of them, or gathered ones)."""
    dt = h_BxNxD.dtype
    h_BxNxD = jax.nn.gelu(h_BxNxD @ self.head[...].astype(dt) + self.head_bias[...].astype(dt), approximate=False)
    h_BxNxD = self.ln_head(h_BxNxD)
    decoder_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.decoder[...]
    logits_BxNxV = h_BxNxD @ decoder_DxV.astype(dt) + self.out_bias[...].astype(dt)
    return parallel.constrain(logits_BxNxV, ("batch", "length", "vocab"))

  def __call__(self, tokens_BxT, *, positions_BxT, segment_ids_BxT, token_types_BxT=None, dropout_rng=None):
    """Logits at every position."""
    h_BxTxD = self.encode(tokens_BxT, positions_BxT=positions_BxT, segment_ids_BxT=segment_ids_BxT,
                          token_types_BxT=token_types_BxT, dropout_rng=dropout_rng)
    return self.mlm_logits(h_BxTxD)


def param_count(cfg: BertConfig) -> int:
  """Parameters, counting a tied embedding once."""
  s = cfg.stack
  d, f, L = s.embed_dim, s.mlp_dim, s.num_layers
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
  embeddings = cfg.vocab_size * d + cfg.type_vocab_size * d + 2 * d
  if cfg.positions == "learned":
    embeddings += cfg.max_len * d
  head = d * d + d + 2 * d + cfg.vocab_size
  if not cfg.tie_embeddings:
    head += d * cfg.vocab_size
  return embeddings + L * per_layer + 2 * d + head


def train_flops_per_example(cfg: BertConfig, seq_len: int, predictions: int) -> float:
  """Forward + backward FLOPs per sequence, PaLM's estimate as for GPT: 6 x (weight matmuls
  per token) x tokens, plus 12 * L * T * D per token for (full, bidirectional) attention, plus
  the MLM head (dense + tied decoder) at the `predictions` positions it runs on (all T, or the
  gathered ones of sparse prediction)."""
  s = cfg.stack
  d, L = s.embed_dim, s.num_layers
  per_token = 6.0 * L * (4 * d * d + 2 * d * s.mlp_dim) + 12.0 * L * seq_len * d
  head = 6.0 * (d * d + d * cfg.vocab_size)
  return seq_len * per_token + predictions * head
