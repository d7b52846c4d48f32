"""Masked prediction pretraining over log-mel frames, BEST-RQ style (Chiu et al., 2022).

Targets come from a frozen random-projection quantiser: normalised features, stacked by the
encoder's subsampling factor (4 frames = one encoder unit), projected to a few dimensions by a
fixed random matrix, and matched to the nearest of a fixed random codebook. Spans of units are
masked (their input frames replaced by small noise) and the encoder, which sees both sides,
predicts the codes of the masked units: cross-entropy on masked units only.

The projection and codebook are regenerated from `config.speech.quantizer_seed` wherever the
loss is traced, never trained or stored: targets are the same at every step, after a resume,
and on every host, by construction, and the quantiser cannot collapse.

Metrics (train and held-out): loss and accuracy on the masked units, the masked fraction, and
(eval) the codebook perplexity of the targets (how many codes the data really uses).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.objectives import best_rq, speech_common, speech_config, speech_features


@dataclasses.dataclass(frozen=True)
class MaskedTask:
  features: speech_features.FeatureConfig
  stack: int                 # input frames per encoder unit (the stem's subsampling)
  codebook_size: int
  codebook_dim: int
  quantizer_seed: int
  mask_prob: float           # per unit: the chance a masked span starts there
  mask_span: int             # units per span
  mask_noise_std: float


@functools.lru_cache(maxsize=8)
def quantizer(task: MaskedTask) -> tuple[np.ndarray, np.ndarray]:
  return best_rq.make_quantizer(task.quantizer_seed, task.stack * task.features.num_mels, task.codebook_dim,
                                task.codebook_size)


def targets_and_inputs(task: MaskedTask, batch, rng_augment, rng_mask, rng_noise):
  """(encoder input feats, frame mask, target codes BxU, masked BxU, valid units BxU)."""
  feats_BxTxM, frame_mask_BxT = speech_features.features(batch, task.features, rng_augment)
  projection, codebook = quantizer(task)
  stacked = best_rq.stack_frames(feats_BxTxM, task.stack)
  # Targets from the clean features (before SpecAugment would be better still, but SpecAugment is
  # off for masked pretraining: masking is its augmentation).
  codes_BxU = best_rq.quantize(stacked, jnp.asarray(projection), jnp.asarray(codebook))
  valid_BxU = best_rq.stack_mask(frame_mask_BxT, task.stack)
  masked_BxU = best_rq.span_mask(rng_mask, valid_BxU, prob=task.mask_prob, span=task.mask_span)
  inputs_BxTxM = best_rq.fill_masked(feats_BxTxM, masked_BxU, task.stack, rng_noise, task.mask_noise_std)
  return inputs_BxTxM, frame_mask_BxT, codes_BxU, masked_BxU, valid_BxU


def _per_unit(model, inputs, frame_mask, codes_BxU, dropout_rng):
  logits_BxUxK, _ = model(inputs, frame_mask, dropout_rng=dropout_rng)
  units = min(logits_BxUxK.shape[1], codes_BxU.shape[1])
  logits_BxUxK, codes_BxU = logits_BxUxK[:, :units], codes_BxU[:, :units]
  logp = jax.nn.log_softmax(logits_BxUxK.astype(jnp.float32), axis=-1)
  nll_BxU = -jnp.take_along_axis(logp, codes_BxU[..., None], axis=-1)[..., 0]
  correct_BxU = (jnp.argmax(logits_BxUxK, axis=-1) == codes_BxU).astype(jnp.float32)
  return nll_BxU, correct_BxU, units


class SpeechMasked(speech_common.SpeechObjective):
  name = "speech_masked"
  needs_text = False

  def validate(self, config) -> None:
    speech_config.validate_masked(config)

  def make_model(self, config, assets, rngs):
    model = speech_config.make_masked_model(config, rngs)
    model.task = self.task(config)
    return model

  @staticmethod
  def task(config) -> MaskedTask:
    s = config.speech
    return MaskedTask(features=speech_config.feature_config(config), stack=speech_config.subsampling(config),
                      codebook_size=int(s.codebook_size), codebook_dim=int(s.codebook_dim),
                      quantizer_seed=int(s.quantizer_seed), mask_prob=float(s.mask_prob),
                      mask_span=int(s.mask_span), mask_noise_std=float(s.mask_noise_std))

  def forward(self, model, batch):
    feats, mask = speech_features.features(batch, model.task.features)
    return model(feats, mask)

  def loss(self, model, batch, dropout_rng):
    (rng_aug, rng_mask, rng_noise, rng_drop), training = speech_common.split_rng(dropout_rng, 4, fixed_seed=0)
    inputs, frame_mask, codes, masked, valid = targets_and_inputs(model.task, batch, rng_aug if training else None,
                                                                  rng_mask, rng_noise)
    nll, correct, units = _per_unit(model, inputs, frame_mask, codes, rng_drop if training else None)
    weights = masked[:, :units]
    loss = speech_common.masked_mean(nll, weights)
    # Of the units that hold audio (padding is never masked), as eval/masked_fraction counts it.
    fraction = speech_common.masked_mean(weights.astype(jnp.float32), valid[:, :units])
    return loss, {"loss": loss, "masked_accuracy": speech_common.masked_mean(correct, weights),
                  "masked_fraction": fraction}

  def eval_sums(self, model, batch):
    # Masks and noise fixed by the batch's first example: the same every evaluation.
    key = jax.random.fold_in(jax.random.PRNGKey(17), jnp.maximum(batch["eval_index"][0], 0))
    rng_mask, rng_noise = jax.random.split(key)
    inputs, frame_mask, codes, masked, valid = targets_and_inputs(model.task, batch, None, rng_mask, rng_noise)
    nll, correct, units = _per_unit(model, inputs, frame_mask, codes, None)
    weights = masked[:, :units].astype(jnp.float32)
    counts_K = jnp.zeros((model.task.codebook_size,), jnp.float32).at[codes.reshape(-1)].add(
        valid.reshape(-1).astype(jnp.float32))
    return {"nll_sum": (nll * weights).sum(), "correct_sum": (correct * weights).sum(), "masked": weights.sum(),
            "units": valid.astype(jnp.float32).sum(), "code_counts": counts_K}

  def finish_eval(self, outputs, assets=None):
    masked = sum(float(o["masked"]) for o in outputs)
    units = sum(float(o["units"]) for o in outputs)
    counts = np.sum([np.asarray(o["code_counts"]) for o in outputs], axis=0)
    probs = counts / max(counts.sum(), 1.0)
    entropy = -float(np.sum(probs[probs > 0] * np.log(probs[probs > 0])))
    return {"eval/loss": sum(float(o["nll_sum"]) for o in outputs) / max(masked, 1.0),
            "eval/masked_accuracy": sum(float(o["correct_sum"]) for o in outputs) / max(masked, 1.0),
            "eval/masked_fraction": masked / max(units, 1.0),
            "eval/code_perplexity": float(np.exp(entropy)),
            # A model that always predicts the commonest code of the held-out set gets this right.
            "eval/commonest_code_accuracy": float(probs.max()) if counts.sum() else 0.0}
