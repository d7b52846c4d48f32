"""Denoising diffusion (DDPM): noise an image to a random step t of a fixed schedule, predict
the noise (or v), minimise the plain mean squared error. Sampling runs the learned reverse
process from pure noise (DDPM ancestral or DDIM), with classifier-free guidance for
conditional models.

Batches: {'images': uint8 [B, S, S, C]} plus 'labels' int32 [B] or 'text_tokens' int32 [B, L]
for class- or caption-conditioned models (fmjax.data.diffusion_images). Pixels become
[-1, 1] on the device.

The train state keeps an exponential moving average of the parameters
(config.diffusion.ema_decay; see fmjax.train), and evaluation and sampling use it, as DDPM,
score_sde and DiT do: the raw weights of a diffusion model sample visibly worse.

Evaluation, on fixed sets (the same every time, so curves compare):
  eval/loss, eval/loss_t{0,1,2}   the denoising loss of every held-out image at one timestep and
                                  noise fixed by its index (timesteps spread evenly over
                                  [0, T) by a golden-ratio sequence), overall and per third of T
  eval/frechet_distance           generated vs held-out images, in the feature space of a fixed
                                  judge network trained on the real training images at the
                                  start of the run (fmjax.objectives.diffusion_quality)
  eval/sample_accuracy            labelled data: the judge's accuracy at recognising the class each
                                  sample was asked for (chance: eval/sample_accuracy_chance);
                                  eval/real_accuracy is the judge's accuracy on held-out real images
  samples                         a grid of samples: workdir/samples/step_N.png and TensorBoard
"""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import paths
from fmjax.data import diffusion_images, image_text
from fmjax.models import diffusion as diffusion_model
from fmjax.objectives import diffusion_config, diffusion_quality, diffusion_sampling, diffusion_schedule
from fmjax.objectives import text_assets
from fmjax.objectives.base import Objective

JUDGE_FILE = "eval_judge.npz"
CLASSES_FILE = "diffusion_classes.json"
JUDGE_TRAIN_IMAGES = 20_000    # a seeded subset of larger training splits: the judge stays cheap
GRID_COLUMNS = 10
_GOLDEN = 0.6180339887498949


@dataclasses.dataclass
class DiffusionAssets:
  tokenizer: Any = None                      # caption conditioning only
  class_names: tuple[str, ...] = ()          # label conditioning, and judging labelled data
  judge: Optional[diffusion_quality.Judge] = None
  real_accuracy: Optional[float] = None      # the judge on held-out real images


