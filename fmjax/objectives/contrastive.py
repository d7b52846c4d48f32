"""Contrastive image-text pretraining (CLIP, SigLIP): pull matched image-caption pairs together in a
joint embedding space and push every other pair in the global batch apart.

Batches are {"images": uint8[B,S,S,3], "text_tokens": int32[B,L]}: row i's caption describes row
i's image; every other row is a negative. The loss sees the whole global batch (the B x B
similarity matrix spans every device), so it does not change with the mesh:
  'clip'            symmetric softmax cross-entropy, learnable temperature (clamped)
  'siglip'          pairwise sigmoid loss with a learnable temperature and bias
  'siglip_chunked'  the same value, with text embeddings passed device to device (shard_map):
                    memory grows with the local batch, never B x B.

Evaluation embeds the whole held-out set once: image->text and text->image recall@1/@5 over
held-out pairs, and zero-shot classification of held-out labelled images against class names
in an ensemble of prompt templates.
"""

import jax
import numpy as np

from fmjax.config_checks import ConfigError
from fmjax.data import image_text
from fmjax.models import clip
from fmjax.objectives import contrastive_losses as losses
from fmjax.objectives import retrieval_metrics
from fmjax.objectives import text_assets
from fmjax.objectives.base import Objective


def validate_batching(config) -> None:
  if config.train.grad_accum_steps != 1:
    raise ConfigError(f"config.train.grad_accum_steps={config.train.grad_accum_steps}: a contrastive loss "
                      f"takes its negatives from the whole batch, so micro-batches would change it; "
                      f"use 1 (and fsdp or remat to fit memory)")


class Contrastive(Objective):
  name = "contrastive"
  unit = "examples"  # image-caption pairs

  def validate(self, config) -> None:
    image_text.validate(config)
    text_assets.validate_tokenizer(config.data)
    clip.validate_two_tower(config)
    validate_batching(config)

  # ---- assets: the caption tokenizer -----------------------------------------------------
  def prepare_assets(self, config, workdir):
    return text_assets.prepare_tokenizer(config, workdir, sample_texts=image_text.caption_texts,
                                         describe_dataset=image_text.describe_dataset)

  def load_assets(self, config, workdir):
    return text_assets.load_tokenizer(workdir)

  def stand_in_assets(self, config):
    return text_assets.stand_in_tokenizer(config.data)

  # ---- model -----------------------------------------------------------------------------
  def model_config(self, config, tokenizer) -> clip.TwoTowerConfig:
    vocab = text_assets.padded_vocab_size(tokenizer, config.model.text.vocab_multiple)
    return clip.two_tower_config(config, vocab)

  def make_model(self, config, assets, rngs):
    return clip.TwoTower(self.model_config(config, assets), rngs)

  # ---- data ------------------------------------------------------------------------------
  def train_data(self, config, assets, *, process_index, process_count):
    return image_text.make_train_dataset(config, assets, process_index=process_index,
                                         process_count=process_count)

  def eval_data(self, config, assets, *, process_index, process_count):
    """Held-out pairs, held-out labelled images, then every class prompt: one list."""
    where = dict(process_index=process_index, process_count=process_count)
    batches = list(image_text.retrieval_eval_batches(config, assets, **where))
    labelled, class_names = image_text.zeroshot_eval_batches(config, **where)
    if class_names:
      batches += list(labelled)
      batches += image_text.class_prompt_batches(config, assets, class_names, **where)
    return batches

  def synthetic_batch(self, config, assets, batch_size):
    rng = np.random.default_rng(0)
    size, length = config.data.image_size, config.data.text_len
    tokens = rng.integers(5, assets.vocab_size, (batch_size, length)).astype(np.int32)
    tokens[:, 0] = assets.bos_id
    tokens[:, -1] = assets.eos_id
    return {"images": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
            "text_tokens": tokens}

  # ---- loss ------------------------------------------------------------------------------
  def loss(self, model, batch, dropout_rng):
    rng_image, rng_text = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    image_emb_BxJ = model.encode_images(batch["images"], dropout_rng=rng_image)
    text_emb_BxJ = model.encode_texts(batch["text_tokens"], dropout_rng=rng_text)
    scale, bias = model.logit_scale(), model.logit_bias()
    kind = model.cfg.loss
    if kind == "clip":
      loss = losses.clip_loss(image_emb_BxJ, text_emb_BxJ, scale)
    elif kind == "siglip":
      loss = losses.siglip_loss(image_emb_BxJ, text_emb_BxJ, scale, bias)
    else:
      loss = losses.chunked_siglip_loss(image_emb_BxJ, text_emb_BxJ, scale, bias)
    metrics = {"loss": loss, "logit_scale": scale}
    if kind != "clip":
      metrics["logit_bias"] = bias
    if kind != "siglip_chunked":  # the dense losses have built the B x B similarities already
      metrics.update(losses.in_batch_accuracy(image_emb_BxJ, text_emb_BxJ))
    return loss, metrics

  # ---- evaluation ------------------------------------------------------------------------
  def eval_outputs(self, model, batch):
    out = {"valid": batch["valid"]}
    if "images" in batch:
      out["image_emb"] = model.encode_images(batch["images"])
    if "text_tokens" in batch:
      out["text_emb"] = model.encode_texts(batch["text_tokens"])
    for key in ("labels", "prompt_class"):
      if key in batch:
        out[key] = batch[key]
    return out

  def finish_eval(self, outputs, assets=None):
    def gather(kind_key, *keys):
      group = [o for o in outputs if kind_key(o)]
      if not group:
        return None
      valid = np.concatenate([o["valid"] for o in group]) > 0
      return [np.concatenate([o[k] for o in group])[valid] for k in keys]

    metrics = {}
    pairs = gather(lambda o: "image_emb" in o and "text_emb" in o, "image_emb", "text_emb")
    if pairs is not None:
      image_emb, text_emb = pairs
      found = retrieval_metrics.image_text_recall(image_emb, text_emb, np.arange(len(text_emb)))
      metrics.update({f"eval/{k}": float(v) for k, v in found.items()})
      metrics["eval/pairs"] = float(len(image_emb))
    labelled = gather(lambda o: "labels" in o, "image_emb", "labels")
    prompts = gather(lambda o: "prompt_class" in o, "text_emb", "prompt_class")
    if labelled is not None and prompts is not None:
      prompt_emb, prompt_class = prompts
      num_classes = int(prompt_class.max()) + 1
      class_emb = retrieval_metrics.class_embeddings(prompt_emb, prompt_class, num_classes)
      accuracy = retrieval_metrics.zero_shot_accuracy(labelled[0], labelled[1], class_emb)
      if isinstance(accuracy, dict):
        metrics.update({f"eval/zeroshot_{k}": float(v) for k, v in accuracy.items()})
      else:
        metrics["eval/zeroshot_top1"] = float(accuracy)
      metrics["eval/zeroshot_images"] = float(len(labelled[1]))
      metrics["eval/zeroshot_chance"] = 1.0 / num_classes
    return metrics

  # ---- accounting ------------------------------------------------------------------------
  def units_per_example(self, config):
    return 1

  def flops_per_example(self, config, assets):
    return clip.train_flops_per_example(self.model_config(config, assets))

  def param_count(self, config, assets):
    return clip.param_count(self.model_config(config, assets))

