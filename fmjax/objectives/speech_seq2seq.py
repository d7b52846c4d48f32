"""Whisper-style transcription: an audio encoder, a text decoder with cross-attention over it,
teacher-forced cross-entropy on the transcript's tokens.

Batches: 'audio' float32 [B, N] and 'audio_lengths' int32 [B] (16 kHz, padded to the window),
'text_tokens' int32 [B, L] ([BOS] transcript [EOS], then padding 0). The decoder reads tokens
0..L-2 and predicts 1..L-1; padding carries no loss. Label smoothing is an option
(`config.speech.label_smoothing`).

Evaluation, on the fixed held-out set: the teacher-forced loss and token accuracy, then a greedy
transcription of every utterance (KV-cached decoder inside the jitted eval step) scored against
the references: word and character error rates (`eval/wer`, `eval/cer`, on normalised text:
lower case, no punctuation), with a few reference / hypothesis pairs logged
(`eval/example_<i>`) so a run's log shows what the model hears.

The encoder can start from a masked-prediction run: `config.checkpoint.init_from=DIR` with
`config.checkpoint.init_subtrees=encoder` (see fmjax.param_transfer).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from fmjax import speech_decoding
from fmjax.objectives import error_rates, speech_common, speech_config, speech_features

EXAMPLES_LOGGED = 5


@dataclasses.dataclass(frozen=True)
class TranscribeTask:
  features: speech_features.FeatureConfig
  label_smoothing: float
  max_decode_len: int
  bos_id: int
  eos_id: int
  pad_id: int


def _teacher_forced(model, feats, frame_mask, tokens_BxL, dropout_rng, label_smoothing: float):
  """Per-token (nll, correct, weight), each [B, L-1]."""
  inputs, targets = tokens_BxL[:, :-1], tokens_BxL[:, 1:]
  weights = (targets != model.task.pad_id).astype(jnp.float32)
  logits_BxLxV = model(feats, frame_mask, inputs, dropout_rng=dropout_rng).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits_BxLxV, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  if label_smoothing > 0:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
  correct = (jnp.argmax(logits_BxLxV, axis=-1) == targets).astype(jnp.float32)
  return nll, correct, weights


def token_texts(tokenizer, tokens_BxL: np.ndarray, eos_id: int) -> list[str]:
  """The text of each row, up to its first EOS (the BOS and padding dropped)."""
  texts = []
  for row in np.asarray(tokens_BxL):
    ids = []
    for t in row.tolist():
      if t == eos_id:
        break
      if t not in tokenizer.special_ids:
        ids.append(t)
    texts.append(tokenizer.decode(ids))
  return texts


class SpeechSeq2Seq(speech_common.SpeechObjective):
  name = "speech_seq2seq"
  needs_text = True

  def validate(self, config) -> None:
    speech_config.validate_seq2seq(config)

  def make_model(self, config, assets, rngs):
    model = speech_config.make_seq2seq_model(config, assets.tokenizer, rngs)
    tok = assets.tokenizer
    model.task = TranscribeTask(features=speech_config.feature_config(config),
                                label_smoothing=float(config.speech.label_smoothing),
                                max_decode_len=int(config.data.text_len), bos_id=int(tok.bos_id),
                                eos_id=int(tok.eos_id), pad_id=int(tok.pad_id))
    return model

  def forward(self, model, batch):
    feats, mask = speech_features.features(batch, model.task.features)
    return model(feats, mask, batch["text_tokens"][:, :-1])

  def loss(self, model, batch, dropout_rng):
    (rng_aug, rng_drop), training = speech_common.split_rng(dropout_rng, 2, fixed_seed=0)
    feats, frame_mask = speech_features.features(batch, model.task.features, rng_aug if training else None)
    nll, correct, weights = _teacher_forced(model, feats, frame_mask, batch["text_tokens"],
                                            rng_drop if training else None, model.task.label_smoothing)
    loss = speech_common.masked_mean(nll, weights)
    return loss, {"loss": loss, "token_accuracy": speech_common.masked_mean(correct, weights)}

  def eval_outputs(self, model, batch):
    task = model.task
    feats, frame_mask = speech_features.features(batch, task.features)
    nll, correct, weights = _teacher_forced(model, feats, frame_mask, batch["text_tokens"], None, 0.0)
    hypotheses = speech_decoding.greedy_tokens(model, feats, frame_mask, bos_id=task.bos_id, eos_id=task.eos_id,
                                               max_len=task.max_decode_len)
    return {"nll_sum": (nll * weights).sum(), "correct_sum": (correct * weights).sum(), "tokens": weights.sum(),
            "hypotheses": hypotheses, "eval_index": batch["eval_index"]}

  def finish_eval(self, outputs, assets=None):
    count = sum(float(o["tokens"]) for o in outputs)
    metrics = {"eval/loss": sum(float(o["nll_sum"]) for o in outputs) / max(count, 1.0),
               "eval/token_accuracy": sum(float(o["correct_sum"]) for o in outputs) / max(count, 1.0)}
    if assets is None or not assets.eval_transcripts:
      return metrics
    eos = assets.tokenizer.eos_id
    refs, hyps = [], []
    for o in outputs:
      texts = token_texts(assets.tokenizer, o["hypotheses"], eos)
      for index, text in zip(np.asarray(o["eval_index"]).tolist(), texts):
        if index >= 0:  # padding rows of the last batch have index -1
          refs.append(assets.eval_transcripts[index])
          hyps.append(text)
    if refs:
      counts = error_rates.error_counts(refs, hyps)
      metrics["eval/wer"] = counts["word_errors"] / max(counts["words"], 1)
      metrics["eval/cer"] = counts["char_errors"] / max(counts["chars"], 1)
      metrics["eval/utterances"] = float(len(refs))
      for i, (ref, hyp) in enumerate(list(zip(refs, hyps))[:EXAMPLES_LOGGED]):
        metrics[f"eval/example_{i}"] = f"REF: {ref} | HYP: {hyp}"
        logging.info("eval example %d  REF: %s  HYP: %s", i, ref, hyp)
    return metrics