def to_unit_range(images_BxHxWxC: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images_BxHxWxC.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x_BxHxWxC) -> np.ndarray:
  """[-1, 1] -> uint8 [0, 255] (clipped, rounded), on the host."""
  return np.clip(np.round((np.asarray(x_BxHxWxC, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def eval_timesteps(eval_index_B: jax.Array, num_steps: int) -> jax.Array:
  """A fixed timestep per held-out image: frac(i * golden ratio) * T spreads any prefix of the
  set evenly over [0, T)."""
  frac = jnp.mod(eval_index_B.astype(jnp.float32) * _GOLDEN, 1.0)
  return jnp.clip(jnp.floor(frac * num_steps), 0, num_steps - 1).astype(jnp.int32)


def _row_normals(seeds_B: jax.Array, shape: tuple, salt: int) -> jax.Array:
  """One standard normal draw of `shape` per row, fixed by the row's seed."""
  return jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(salt), s), shape))(seeds_B)


def guided_denoiser(model: diffusion_model.DiffusionModel, cond_BxE: Optional[jax.Array], guidance: float):
  """denoise(x_t, t) for the sampler. Guidance != 1 runs the conditional and the null rows as one
  batch of 2B and mixes their predictions."""
  if cond_BxE is None or guidance == 1.0:
    return lambda x, t: model(x, t, cond_BxE)
  null_BxE = model.null_condition(cond_BxE.shape[0])

  def denoise(x_BxHxWxC, t_B):
    both = model(jnp.concatenate([x_BxHxWxC, x_BxHxWxC]), jnp.concatenate([t_B, t_B]),
                 jnp.concatenate([cond_BxE, null_BxE]))
    cond_pred, null_pred = jnp.split(both, 2)
    return diffusion_sampling.classifier_free_guidance(cond_pred, null_pred, guidance)
  return denoise


def draw_samples(model: diffusion_model.DiffusionModel, batch, sampling: diffusion_model.SamplingConfig,
                 seeds_B: jax.Array) -> jax.Array:
  """Images in [-1, 1] (B, H, W, C) float32 for the batch's conditions, from noise fixed by
  `seeds_B` (and, for stochastic samplers, randomness fixed by them too)."""
  cfg = model.cfg
  schedule = diffusion_schedule.make_schedule(cfg.process.schedule, cfg.process.num_steps)
  x_T = _row_normals(seeds_B, cfg.image_shape, salt=1)
  rng = jax.random.fold_in(jax.random.PRNGKey(2), jnp.sum(seeds_B.astype(jnp.uint32) * jnp.uint32(2654435761)))
  denoise = guided_denoiser(model, model.condition(batch), sampling.guidance)
  stochastic = sampling.sampler == "ddpm" or sampling.eta > 0
  return diffusion_sampling.sample(
      denoise, schedule, x_T, sampler=sampling.sampler, num_steps=sampling.steps, target=cfg.process.target,
      eta=sampling.eta, rng=rng if stochastic else None, clip_x0=(-1.0, 1.0) if sampling.clip_x0 else None)


def sample_grid(images_NxHxWxC: np.ndarray, columns: int = GRID_COLUMNS, min_cell: int = 32) -> np.ndarray:
  """uint8 images tiled row by row with a 1-pixel gap, each cell enlarged (nearest) to at
  least `min_cell` pixels so small images stay visible."""
  n, h, w, c = images_NxHxWxC.shape
  scale = max(1, -(-min_cell // max(h, w)))
  big = images_NxHxWxC.repeat(scale, axis=1).repeat(scale, axis=2)
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  grid = np.full((rows * (h * scale + 1) + 1, columns * (w * scale + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = 1 + r * (h * scale + 1), 1 + col * (w * scale + 1)
    grid[top:top + h * scale, left:left + w * scale] = big[i]
  return grid


class Diffusion(Objective):
  name = "diffusion"
  unit = "examples"  # images

  def validate(self, config) -> None:
    diffusion_config.validate(config)

  def ema_decay(self, config) -> float:
    return float(config.diffusion.ema_decay)

  # ---- assets: tokenizer, class names, the sample-quality judge ------------------------------
  def prepare_assets(self, config, workdir):
    condition = config.diffusion.condition
    tokenizer = None
    if condition == "text":
      tokenizer = text_assets.prepare_tokenizer(config, workdir, sample_texts=image_text.caption_texts,
                                                describe_dataset=image_text.describe_dataset)
    class_names = self._class_names(config)
    if workdir is not None and jax.process_index() == 0:
      paths.write_atomically(paths.join(workdir, CLASSES_FILE), json.dumps({"class_names": list(class_names)}))
    judge, real_accuracy = self._judge(config, workdir) if config.diffusion.eval_samples else (None, None)
    return DiffusionAssets(tokenizer, class_names, judge, real_accuracy)

  @staticmethod
  def _class_names(config) -> tuple[str, ...]:
    """The dataset's class names where it has labels (checked against config.model.num_classes)."""
    if config.diffusion.condition != "label":
      return ()
    names = tuple(image_text._open(config.data).class_names)  # pylint: disable=protected-access
    if not names:
      raise ValueError(f"config.diffusion.condition='label' but {image_text.describe_dataset(config.data)} has no "
                       "class labels (config.data.label_key); use condition 'text' or 'none'.")
    wanted = int(config.model.num_classes)
    if wanted and wanted != len(names):
      raise ValueError(f"config.model.num_classes={wanted} but the dataset has {len(names)} classes; "
                       "set 0 (the dataset's count) or the right number.")
    return names

  @staticmethod
  def _judge(config, workdir):
    """The run's judge: loaded from the workdir when an earlier start trained it (a resumed run
    is judged by the same network), else trained now on the real training images."""
    path = None if workdir is None else paths.join(workdir, JUDGE_FILE)
    heldout, heldout_labels = diffusion_images.real_images(config, config.data.eval_split, int(config.data.eval_examples))
    if path is not None and paths.exists(path) and not paths.is_remote(path):
      judge = diffusion_quality.load_judge(path)
    else:
      train_images, train_labels = diffusion_images.real_images(config, config.data.train_split, JUDGE_TRAIN_IMAGES)
      judge = diffusion_quality.train_judge(train_images, train_labels, heldout, seed=0)
      if path is not None and jax.process_index() == 0 and not paths.is_remote(path):
        diffusion_quality.save_judge(judge, path)
    real_accuracy = None
    if judge.num_classes and heldout_labels is not None:
      real_accuracy = float(np.mean(judge.predict(heldout) == heldout_labels))
    return judge, real_accuracy

  def load_assets(self, config, workdir):
    tokenizer = text_assets.load_tokenizer(workdir) if config.diffusion.condition == "text" else None
    path = os.path.join(workdir, CLASSES_FILE)
    class_names = tuple(json.loads(paths.read_text(path))["class_names"]) if paths.exists(path) else ()
    return DiffusionAssets(tokenizer, class_names)

  def stand_in_assets(self, config):
    tokenizer = text_assets.stand_in_tokenizer(config.data) if config.diffusion.condition == "text" else None
    classes = int(config.model.num_classes) or 10
    return DiffusionAssets(tokenizer, tuple(str(i) for i in range(classes)) if config.diffusion.condition == "label" else ())

  # ---- model -----------------------------------------------------------------------------
  def model_config(self, config, assets: DiffusionAssets) -> diffusion_model.DiffusionModelConfig:
    vocab = text_assets.padded_vocab_size(assets.tokenizer, config.model.text.vocab_multiple) if assets.tokenizer else 0
    return diffusion_config.model_config(config, vocab_size=vocab, num_classes=len(assets.class_names))

  def make_model(self, config, assets, rngs):
    return diffusion_model.DiffusionModel(self.model_config(config, assets), rngs)

  # ---- data ------------------------------------------------------------------------------
  def train_data(self, config, assets, *, process_index, process_count):
    return diffusion_images.make_train_dataset(config, assets.tokenizer, process_index=process_index,
                                               process_count=process_count)

  def eval_data(self, config, assets, *, process_index, process_count):
    where = dict(process_index=process_index, process_count=process_count)
    batches = diffusion_images.denoising_eval_batches(config, assets.tokenizer, **where)
    return batches + diffusion_images.sample_eval_batches(config, assets.tokenizer, **where)

  def synthetic_batch(self, config, assets, batch_size):
    rng = np.random.default_rng(0)
    size, channels = int(config.data.image_size), int(config.model.channels)
    batch = {"images": rng.integers(0, 256, (batch_size, size, size, channels), dtype=np.uint8)}
    condition = config.diffusion.condition
    if condition == "label":
      batch["labels"] = rng.integers(0, len(assets.class_names), (batch_size,)).astype(np.int32)
    elif condition == "text":
      tokens = rng.integers(5, assets.tokenizer.vocab_size, (batch_size, int(config.data.text_len))).astype(np.int32)
      tokens[:, 0], tokens[:, -1] = assets.tokenizer.bos_id, assets.tokenizer.eos_id
      batch["text_tokens"] = tokens
    return batch

  # ---- loss ------------------------------------------------------------------------------
  def loss(self, model, batch, dropout_rng):
    cfg = model.cfg
    schedule = diffusion_schedule.make_schedule(cfg.process.schedule, cfg.process.num_steps)
    x0_BxHxWxC = to_unit_range(batch["images"])
    b = x0_BxHxWxC.shape[0]
    # The timesteps and noise are the objective itself, not a regulariser: without an rng (as in
    # deterministic checks) they come from a fixed key, and dropout stays off.
    rng = jax.random.PRNGKey(0) if dropout_rng is None else dropout_rng
    rng_t, rng_noise, rng_drop, rng_text, rng_model = jax.random.split(rng, 5)
    if dropout_rng is None:
      rng_text = rng_model = None
    t_B = jax.random.randint(rng_t, (b,), 0, cfg.process.num_steps)
    noise = jax.random.normal(rng_noise, x0_BxHxWxC.shape, jnp.float32)
    x_t = diffusion_schedule.q_sample(schedule, x0_BxHxWxC, t_B, noise)
    cond_BxE = model.condition(batch, rng_text)
    if cond_BxE is not None and cfg.process.cond_dropout > 0:
      dropped_B = jax.random.bernoulli(rng_drop, cfg.process.cond_dropout, (b,))
      cond_BxE = jnp.where(dropped_B[:, None], model.null_condition(b), cond_BxE)
    prediction = model(x_t, t_B, cond_BxE, rng_model)
    target = diffusion_schedule.training_target(schedule, cfg.process.target, x0_BxHxWxC, noise, t_B)
    loss = jnp.mean(diffusion_schedule.per_example_mse(prediction, target))
    return loss, {"loss": loss}

  # ---- evaluation ------------------------------------------------------------------------
  def eval_outputs(self, model, batch):
    if "sample_seed" in batch:
      images = draw_samples(model, batch, model.cfg.sampling, batch["sample_seed"])
      return {"samples": images, "sample_label": batch["sample_label"], "valid": batch["valid"]}
    return self.eval_sums(model, batch)

  def eval_sums(self, model, batch):
    """Denoising loss of each held-out image at its fixed timestep and noise, summed overall and
    per third of the schedule (valid rows only)."""
    cfg = model.cfg
    schedule = diffusion_schedule.make_schedule(cfg.process.schedule, cfg.process.num_steps)
    x0 = to_unit_range(batch["images"])
    t_B = eval_timesteps(batch["eval_index"], cfg.process.num_steps)
    noise = _row_normals(batch["eval_index"], x0.shape[1:], salt=0)
    x_t = diffusion_schedule.q_sample(schedule, x0, t_B, noise)
    prediction = model(x_t, t_B, model.condition(batch))
    target = diffusion_schedule.training_target(schedule, cfg.process.target, x0, noise, t_B)
    per_example = diffusion_schedule.per_example_mse(prediction, target) * batch["valid"]
    third_B = jnp.minimum(3 * t_B // cfg.process.num_steps, 2)
    sums = {"loss_sum": per_example.sum(), "count": batch["valid"].sum()}
    for k in range(3):
      in_third = (third_B == k).astype(jnp.float32) * batch["valid"]
      sums[f"loss_t{k}_sum"] = (per_example * in_third).sum()
      sums[f"count_t{k}"] = in_third.sum()
    return sums

  def finish_eval(self, outputs, assets=None):
    metrics = {}
    denoising = [o for o in outputs if "loss_sum" in o]
    if denoising:
      sums = {k: float(sum(float(o[k]) for o in denoising)) for k in denoising[0]}
      metrics["eval/loss"] = sums["loss_sum"] / max(sums["count"], 1.0)
      for k in range(3):
        if sums[f"count_t{k}"]:
          metrics[f"eval/loss_t{k}"] = sums[f"loss_t{k}_sum"] / sums[f"count_t{k}"]
    sampled = [o for o in outputs if "samples" in o]
    if sampled:
      valid = np.concatenate([o["valid"] for o in sampled]) > 0
      samples = to_uint8(np.concatenate([o["samples"] for o in sampled])[valid])
      requested = np.concatenate([o["sample_label"] for o in sampled])[valid]
      metrics.update(sample_metrics(samples, requested, assets))
      metrics["samples"] = grid_of_samples(samples, requested)
    return metrics

  # ---- accounting ------------------------------------------------------------------------
  def units_per_example(self, config):
    return 1

  def flops_per_example(self, config, assets):
    return diffusion_model.train_flops_per_example(self.model_config(config, assets))

  def param_count(self, config, assets):
    return diffusion_model.param_count(self.model_config(config, assets))


def sample_metrics(samples_NxHxWxC: np.ndarray, requested_N: np.ndarray, assets: Optional[DiffusionAssets]) -> dict:
  """The judge's verdict on a set of samples (empty without a judge)."""
  judge = None if assets is None else assets.judge
  if judge is None or len(samples_NxHxWxC) == 0:
    return {}
  metrics = {"eval/frechet_distance": float(judge.frechet_distance(samples_NxHxWxC)),
             "eval/samples": float(len(samples_NxHxWxC))}
  if judge.num_classes and (requested_N >= 0).all():
    metrics["eval/sample_accuracy"] = float(judge.accuracy(samples_NxHxWxC, requested_N))
    metrics["eval/sample_accuracy_chance"] = 1.0 / judge.num_classes
    if assets.real_accuracy is not None:
      metrics["eval/real_accuracy"] = assets.real_accuracy
  return metrics


def grid_of_samples(samples_NxHxWxC: np.ndarray, requested_N: np.ndarray) -> np.ndarray:
  """Up to GRID_COLUMNS samples per requested class, one class per row (labelled data), or the
  first GRID_COLUMNS**2 samples."""
  if (requested_N >= 0).all() and len(requested_N):
    order = np.argsort(requested_N, kind="stable")
    picked = [i for label in np.unique(requested_N) for i in order[requested_N[order] == label][:GRID_COLUMNS]]
    return sample_grid(samples_NxHxWxC[np.asarray(picked)])
  return sample_grid(samples_NxHxWxC[:GRID_COLUMNS ** 2])
