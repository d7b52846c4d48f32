"""Transcribing with a SpeechSeq2Seq model: greedy decoding and beam search over a KV cache.

Both run the encoder once, fill each decoder layer's cross-attention cache from its output,
then feed one token per step to the decoder in a `lax.while_loop` that ends as soon as every
row is finished. Rows come back as the training targets are laid out: [BOS] tokens [EOS], then
padding 0, `max_len` columns in all (so at most max_len - 1 decoder steps).

Two forms of each:
  - `greedy_tokens` / `beam_tokens`: plain traceable functions of the model, for callers that
    are already inside `jax.jit` (the eval step, fmjax.transcribe);
  - `greedy_decode` / `beam_search`: the same, jitted here and compiled once per model structure,
    shape and setting (like fmjax.sampling), for direct calls.

Beam search folds the beams into the batch (row b * beam + k) and, per step, ranks the beam x
vocab extensions of each utterance by total log probability. As in Whisper's and fairseq's
decoders, the first `beam` extensions that do not end in EOS become the next beams and an EOS
extension ranked above the last of them is a finished hypothesis; the best `beam` finished ones
are kept, scored by length-normalised log prob, log p / length ** length_penalty (length:
tokens after BOS, EOS included; length_penalty 0 is the plain log prob). An utterance stops
once `beam` hypotheses have finished and no live beam, normalised at its current length, beats
the worst one kept; at max_len the live beams compete too. With length_penalty 0 that test is
exact (log probs only fall), so stopping early never changes the answer; with a positive one it
is the usual heuristic (a longer hypothesis can still normalise better). The answer is the best
hypothesis. With one beam this is greedy decoding exactly: the best extension either ends in EOS
(then the only live beam scores no better than it, and the search stops) or becomes the beam.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx


def _check(model, *, max_len: int, beam: int = 1) -> None:
  if max_len < 2:
    raise ValueError(f"max_len={max_len}: must be >= 2 (BOS and at least one token)")
  if max_len - 1 > model.cfg.max_text_len:
    raise ValueError(f"max_len={max_len}: the decoder reads at most max_text_len={model.cfg.max_text_len} tokens, "
                     f"so max_len must be <= {model.cfg.max_text_len + 1}")
  if beam < 1:
    raise ValueError(f"beam={beam}: must be >= 1 (1: greedy)")


def _restrict(logits_NxV: jax.Array, vocab_limit: Optional[int]) -> jax.Array:
  """Ids at or above `vocab_limit` (embedding padding) are never chosen."""
  logits_NxV = logits_NxV.astype(jnp.float32)
  if vocab_limit is None:
    return logits_NxV
  return jnp.where(jnp.arange(logits_NxV.shape[-1]) < vocab_limit, logits_NxV, -jnp.inf)


def greedy_tokens(model, feats_BxTxM, frame_mask_BxT, *, bos_id, eos_id, max_len: int,
                  vocab_limit: Optional[int] = None) -> jax.Array:
  """int32 (B, max_len): [BOS] + the argmax token at each step up to EOS, then 0."""
  _check(model, max_len=max_len)
  enc_BxUxD, enc_mask_BxU = model.encode(feats_BxTxM, frame_mask_BxT)
  batch, steps = enc_BxUxD.shape[0], max_len - 1
  caches = model.init_caches(batch, steps, enc_BxUxD)
  out_BxL = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(bos_id)

  def cond(carry):
    i, _, _, done_B = carry
    return (i < steps) & ~jnp.all(done_B)

  def body(carry):
    i, out_BxL, caches, done_B = carry
    token_Bx1 = jax.lax.dynamic_slice_in_dim(out_BxL, i, 1, axis=1)
    logits_Bx1xV, caches = model.decode(token_Bx1, None, enc_mask_BxU, caches, i)
    next_B = jnp.argmax(_restrict(logits_Bx1xV[:, 0], vocab_limit), axis=-1).astype(jnp.int32)
    next_B = jnp.where(done_B, 0, next_B)
    out_BxL = jax.lax.dynamic_update_slice_in_dim(out_BxL, next_B[:, None], i + 1, axis=1)
    return i + 1, out_BxL, caches, done_B | (next_B == eos_id)

  carry = (jnp.int32(0), out_BxL, caches, jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, carry)[1]


def beam_tokens(model, feats_BxTxM, frame_mask_BxT, *, beam: int, bos_id, eos_id, max_len: int,
                length_penalty=1.0, vocab_limit: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """(int32 (B, max_len) best hypothesis per utterance, laid out as greedy_tokens', float32 (B,)
  its length-normalised log prob)."""
  _check(model, max_len=max_len, beam=beam)
  k, steps = beam, max_len - 1
  enc_BxUxD, enc_mask_BxU = model.encode(feats_BxTxM, frame_mask_BxT)
  batch = enc_BxUxD.shape[0]
  n = batch * k
  # The beams of one utterance share its encoder states and cross-attention caches (identical
  # rows, so reordering beams within an utterance never has to move them).
  enc_NxUxD, enc_mask_NxU = jnp.repeat(enc_BxUxD, k, axis=0), jnp.repeat(enc_mask_BxU, k, axis=0)
  caches = model.init_caches(n, steps, enc_NxUxD)
  stack = model.decoder.stack
  norm = lambda length: jnp.asarray(length, jnp.float32) ** jnp.asarray(length_penalty, jnp.float32)
  seqs_BxKxL = jnp.zeros((batch, k, max_len), jnp.int32).at[:, :, 0].set(bos_id)
  # All beams start as the same [BOS]: only the first may extend at the first step.
  alive_BxK = jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (batch, k))
  fin_seqs_BxKxL = jnp.zeros((batch, k, max_len), jnp.int32)
  fin_scores_BxK = jnp.full((batch, k), -jnp.inf)
  fin_count_B = jnp.zeros((batch,), jnp.int32)

  def stops(length, alive_BxK, fin_scores_BxK, fin_count_B):
    """k hypotheses have finished and no live beam (of `length` tokens) beats the worst one kept."""
    best_alive_B = alive_BxK.max(axis=1) / norm(length)
    return (fin_count_B >= k) & (best_alive_B <= fin_scores_BxK.min(axis=1))

  def cond(carry):
    i, *_, done_B = carry
    return (i < steps) & ~jnp.all(done_B)

  def body(carry):
    i, seqs_BxKxL, alive_BxK, caches, fin_seqs_BxKxL, fin_scores_BxK, fin_count_B, done_B = carry
    tokens_Nx1 = jax.lax.dynamic_slice_in_dim(seqs_BxKxL, i, 1, axis=2).reshape(n, 1)
    logits_Nx1xV, caches = model.decode(tokens_Nx1, None, enc_mask_NxU, caches, i)
    logp_BxKxV = jax.nn.log_softmax(_restrict(logits_Nx1xV[:, 0], vocab_limit), axis=-1).reshape(batch, k, -1)
    vocab = logp_BxKxV.shape[-1]
    # Of the best 2k extensions at least k do not end in EOS (each beam has one EOS extension).
    scores_BxC, index_BxC = jax.lax.top_k((alive_BxK[..., None] + logp_BxKxV).reshape(batch, k * vocab), 2 * k)
    origin_BxC, token_BxC = index_BxC // vocab, (index_BxC % vocab).astype(jnp.int32)
    eos_BxC = token_BxC == eos_id
    live_before_BxC = jnp.cumsum(~eos_BxC, axis=1) - (~eos_BxC)   # non-EOS extensions ranked above
    lives_BxC = ~eos_BxC & (live_before_BxC < k)
    finishes_BxC = eos_BxC & (live_before_BxC < k) & jnp.isfinite(scores_BxC) & ~done_B[:, None]
    with_token = lambda origin, token: jax.lax.dynamic_update_slice_in_dim(
        jnp.take_along_axis(seqs_BxKxL, origin[..., None], axis=1), token[..., None], i + 1, axis=2)

    # The next beams: the living extensions, best first (a stable sort keeps their rank order).
    pick_BxK = jnp.argsort(~lives_BxC, axis=1, stable=True)[:, :k]
    origin_BxK = jnp.take_along_axis(origin_BxC, pick_BxK, axis=1)
    new_seqs_BxKxL = with_token(origin_BxK, jnp.take_along_axis(token_BxC, pick_BxK, axis=1))
    new_alive_BxK = jnp.take_along_axis(scores_BxC, pick_BxK, axis=1)
    caches = stack.gather_cache_rows(caches, (jnp.arange(batch)[:, None] * k + origin_BxK).reshape(n))

    # Finished hypotheses: the best k so far, by length-normalised log prob.
    pool_scores = jnp.concatenate([fin_scores_BxK, jnp.where(finishes_BxC, scores_BxC / norm(i + 1), -jnp.inf)], 1)
    pool_seqs = jnp.concatenate([fin_seqs_BxKxL, with_token(origin_BxC, token_BxC)], axis=1)
    fin_scores_BxK, best_BxK = jax.lax.top_k(pool_scores, k)
    fin_seqs_BxKxL = jnp.take_along_axis(pool_seqs, best_BxK[..., None], axis=1)

    # An utterance that was already done keeps its beams as they were.
    seqs_BxKxL = jnp.where(done_B[:, None, None], seqs_BxKxL, new_seqs_BxKxL)
    alive_BxK = jnp.where(done_B[:, None], alive_BxK, new_alive_BxK)
    fin_count_B = fin_count_B + finishes_BxC.sum(axis=1, dtype=jnp.int32)
    # Once stopped, stopped for good (the live beams' normalisation would move on without them).
    done_B = done_B | stops(i + 1, alive_BxK, fin_scores_BxK, fin_count_B)
    return i + 1, seqs_BxKxL, alive_BxK, caches, fin_seqs_BxKxL, fin_scores_BxK, fin_count_B, done_B

  carry = (jnp.int32(0), seqs_BxKxL, alive_BxK, caches, fin_seqs_BxKxL, fin_scores_BxK, fin_count_B,
           jnp.zeros((batch,), bool))
  i, seqs_BxKxL, alive_BxK, _, fin_seqs_BxKxL, fin_scores_BxK, _, done_B = jax.lax.while_loop(cond, body, carry)
  # Utterances still searching at max_len also consider their live beams (i tokens each).
  alive_scores_BxK = jnp.where(done_B[:, None], -jnp.inf, alive_BxK / norm(jnp.maximum(i, 1)))
  pool_scores = jnp.concatenate([fin_scores_BxK, alive_scores_BxK], axis=1)
  pool_seqs = jnp.concatenate([fin_seqs_BxKxL, seqs_BxKxL], axis=1)
  best_B = jnp.argmax(pool_scores, axis=1)
  tokens_BxL = jnp.take_along_axis(pool_seqs, best_B[:, None, None], axis=1)[:, 0]
  return tokens_BxL, jnp.take_along_axis(pool_scores, best_B[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len", "vocab_limit"))
def _greedy_jit(graphdef, state, feats_BxTxM, frame_mask_BxT, bos_id, eos_id, *, max_len, vocab_limit):
  return greedy_tokens(nnx.merge(graphdef, state), feats_BxTxM, frame_mask_BxT, bos_id=bos_id, eos_id=eos_id,
                       max_len=max_len, vocab_limit=vocab_limit)


@functools.partial(jax.jit, static_argnames=("graphdef", "beam", "max_len", "vocab_limit"))
def _beam_jit(graphdef, state, feats_BxTxM, frame_mask_BxT, bos_id, eos_id, length_penalty, *, beam, max_len,
              vocab_limit):
  return beam_tokens(nnx.merge(graphdef, state), feats_BxTxM, frame_mask_BxT, beam=beam, bos_id=bos_id,
                     eos_id=eos_id, max_len=max_len, length_penalty=length_penalty, vocab_limit=vocab_limit)


def greedy_decode(model, feats_BxTxM, frame_mask_BxT, *, bos_id: int, eos_id: int, max_len: int,
                  vocab_limit: Optional[int] = None) -> jax.Array:
  """Greedy transcription, jitted: int32 (B, max_len), [BOS] tokens [EOS] then 0."""
  _check(model, max_len=max_len)
  graphdef, state = nnx.split(model)
  return _greedy_jit(graphdef, state, feats_BxTxM, frame_mask_BxT, jnp.int32(bos_id), jnp.int32(eos_id),
                     max_len=max_len, vocab_limit=vocab_limit)


def beam_search(model, feats_BxTxM, frame_mask_BxT, *, beam: int, bos_id: int, eos_id: int, max_len: int,
                length_penalty: float = 1.0, vocab_limit: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """Beam search, jitted: (int32 (B, max_len) best hypotheses, float32 (B,) their
  length-normalised log probs)."""
  _check(model, max_len=max_len, beam=beam)
  graphdef, state = nnx.split(model)
  return _beam_jit(graphdef, state, feats_BxTxM, frame_mask_BxT, jnp.int32(bos_id), jnp.int32(eos_id),
                   jnp.float32(length_penalty), beam=beam, max_len=max_len, vocab_limit=vocab_limit)
