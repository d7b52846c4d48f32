"""Frozen features of a text run: any layer of a GPT or BERT, pooled over each text's tokens.

A text is encoded as the pipeline packs a document, `[bos] text [eos]` ([CLS] text [SEP] with
BERT's naming), cut to the model's context. Layers are counted as the stack computes them:

    layer 0          the embeddings the first block reads (after BERT's embedding LayerNorm)
    layer i          the residual stream after block i, 1 <= i < L
    layer L (= -1)   the final hidden states: block L's output through the final LayerNorm,
                     what the output head (GPT) or the MLM head (BERT) reads

Negative layers count from the end as Python indexes do (-1 = L, -(L + 1) = 0). GPT's states
are causal (a token has seen only what precedes it), BERT's bidirectional: each model is read
the way it was trained, with attention inside the text only. Pooling: 'mean' over the text's
tokens (bos and eos included, padding left out), 'first' (the bos / [CLS] slot) or 'last'
(the eos / [SEP] slot, the only one a causal model has read the whole text at).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax.models import bert, gpt

POOLS = ("mean", "first", "last")
TEXT_MODELS = (gpt.Gpt, bert.Bert)
_LENGTH_BUCKET = 16  # rows are padded to a multiple of this (one shape for the whole set of texts)


def num_layers(model) -> int:
  return model.stack.cfg.num_layers


def resolve_layer(layer: int, layers: int) -> int:
  """`layer` in [-(layers + 1), layers] as an index in [0, layers]; ValueError otherwise."""
  if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not -(layers + 1) <= layer <= layers:
    raise ValueError(f"layer={layer!r}: must be an integer in [{-(layers + 1)}, {layers}] for a model of "
                     f"{layers} blocks (0: the embeddings, {layers} or -1: the final hidden states)")
  return int(layer) % (layers + 1)


def text_ids(tokenizer, text: str, max_len: int) -> list[int]:
  """[bos] text [eos], the text's tokens cut so that the whole fits `max_len`."""
  body = tokenizer.encode(text).tolist()[: max(max_len - 2, 0)]
  return [tokenizer.bos_id, *body, tokenizer.eos_id]


def _blocks(stack) -> list:
  """The stack's blocks as modules, also when they are stacked on a 'layers' axis for scan."""
  if not stack.cfg.scan_layers:
    return list(stack.layers)
  graphdef, stacked = nnx.split(stack.layers)
  return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(stack.cfg.num_layers)]


def hidden_states(model, tokens_BxT, positions_BxT, segment_ids_BxT, layer: int) -> jax.Array:
  """(B, T, D) states at `layer` (an index in [0, L]), without dropout."""
  if isinstance(model, gpt.Gpt):
    x_BxTxD = model.embed_inputs(tokens_BxT, positions_BxT=positions_BxT)
    mask, is_causal = gpt.training_mask(segment_ids_BxT, tokens_BxT)
  elif isinstance(model, bert.Bert):
    x_BxTxD = model.embed_inputs(tokens_BxT, positions_BxT=positions_BxT)
    mask, is_causal = bert.attention_mask(segment_ids_BxT), False
  else:
    raise TypeError(f"hidden_states: a {type(model).__name__} is not a text model ({TEXT_MODELS})")
  for block in _blocks(model.stack)[:layer]:
    x_BxTxD, _ = block(x_BxTxD, positions_BxT=positions_BxT, mask=mask, is_causal=is_causal)
  if layer == num_layers(model):
    x_BxTxD = model.ln_final(x_BxTxD)
  return x_BxTxD


def pool(h_BxTxD: jax.Array, segment_ids_BxT: jax.Array, how: str) -> jax.Array:
  """(B, D) float32 from the states of each row's text tokens (segment id > 0)."""
  valid_BxT = segment_ids_BxT > 0
  # where(), not a product: a padded slot attends to nothing, and its state must not leak in.
  h_BxTxD = jnp.where(valid_BxT[..., None], h_BxTxD.astype(jnp.float32), 0.0)
  count_B = jnp.maximum(valid_BxT.sum(1), 1)
  if how == "mean":
    return h_BxTxD.sum(1) / count_B[:, None]
  if how == "first":
    return h_BxTxD[:, 0]
  if how == "last":
    return jnp.take_along_axis(h_BxTxD, (count_B - 1)[:, None, None], axis=1)[:, 0]
  raise ValueError(f"pool={how!r}: choose one of {POOLS}")


class TextFeatures:
  """Pooled features of texts from a loaded text model, frozen."""

  def __init__(self, model, tokenizer, max_len: int):
    if not isinstance(model, TEXT_MODELS):
      raise TypeError(f"TextFeatures: a {type(model).__name__} is not a text model ({TEXT_MODELS})")
    self.tokenizer, self.max_len = tokenizer, max_len
    self.layers = num_layers(model)
    graphdef, self._state = nnx.split(model)

    def features(state, batch, layer, how):
      h_BxTxD = hidden_states(nnx.merge(graphdef, state), batch["tokens"], batch["positions"],
                              batch["segment_ids"], layer)
      return pool(h_BxTxD, batch["segment_ids"], how)

    self._features = jax.jit(features, static_argnums=(2, 3))

  def batch(self, rows: Sequence[Sequence[int]], length: int) -> dict:
    """Right-padded rows of `length` slots; positions count from 0 in each text."""
    tokens = np.zeros((len(rows), length), np.int32)
    lengths = np.array([len(r) for r in rows])
    for i, row in enumerate(rows):
      tokens[i, : len(row)] = row
    segment_ids = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape) * segment_ids
    return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids}

  def __call__(self, texts: Sequence[str], *, layer: int = -1, how: str = "mean", batch_size: int = 64) -> np.ndarray:
    """(len(texts), embed_dim) float32 features."""
    if how not in POOLS:
      raise ValueError(f"pool={how!r}: choose one of {POOLS}")
    index = resolve_layer(layer, self.layers)
    rows = [text_ids(self.tokenizer, t, self.max_len) for t in texts]
    if not rows:
      raise ValueError("no texts to embed")
    # One shape for every batch: the longest text's, bucketed; the last batch is padded with
    # empty rows (dropped below), so the features compile once.
    longest = max(len(r) for r in rows)
    length = min(-(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET, self.max_len)
    out = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start: start + batch_size]
      padded = chunk + [[]] * (batch_size - len(chunk))
      feats_BxD = self._features(self._state, self.batch(padded, length), index, how)
      out.append(np.asarray(feats_BxD)[: len(chunk)])
    return np.concatenate(out)
