"""The diffusion paradigm's config: its checks, and the frozen model description built from it.

Every check raises ConfigError naming the field, before anything is built or compiled. The
denoisers' own shape rules (image size divisible by the U-Net's depth or the DiT's patch) are
enforced by their config classes; their ValueErrors are re-raised here as ConfigErrors.
"""

import dataclasses

from fmjax.field_checks import ConfigError, check as _check, is_int as _is_int
from fmjax.data import diffusion_images, image_text
from fmjax.models import clip, dit, unet
from fmjax.models import diffusion as diffusion_model
from fmjax.objectives import diffusion_sampling, diffusion_schedule, text_assets


def validate(config) -> None:
  d, m = config.diffusion, config.model
  _check(d.condition in diffusion_images.CONDITIONS, "diffusion.condition", d.condition,
         f"choose one of {diffusion_images.CONDITIONS}")
  _check(d.schedule in diffusion_schedule.SCHEDULES, "diffusion.schedule", d.schedule,
         f"choose one of {diffusion_schedule.SCHEDULES}")
  _check(d.target in diffusion_schedule.TARGETS, "diffusion.target", d.target,
         f"choose one of {diffusion_schedule.TARGETS}")
  _check(_is_int(d.num_steps) and d.num_steps >= 2, "diffusion.num_steps", d.num_steps, "must be an integer >= 2")
  _check(d.sampler in diffusion_sampling.SAMPLERS, "diffusion.sampler", d.sampler,
         f"choose one of {diffusion_sampling.SAMPLERS}")
  _check(_is_int(d.sample_steps) and 1 <= d.sample_steps <= d.num_steps, "diffusion.sample_steps", d.sample_steps,
         f"must be an integer in [1, config.diffusion.num_steps={d.num_steps}]")
  _check(d.eta >= 0, "diffusion.eta", d.eta, "must be >= 0 (0: deterministic DDIM)")
  _check(0.0 <= d.cond_dropout < 1.0, "diffusion.cond_dropout", d.cond_dropout, "must be in [0, 1)")
  _check(0.0 <= d.ema_decay < 1.0, "diffusion.ema_decay", d.ema_decay, "must be in [0, 1) (0: no moving average)")
  _check(d.guidance >= 0, "diffusion.guidance", d.guidance, "must be >= 0 (1: no guidance)")
  if d.guidance != 1.0:
    _check(d.condition != "none", "diffusion.guidance", d.guidance,
           "classifier-free guidance needs a conditional model (config.diffusion.condition 'label' or 'text'); "
           "use 1.0 for an unconditional one")
    _check(d.cond_dropout > 0, "diffusion.guidance", d.guidance,
           "guidance needs a model trained with condition dropout (config.diffusion.cond_dropout > 0); use 1.0")
  _check(_is_int(d.eval_samples) and d.eval_samples >= 0, "diffusion.eval_samples", d.eval_samples,
         "must be an integer >= 0 (0: no samples at evaluation)")
  _check(m.arch in diffusion_model.ARCHITECTURES, "model.arch", m.arch, f"choose one of {diffusion_model.ARCHITECTURES}")
  _check(m.channels in (1, 3), "model.channels", m.channels, "must be 1 (grey) or 3 (RGB)")
  _check(_is_int(m.cond_dim) and m.cond_dim > 0, "model.cond_dim", m.cond_dim, "must be a positive integer")
  _check(_is_int(m.num_classes) and m.num_classes >= 0, "model.num_classes", m.num_classes,
         "must be an integer >= 0 (0: the dataset's class count)")
  if d.condition == "text":
    text_assets.validate_tokenizer(config.data)
    section = m.text
    _check(section.embed_dim % section.num_heads == 0, "model.text.embed_dim", section.embed_dim,
           f"must be divisible by config.model.text.num_heads={section.num_heads}")
    _check(section.pool in clip.TEXT_POOLS, "model.text.pool", section.pool, f"choose one of {clip.TEXT_POOLS}")
  if m.arch == "dit":
    section = m.dit
    _check(section.embed_dim % section.num_heads == 0, "model.dit.embed_dim", section.embed_dim,
           f"must be divisible by config.model.dit.num_heads={section.num_heads}")
  image_text.validate(config, captions_required=d.condition == "text")
  try:
    model_config(config, vocab_size=256, num_classes=max(int(m.num_classes), 1))
  except ValueError as e:
    raise ConfigError(str(e)) from None


def denoiser_config(config, cond_dim: int):
  m, size = config.model, int(config.data.image_size)
  if m.arch == "unet":
    u = m.unet
    return unet.UNetConfig(
        image_size=size, channels=int(m.channels), base_channels=int(u.base_channels),
        channel_mults=tuple(int(v) for v in u.channel_mults), num_res_blocks=int(u.num_res_blocks),
        attention_resolutions=tuple(int(v) for v in u.attention_resolutions),
        attention_heads=int(u.attention_heads), dropout=float(u.dropout), num_groups=int(u.num_groups),
        cond_dim=cond_dim, dtype=m.dtype, remat=bool(u.remat))
  stack = dataclasses.replace(text_assets.stack_config(m.dit), adaln=True)
  return dit.DiTConfig(image_size=size, channels=int(m.channels), patch_size=int(m.dit.patch_size), stack=stack,
                       cond_dim=cond_dim)


def model_config(config, *, vocab_size: int, num_classes: int) -> diffusion_model.DiffusionModelConfig:
  d, m = config.diffusion, config.model
  condition = d.condition
  cond_dim = int(m.cond_dim) if condition != "none" else 0
  text = None
  if condition == "text":
    text = clip.TextTowerConfig(vocab_size=int(vocab_size), max_len=int(config.data.text_len),
                                stack=text_assets.stack_config(m.text), causal=bool(m.text.causal), pool=m.text.pool)
  process = diffusion_model.ProcessConfig(schedule=d.schedule, num_steps=int(d.num_steps), target=d.target,
                                          cond_dropout=float(d.cond_dropout))
  sampling = diffusion_model.SamplingConfig(sampler=d.sampler, steps=int(d.sample_steps), eta=float(d.eta),
                                            guidance=float(d.guidance), clip_x0=bool(d.clip_x0))
  return diffusion_model.DiffusionModelConfig(
      denoiser=denoiser_config(config, cond_dim), process=process, sampling=sampling, condition=condition,
      cond_dim=cond_dim, num_classes=int(num_classes) if condition == "label" else 0, text=text)
