"""Autoregressive decoding with a KV cache, for any model with GPT's calling convention.

Prompts of different lengths share one batch by left padding: each row's keys start at its own
`start` slot and its positions count from there, so padding never changes a row's result. The
whole decode (prefill + a while loop over new tokens) is one jitted function.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax import argument_checks
from fmjax.models import attention


def filter_logits(logits_BxV: jax.Array, *, top_k: int, top_p: float, vocab_limit: int) -> jax.Array:
  """Keep the top-k logits, then the smallest set whose probability reaches top_p; ids at or
  above `vocab_limit` (embedding padding) are never sampled."""
  neg = jnp.finfo(logits_BxV.dtype).min
  logits_BxV = jnp.where(jnp.arange(logits_BxV.shape[-1]) < vocab_limit, logits_BxV, neg)
  if top_k > 0:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
    # The cut-off is the smallest logit whose preceding mass is still below top_p.
    keep_BxV = (cum_BxV - jax.nn.softmax(sorted_BxV, axis=-1)) < top_p
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, neg, logits_BxV)
  return logits_BxV


def choose(logits_BxV, rng, temperature, *, top_k, top_p, vocab_limit) -> jax.Array:
  """Temperature 0 is greedy (argmax, deterministic); otherwise sample from the filtered softmax."""
  logits_BxV = filter_logits(logits_BxV.astype(jnp.float32), top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
  greedy_B = jnp.argmax(logits_BxV, axis=-1)
  sampled_B = jax.random.categorical(rng, logits_BxV / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  length = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  starts = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, length - len(p):] = p
    starts[i] = length - len(p)
  return tokens, starts


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "top_p", "vocab_limit"))
def _decode(graphdef, params, tokens_BxP, starts_B, rng, temperature, eos_id, *,
            max_new_tokens, top_k, top_p, vocab_limit):
  model = nnx.merge(graphdef, params)
  batch, prompt_len = tokens_BxP.shape
  length = prompt_len + max_new_tokens
  slots_S = jnp.arange(length)

  def mask_for(query_slots_BxT):
    key_slots_BxS = jnp.broadcast_to(slots_S, (batch, length))
    after_start = (key_slots_BxS >= starts_B[:, None])[:, None, None, :]
    return attention.causal_mask(query_slots_BxT, key_slots_BxS) & after_start

  prompt_slots_BxP = jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len))
  positions_BxP = jnp.maximum(prompt_slots_BxP - starts_B[:, None], 0)
  logits_BxPxV, caches = model(tokens_BxP, positions_BxT=positions_BxP, mask=mask_for(prompt_slots_BxP),
                               is_causal=False, caches=model.init_caches(batch, length), cache_index=0)
  out_BxN = jnp.zeros((batch, max_new_tokens), jnp.int32)
  done_B = jnp.zeros((batch,), bool)
  carry = (0, logits_BxPxV[:, -1], caches, out_BxN, done_B, rng)

  def cond(carry):
    i, _, _, _, done_B, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, logits_BxV, caches, out_BxN, done_B, rng = carry
    rng, step_rng = jax.random.split(rng)
    token_B = choose(logits_BxV, step_rng, temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
    token_B = jnp.where(done_B, eos_id, token_B)
    out_BxN = out_BxN.at[:, i].set(token_B)
    done_B = done_B | (token_B == eos_id)
    slot_Bx1 = jnp.full((batch, 1), prompt_len + i)
    logits_Bx1xV, caches = model(token_B[:, None], positions_BxT=slot_Bx1 - starts_B[:, None],
                                 mask=mask_for(slot_Bx1), is_causal=False, caches=caches,
                                 cache_index=prompt_len + i)
    return i + 1, logits_Bx1xV[:, 0], caches, out_BxN, done_B, rng

  i, _, _, out_BxN, _, _ = jax.lax.while_loop(cond, body, carry)
  return out_BxN, i


def check_settings(*, max_new_tokens: int | None, temperature: float, top_k: int, top_p: float, seed: int,
                   vocab_limit: int | None = None, prompt_lengths: Sequence[int] = (),
                   max_len: int | None = None) -> None:
  """ValueError naming the first setting out of range. Needs no model: the bounds that depend
  on one apply when given (top_k <= vocab_limit; the longest prompt plus max_new_tokens within
  max_len, where learned positions end); max_new_tokens None is the caller's default, unchecked."""
  if max_new_tokens is not None:
    argument_checks.integer(max_new_tokens, "max_new_tokens", 1)
  argument_checks.number(temperature, "temperature", 0.0, note=" (0: greedy)")
  argument_checks.integer(top_k, "top_k", 0, vocab_limit, note=" (0: no top-k filter)")
  argument_checks.number(top_p, "top_p", 0.0, 1.0, low_open=True, note=" (1: no nucleus filter)")
  argument_checks.seed(seed)
  if any(length < 1 for length in prompt_lengths):
    raise ValueError("every prompt needs at least one token")
  if max_len is not None and max_new_tokens is not None and prompt_lengths:
    longest = max(prompt_lengths)
    if longest + max_new_tokens > max_len:
      raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                       f"context of {max_len} tokens")


def generate_ids(model: nnx.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 eos_id: int, pad_id: int, vocab_limit: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, max_len: int | None = None) -> list[list[int]]:
  """New token ids for each prompt (each already starting with BOS), stopping after EOS."""
  if not prompts:
    raise ValueError("no prompts: give at least one")
  argument_checks.integer(max_new_tokens, "max_new_tokens", 1)
  check_settings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 vocab_limit=vocab_limit, prompt_lengths=[len(p) for p in prompts], max_len=max_len)
  tokens, starts = left_pad(prompts, pad_id)
  graphdef, params = nnx.split(model)
  out, steps = _decode(graphdef, params, jnp.asarray(tokens), jnp.asarray(starts), jax.random.PRNGKey(seed),
                       jnp.float32(temperature), jnp.int32(eos_id),
                       max_new_tokens=max_new_tokens, top_k=top_k, top_p=float(top_p), vocab_limit=vocab_limit)
  out = np.asarray(out)[:, :int(steps)]
  results = []
  for row in out:
    ids = row.tolist()
    results.append(ids[:ids.index(eos_id) + 1] if eos_id in ids else ids)
  return results
