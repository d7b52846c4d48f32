"""Causal language modelling: predict each next token from the ones before it.

Batches are packed rows of `seq_len + 1` tokens, turned on the host into
  inputs / targets   the row shifted by one,
  positions          position inside the document (restarting at each packed document),
  weights            1 where the target continues the input's document, 0 across document
                     boundaries and on padding,
  target_bytes       UTF-8 bytes each target stands for (bits per byte, comparable across
                     tokenizers),
  segment_ids        (only with config.data.segment_ids) so attention stays inside documents.
"""

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import data as fmdata
from fmjax.models import gpt
from fmjax.objectives import text_assets


@jax.named_scope("cross_entropy")
def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array):
  """Per-position negative log-likelihood in float32 (whatever the compute dtype), weighted."""
  logits = logits_BxTxV.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
  nll_BxT = jax.nn.logsumexp(logits, axis=-1) - target_logit
  return nll_BxT * weights_BxT


def shift_for_next_token(example: Mapping[str, np.ndarray], byte_lengths: np.ndarray,
                         use_segment_ids: bool) -> dict:
  """One packed row of length L+1 -> the L-long training example described above."""
  tokens, segments, positions = example["tokens"], example["segment_ids"], example["positions"]
  out = {
      "inputs": tokens[:-1].astype(np.int32),
      "targets": tokens[1:].astype(np.int32),
      "positions": positions[:-1].astype(np.int32),
      "weights": ((segments[1:] == segments[:-1]) & (segments[1:] > 0)).astype(np.float32),
      "target_bytes": byte_lengths[tokens[1:]].astype(np.float32),
  }
  if use_segment_ids:
    out["segment_ids"] = segments[:-1].astype(np.int32)
  return out


class CausalLm(text_assets.TextObjective):
  name = "causal_lm"
  unit = "tokens"

  # ---- model -----------------------------------------------------------------------------
  def model_config(self, config, tokenizer) -> gpt.GptConfig:
    m = config.model
    return gpt.GptConfig(vocab_size=text_assets.padded_vocab_size(tokenizer, m.vocab_multiple),
                         max_len=config.data.seq_len, stack=text_assets.stack_config(m),
                         positions=m.positions, tie_embeddings=m.tie_embeddings)

  def make_model(self, config, assets, rngs):
    return gpt.Gpt(self.model_config(config, assets), rngs)

  # ---- data ------------------------------------------------------------------------------
  def _transforms(self, config, tokenizer):
    byte_lengths = np.asarray(tokenizer.token_byte_lengths())
    use_segments = bool(config.data.segment_ids)
    return [lambda ex: shift_for_next_token(ex, byte_lengths, use_segments)]

  def train_data(self, config, assets, *, process_index, process_count):
    return fmdata.make_train_dataset(
        config, assets, process_index=process_index, process_count=process_count,
        packed_length=config.data.seq_len + 1, transforms=self._transforms(config, assets))

  def eval_data(self, config, assets, *, process_index, process_count):
    return fmdata.make_eval_batches(
        config, assets, process_index=process_index, process_count=process_count,
        packed_length=config.data.seq_len + 1, transforms=self._transforms(config, assets))

  def synthetic_batch(self, config, assets, batch_size):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, assets.vocab_size, (batch_size, config.data.seq_len + 1))
    length = config.data.seq_len
    batch = {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy(),
        "weights": np.ones((batch_size, length), np.float32),
        "target_bytes": np.ones((batch_size, length), np.float32),
    }
    if config.data.segment_ids:
      # As training would run: the per-document mask path, even with one document per row.
      batch["segment_ids"] = np.ones((batch_size, length), np.int32)
    return batch

  # ---- loss and evaluation ---------------------------------------------------------------
  def _weighted_nll(self, model, batch, dropout_rng):
    mask, is_causal = gpt.training_mask(batch.get("segment_ids"), batch["inputs"])
    logits, _ = model(batch["inputs"], positions_BxT=batch["positions"], mask=mask,
                      is_causal=is_causal, dropout_rng=dropout_rng)
    return cross_entropy(logits, batch["targets"], batch["weights"])

  def loss(self, model, batch, dropout_rng):
    nll_BxT = self._weighted_nll(model, batch, dropout_rng)
    loss = nll_BxT.sum() / jnp.maximum(batch["weights"].sum(), 1.0)
    return loss, {"loss": loss}

  def eval_sums(self, model, batch):
    nll_BxT = self._weighted_nll(model, batch, None)
    return {"nll": nll_BxT.sum(), "tokens": batch["weights"].sum(),
            "bytes": (batch["target_bytes"] * batch["weights"]).sum()}

  def eval_metrics(self, sums):
    loss = sums["nll"] / max(sums["tokens"], 1.0)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)),
            "eval/bits_per_byte": sums["nll"] / math.log(2) / max(sums["bytes"], 1.0),
            "eval/tokens": sums["tokens"]}

  def units_per_example(self, config):
    return config.data.seq_len

  def flops_per_example(self, config, assets):
    cfg = self.model_config(config, assets)
    return gpt.train_flops_per_token(cfg, config.data.seq_len) * config.data.seq_len

  def param_count(self, config, assets):
    return gpt.param_count(self.model_config(config, assets))
