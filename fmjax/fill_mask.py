"""Fill-mask and sentence embeddings from a masked LM run.

    python -m fmjax.fill_mask --workdir DIR --text "The quick [MASK] fox" [--text ...] [--top_k 5]

prints, for each [MASK] of each text, the top-k tokens with their probabilities. A request the
run cannot serve (no masked_lm run in DIR, a text without [MASK] or longer than the context)
is one `error: ...` line and exit status 2, before the model is loaded.

Python:
    fill = FillMask.from_workdir(DIR)
    fill(["The quick [MASK] fox"], top_k=5)   # -> per text, per [MASK]: [(token, prob), ...]
    fill.embed(["a sentence", "another"], pooling="mean")   # -> (2, embed_dim) numpy array

A text is encoded as it was trained: [CLS] text [SEP], one document. Each [MASK] stands for one
token: one byte with the byte tokenizer; one SentencePiece piece otherwise, which carries its
leading space, so "quick [MASK] fox" masks the piece ' brown' (the space before [MASK] goes into
the masked piece).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from fmjax import argument_checks, cli_errors, inference
from fmjax.objectives import mlm_masking

MASK_TEXT = "[MASK]"
POOLINGS = ("cls", "mean")
_LENGTH_BUCKET = 16  # texts are padded to a multiple of this: few shapes, few compilations


def encode_text(tokenizer, text: str, max_len: int) -> list[int]:
  """[CLS] text [SEP], each [MASK] as the mask id; a text longer than max_len is a ValueError."""
  parts = argument_checks.text(text, "text").split(MASK_TEXT)
  ids = [tokenizer.bos_id]
  for i, part in enumerate(parts):
    if i < len(parts) - 1 and tokenizer.kind == "sentencepiece" and part.endswith(" "):
      part = part[:-1]  # the masked piece carries this space, as '\u2581brown' does
    ids += tokenizer.encode(part).tolist()
    if i < len(parts) - 1:
      ids.append(tokenizer.mask_id)
  ids.append(tokenizer.eos_id)
  if len(ids) > max_len:
    raise ValueError(f"text {text[:40]!r}... is {len(ids)} tokens with [CLS] and [SEP]; the model's "
                     f"context is {max_len} tokens")
  return ids


def check_request(run: inference.RunFiles, texts: Sequence[str], *, top_k: int) -> None:
  """ValueError for a fill-mask request this run cannot serve. Reads no parameters: works on
  the files of a run (inference.open_run) as on a loaded one."""
  argument_checks.integer(top_k, "top_k", 1)
  if not texts:
    raise ValueError(f"no text: give at least one text with a {MASK_TEXT}")
  max_len = run.objective.model_config(run.config, run.assets).max_len
  for text in texts:
    if MASK_TEXT not in argument_checks.text(text, "text"):
      raise ValueError(f"no {MASK_TEXT} in text {text!r}: fill-mask needs at least one {MASK_TEXT} to fill")
    encode_text(run.assets, text, max_len)


class FillMask:
  def __init__(self, run: inference.LoadedRun):
    self.run = run
    self.tokenizer = run.assets
    self.max_len = run.model.cfg.max_len
    # Candidates are ids that stand for text: no specials, no padded-vocabulary rows.
    self.candidate_ids = mlm_masking.random_token_ids(self.tokenizer)
    graphdef, state = nnx.split(run.model)

    def encode(state, batch):
      model = nnx.merge(graphdef, state)
      return model.encode(batch["tokens"], positions_BxT=batch["positions"], segment_ids_BxT=batch["segment_ids"])

    def probabilities(state, batch):
      model = nnx.merge(graphdef, state)
      logits_BxTxV = model.mlm_logits(encode(state, batch))
      return jax.nn.softmax(logits_BxTxV.astype(jnp.float32), axis=-1)

    self._state = state
    self._encode = jax.jit(encode)
    self._probabilities = jax.jit(probabilities)

  @classmethod
  def from_workdir(cls, workdir: str) -> "FillMask":
    return cls(inference.load_run(workdir, expect_objective="masked_lm"))

  # ---- text -> ids -----------------------------------------------------------------------
  def encode_text(self, text: str) -> list[int]:
    return encode_text(self.tokenizer, text, self.max_len)

  def _batch(self, rows: Sequence[Sequence[int]]) -> dict:
    longest = max(len(r) for r in rows)
    length = min(-(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET, self.max_len)
    tokens = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
      tokens[i, : len(row)] = row
    segment_ids = (np.arange(length)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape) * segment_ids
    return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids}

  # ---- fill-mask -------------------------------------------------------------------------
  def __call__(self, texts: Sequence[str], *, top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it (left to right), the `top_k` most likely tokens as
    (decoded text, probability), most likely first."""
    if isinstance(texts, str):
      texts = [texts]
    check_request(self.run, texts, top_k=top_k)
    rows = [self.encode_text(t) for t in texts]
    probs_BxTxV = np.asarray(self._probabilities(self._state, self._batch(rows)))
    results = []
    for row, probs_TxV in zip(rows, probs_BxTxV):
      per_mask = []
      for slot in np.flatnonzero(np.asarray(row) == self.tokenizer.mask_id):
        candidate_probs = probs_TxV[slot, self.candidate_ids]
        best = np.argsort(-candidate_probs, kind="stable")[:top_k]
        per_mask.append([(self.tokenizer.decode([int(self.candidate_ids[j])]), float(candidate_probs[j]))
                         for j in best])
      results.append(per_mask)
    return results

  # ---- sentence embeddings ---------------------------------------------------------------
  def embed(self, texts: Sequence[str], *, pooling: str = "cls") -> np.ndarray:
    """(len(texts), embed_dim) float32: the final hidden state at [CLS] ('cls'), or the mean
    over the text's tokens, [CLS] and [SEP] included ('mean')."""
    if isinstance(texts, str):
      texts = [texts]
    if pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r}: choose one of {POOLINGS}")
    batch = self._batch([self.encode_text(t) for t in texts])
    h_BxTxD = np.asarray(self._encode(self._state, batch), dtype=np.float32)
    if pooling == "cls":
      return h_BxTxD[:, 0]
    weights_BxT = batch["segment_ids"].astype(np.float32)
    return (h_BxTxD * weights_BxT[..., None]).sum(1) / weights_BxT.sum(1, keepdims=True)


FLAGS = flags.FLAGS


def define_flags():
  # Defined when run as a program (cli_errors.run), so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  flags.DEFINE_string("workdir", None, "workdir of a masked_lm training run")
  flags.DEFINE_multi_string("text", None, f"text with one or more {MASK_TEXT}; repeat the flag for a batch")
  flags.DEFINE_integer("top_k", 5, "candidates printed per mask, an integer >= 1")


def main(argv):
  del argv
  cli_errors.require(workdir=FLAGS.workdir, text=FLAGS.text)
  files = inference.open_run(FLAGS.workdir, expect_objective="masked_lm")
  check_request(files, FLAGS.text, top_k=FLAGS.top_k)
  fill = FillMask(inference.restore(files))
  results = fill(FLAGS.text, top_k=FLAGS.top_k)
  print(f"# {FLAGS.workdir} at step {fill.run.step}")
  for text, per_mask in zip(FLAGS.text, results):
    print(f"--- text: {text!r}")
    for i, candidates in enumerate(per_mask, 1):
      print(f"{MASK_TEXT} {i}: " + "  ".join(f"{token!r} {prob:.4f}" for token, prob in candidates))


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
