"""Contrastive losses over a batch of paired, L2-normalised image and text embeddings.

Pure functions of global arrays: under `jax.jit` over a mesh the batch may be sharded over the
batch axes and XLA gathers what each loss needs. All arithmetic is float32.

  clip_loss            softmax cross-entropy over the whole batch, both directions (CLIP).
  siglip_loss          an independent sigmoid per image-text pair (SigLIP), B x B logits.
  chunked_siglip_loss  the same value without ever holding B x B logits: each device scores
                       its own images against one block of texts at a time while the text
                       blocks travel round a ring of devices (as in the SigLIP paper); the
                       backward pass recomputes each block's logits, so memory grows with the
                       per-device batch only.
"""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from fmjax import parallel


def similarity_logits(image_emb_BxJ, text_emb_BxJ, logit_scale) -> jax.Array:
  """(B images, B texts) scaled cosine similarities, float32."""
  image_emb_BxJ = image_emb_BxJ.astype(jnp.float32)
  text_emb_BxJ = text_emb_BxJ.astype(jnp.float32)
  return jnp.asarray(logit_scale, jnp.float32) * (image_emb_BxJ @ text_emb_BxJ.T)


def clip_loss(image_emb_BxJ, text_emb_BxJ, logit_scale) -> jax.Array:
  """Mean of the image->text and text->image cross-entropies; pair i is the right answer for
  row (and column) i."""
  logits_BxB = similarity_logits(image_emb_BxJ, text_emb_BxJ, logit_scale)
  matched_B = jnp.diagonal(logits_BxB)
  image_to_text = jnp.mean(jax.nn.logsumexp(logits_BxB, axis=1) - matched_B)
  text_to_image = jnp.mean(jax.nn.logsumexp(logits_BxB, axis=0) - matched_B)
  return 0.5 * (image_to_text + text_to_image)


def _sigmoid_terms(image_emb_bxJ, text_emb_bxJ, logit_scale, logit_bias, matched: bool) -> jax.Array:
  """Sum over a block of pairs of -log sigmoid(z * logit), z = +1 on the diagonal of a matched
  block (the same examples' images and texts) and -1 everywhere else."""
  logits_bxb = similarity_logits(image_emb_bxJ, text_emb_bxJ, logit_scale) + jnp.asarray(logit_bias, jnp.float32)
  if matched:
    signs_bxb = 2.0 * jnp.eye(logits_bxb.shape[0], logits_bxb.shape[1], dtype=jnp.float32) - 1.0
  else:
    signs_bxb = -jnp.ones_like(logits_bxb)
  return -jnp.sum(jax.nn.log_sigmoid(signs_bxb * logits_bxb))


def siglip_loss(image_emb_BxJ, text_emb_BxJ, logit_scale, logit_bias) -> jax.Array:
  """-1/B sum_ij log sigmoid(z_ij (t x_i.y_j + b)): normalised by the batch, not by B^2, as in
  the SigLIP paper."""
  total = _sigmoid_terms(image_emb_BxJ, text_emb_BxJ, logit_scale, logit_bias, True)
  return total / image_emb_BxJ.shape[0]


def _ring_sigmoid_sum(image_emb_bxJ, text_emb_bxJ, logit_scale, logit_bias, *, axes, num_shards: int):
  """Per device: its images against its own texts, then against each other device's texts as
  they arrive round the ring; the devices' sums added up at the end."""
  # Rematerialised: the backward pass recomputes each block's b x b logits instead of keeping
  # all of them, so what is saved per block is its b x J texts.
  block_terms = jax.checkpoint(_sigmoid_terms, static_argnums=(4,))
  total = block_terms(image_emb_bxJ, text_emb_bxJ, logit_scale, logit_bias, True)
  ring = [(i, (i + 1) % num_shards) for i in range(num_shards)]

  def visit_next_block(carry, _):
    texts_bxJ, acc = carry
    texts_bxJ = jax.lax.ppermute(texts_bxJ, axes, perm=ring)
    acc = acc + block_terms(image_emb_bxJ, texts_bxJ, logit_scale, logit_bias, False)
    return (texts_bxJ, acc), None

  # A scan, not a Python loop: one compiled step whatever the number of devices.
  (_, total), _ = jax.lax.scan(visit_next_block, (text_emb_bxJ, total), None, length=num_shards - 1)
  return jax.lax.psum(total, axes)


def chunked_siglip_loss(image_emb_BxJ, text_emb_BxJ, logit_scale, logit_bias, *,
                        mesh: Optional[jax.sharding.Mesh] = None) -> jax.Array:
  """`siglip_loss`, computed one per-device block of texts at a time (see the module notes).

  The batch is split over the mesh's batch axes (`parallel.BATCH_AXES`): the mesh in context
  (`jax.set_mesh`) unless one is passed. With no mesh, or batch axes of size 1, it is the
  dense loss."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  batch = image_emb_BxJ.shape[0]
  if text_emb_BxJ.shape != image_emb_BxJ.shape:
    raise ValueError(f"chunked_siglip_loss: image embeddings {image_emb_BxJ.shape} and text embeddings "
                     f"{text_emb_BxJ.shape} must have the same shape")
  axes = () if mesh.empty else tuple(a for a in parallel.BATCH_AXES if a in mesh.axis_names)
  num_shards = math.prod(mesh.shape[a] for a in axes)
  if num_shards == 1:
    return siglip_loss(image_emb_BxJ, text_emb_BxJ, logit_scale, logit_bias)
  if batch % num_shards:
    raise ValueError(f"chunked_siglip_loss: batch {batch} does not split over the {num_shards} devices "
                     f"of the batch axes {axes}")
  ring_sum = jax.shard_map(
      functools.partial(_ring_sigmoid_sum, axes=axes, num_shards=num_shards), mesh=mesh,
      in_specs=(P(axes, None), P(axes, None), P(), P()), out_specs=P())
  scalar = lambda v: jnp.asarray(v, jnp.float32)
  total = ring_sum(image_emb_BxJ.astype(jnp.float32), text_emb_BxJ.astype(jnp.float32),
                   scalar(logit_scale), scalar(logit_bias))
  return total / batch


LOSSES = {
    "clip": lambda image, text, scale, bias: clip_loss(image, text, scale),
    "siglip": siglip_loss,
    "siglip_chunked": chunked_siglip_loss,
}


def contrastive_loss(name: str, image_emb_BxJ, text_emb_BxJ, logit_scale, logit_bias) -> jax.Array:
  """The loss `config.model.loss` names; CLIP ignores the bias."""
  if name not in LOSSES:
    raise ValueError(f"config.model.loss={name!r}: choose one of {sorted(LOSSES)}")
  return LOSSES[name](image_emb_BxJ, text_emb_BxJ, logit_scale, logit_bias)


def in_batch_accuracy(image_emb_BxJ, text_emb_BxJ) -> dict:
  """How often each image's most similar caption in the batch is its own, and vice versa (a
  cheap training signal; it builds the B x B similarities, like the dense losses)."""
  sims_BxB = similarity_logits(image_emb_BxJ, text_emb_BxJ, 1.0)
  targets_B = jnp.arange(sims_BxB.shape[0])
  return {"image_to_text_accuracy": jnp.mean(jnp.argmax(sims_BxB, axis=1) == targets_B),
          "text_to_image_accuracy": jnp.mean(jnp.argmax(sims_BxB, axis=0) == targets_B)}
