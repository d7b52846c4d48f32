"""Masked language modelling (BERT): recover masked tokens from context on both sides.

Data. The shared pipeline packs `[bos] doc [eos]` into rows of `seq_len` tokens; here bos is
[CLS] and eos is [SEP], so every document in a row is `[CLS] doc [SEP]` (a document continued
from the previous row starts without its [CLS], as RoBERTa-style packing without sentence-pair
objectives does). Segment ids keep attention inside each document, as for GPT
(config.data.segment_ids=False: attention spans the row, padding still masked). A grain
RandomMap (`mlm_masking.MlmMasking`) then masks each row with BERT's 80/10/10 recipe, afresh
each time a row is seen and exactly reproducible on resume. Batch features:
  inputs, targets, weights, positions, segment_ids    (B, T)
  mask_positions, mask_weights                         (B, K), with sparse prediction

Loss. Cross-entropy at the masked positions only (weights), averaged over them; accuracy too.
With config.mlm.sparse_predictions the head runs only at the K = max_predictions gathered
positions per row (static shapes), saving the (B, T, V) logits, the largest tensor of a step.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import data as fmdata
from fmjax.config_checks import ConfigError
from fmjax.models import bert
from fmjax.objectives import mlm_masking, text_assets


def masked_cross_entropy(logits_BxNxV: jax.Array, targets_BxN: jax.Array, weights_BxN: jax.Array):
  """(weighted NLL per position, weighted 0/1 correctness per position), in float32. Positions
  of weight 0 contribute exactly 0 whatever their logits."""
  logits = logits_BxNxV.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets_BxN[..., None], axis=-1)[..., 0]
  nll_BxN = jax.nn.logsumexp(logits, axis=-1) - target_logit
  correct_BxN = (jnp.argmax(logits, axis=-1) == targets_BxN).astype(jnp.float32)
  # where(), not a product: inf/nan logits at ignored positions must not leak into the sum.
  keep_BxN = weights_BxN > 0
  return jnp.where(keep_BxN, nll_BxN * weights_BxN, 0.0), jnp.where(keep_BxN, correct_BxN * weights_BxN, 0.0)


def max_predictions(config) -> int:
  """K of sparse prediction: config.mlm.max_predictions, or (0) the most a row can have."""
  return int(config.mlm.max_predictions) or mlm_masking.num_to_mask(config.data.seq_len, config.mlm.mask_rate)


class MaskedLm(text_assets.TextObjective):
  name = "masked_lm"
  unit = "tokens"

  def validate(self, config) -> None:
    super().validate(config)
    m, mlm = config.model, config.mlm
    if m.max_len and m.max_len < config.data.seq_len:
      raise ConfigError(f"config.model.max_len={m.max_len} must be 0 (= config.data.seq_len) or >= "
                        f"config.data.seq_len={config.data.seq_len}")
    if m.type_vocab_size < 0:
      raise ConfigError(f"config.model.type_vocab_size={m.type_vocab_size} must be >= 0 (0: no token types)")
    if not 0.0 < mlm.mask_rate < 1.0:
      raise ConfigError(f"config.mlm.mask_rate={mlm.mask_rate}: must be in (0, 1), e.g. 0.15")
    for field in ("mask_token_fraction", "random_token_fraction"):
      if not 0.0 <= mlm[field] <= 1.0:
        raise ConfigError(f"config.mlm.{field}={mlm[field]}: must be in [0, 1]")
    if mlm.mask_token_fraction + mlm.random_token_fraction > 1.0:
      raise ConfigError(f"config.mlm.mask_token_fraction + config.mlm.random_token_fraction = "
                        f"{mlm.mask_token_fraction} + {mlm.random_token_fraction} must be <= 1 "
                        "(the rest of the selected tokens stay unchanged)")
    if mlm.whole_word and config.data.tokenizer != "sentencepiece":
      raise ConfigError(f"config.mlm.whole_word=True needs config.data.tokenizer='sentencepiece' "
                        f"(words are SentencePiece pieces starting with '\u2581'), got {config.data.tokenizer!r}")
    most = mlm_masking.num_to_mask(config.data.seq_len, mlm.mask_rate)
    if mlm.max_predictions < 0 or (mlm.max_predictions and mlm.max_predictions < most):
      raise ConfigError(f"config.mlm.max_predictions={mlm.max_predictions}: must be 0 (automatic) or >= "
                        f"round(mask_rate * seq_len) = {most}, so that no masked token goes unpredicted")

  # ---- model -----------------------------------------------------------------------------
  def model_config(self, config, tokenizer) -> bert.BertConfig:
    m = config.model
    return bert.BertConfig(vocab_size=text_assets.padded_vocab_size(tokenizer, m.vocab_multiple),
                           max_len=int(m.max_len) or config.data.seq_len, stack=text_assets.stack_config(m),
                           positions=m.positions, type_vocab_size=int(m.type_vocab_size),
                           tie_embeddings=bool(m.tie_embeddings))

  def make_model(self, config, assets, rngs):
    return bert.Bert(self.model_config(config, assets), rngs)

  # ---- data ------------------------------------------------------------------------------
  def masking(self, config, tokenizer) -> mlm_masking.MlmMasking:
    mlm = config.mlm
    return mlm_masking.MlmMasking(
        special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id,
        random_ids=mlm_masking.random_token_ids(tokenizer), mask_rate=mlm.mask_rate,
        mask_fraction=mlm.mask_token_fraction, random_fraction=mlm.random_token_fraction,
        word_start=mlm_masking.word_start_table(tokenizer) if mlm.whole_word else None,
        max_predictions=max_predictions(config) if mlm.sparse_predictions else 0)

  def train_data(self, config, assets, *, process_index, process_count):
    return fmdata.make_train_dataset(
        config, assets, process_index=process_index, process_count=process_count,
        packed_length=config.data.seq_len, transforms=[self.masking(config, assets)])

  def eval_data(self, config, assets, *, process_index, process_count):
    # The masks of the eval set are drawn once, from the same seeds every time: a fixed set.
    return fmdata.make_eval_batches(
        config, assets, process_index=process_index, process_count=process_count,
        packed_length=config.data.seq_len, transforms=[self.masking(config, assets)])

  def synthetic_batch(self, config, assets, batch_size):
    rng = np.random.default_rng(0)
    length = config.data.seq_len
    tokens = rng.integers(max(assets.special_ids) + 1, assets.vocab_size, (batch_size, length)).astype(np.int32)
    row = lambda t: {"tokens": t, "segment_ids": np.ones(length, np.int32), "positions": np.arange(length, dtype=np.int32)}
    masking = mlm_masking.MlmMasking(
        special_ids=assets.special_ids, mask_id=assets.mask_id,
        random_ids=np.arange(max(assets.special_ids) + 1, assets.vocab_size, dtype=np.int32),
        mask_rate=config.mlm.mask_rate,
        max_predictions=max_predictions(config) if config.mlm.sparse_predictions else 0)
    rows = [masking.random_map(row(t), rng) for t in tokens]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  # ---- loss and evaluation ---------------------------------------------------------------
  def _per_prediction(self, model, batch, dropout_rng):
    """(nll, correct, weights) at the predicted positions: all T, or the K gathered ones."""
    h_BxTxD = model.encode(batch["inputs"], positions_BxT=batch["positions"],
                           segment_ids_BxT=batch["segment_ids"], dropout_rng=dropout_rng)
    if "mask_positions" in batch:
      slots_BxK = batch["mask_positions"]
      h = jnp.take_along_axis(h_BxTxD, slots_BxK[..., None], axis=1)
      targets, weights = jnp.take_along_axis(batch["targets"], slots_BxK, axis=1), batch["mask_weights"]
    else:
      h, targets, weights = h_BxTxD, batch["targets"], batch["weights"]
    nll, correct = masked_cross_entropy(model.mlm_logits(h), targets, weights)
    return nll, correct, weights

  def loss(self, model, batch, dropout_rng):
    nll, correct, weights = self._per_prediction(model, batch, dropout_rng)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = nll.sum() / count
    return loss, {"loss": loss, "accuracy": correct.sum() / count}

  def eval_sums(self, model, batch):
    nll, correct, weights = self._per_prediction(model, batch, None)
    return {"nll": nll.sum(), "correct": correct.sum(), "masked": weights.sum()}

  def eval_metrics(self, sums):
    count = max(sums["masked"], 1.0)
    loss = sums["nll"] / count
    return {"eval/loss": loss, "eval/accuracy": sums["correct"] / count,
            "eval/perplexity": math.exp(min(loss, 50.0)), "eval/masked_tokens": sums["masked"]}

  def units_per_example(self, config):
    return config.data.seq_len

  def flops_per_example(self, config, assets):
    predictions = max_predictions(config) if config.mlm.sparse_predictions else config.data.seq_len
    return bert.train_flops_per_example(self.model_config(config, assets), config.data.seq_len, predictions)

  def param_count(self, config, assets):
    return bert.param_count(self.model_config(config, assets))
