"""A diffusion model: a denoiser (U-Net or DiT) and what embeds its condition.

    condition 'none'   denoiser(x_t, t)
    condition 'label'  denoiser(x_t, t, class_embedding[label])
    condition 'text'   denoiser(x_t, t, text_proj(text_tower(caption)))   text tower trained jointly

Every conditional model also learns a `null` condition vector. Training swaps it in for a
random fraction of the batch (config.diffusion.cond_dropout), which is what lets sampling mix
conditional and unconditional predictions (classifier-free guidance) with one network.

The config also carries the diffusion process the model was trained under (schedule, number of
steps, prediction target) and the default way to sample from it, so the loss, evaluation and
inference read one frozen description and cannot disagree.
"""

import dataclasses
from typing import Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.models import clip, dit, unet
from fmjax.models.transformer import embed_lookup, param

CONDITIONS = ("none", "label", "text")
ARCHITECTURES = ("unet", "dit")


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
  """The forward process and its prediction target (fixed for a run)."""
  schedule: str = "linear"
  num_steps: int = 1000
  target: str = "eps"
  cond_dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to draw samples: evaluation's defaults, overridable at inference."""
  sampler: str = "ddim"
  steps: int = 50
  eta: float = 0.0
  guidance: float = 1.0
  clip_x0: bool = True


@dataclasses.dataclass(frozen=True)
class DiffusionModelConfig:
  denoiser: Union[unet.UNetConfig, dit.DiTConfig]
  process: ProcessConfig
  sampling: SamplingConfig
  condition: str = "none"
  cond_dim: int = 0
  num_classes: int = 0
  text: Optional[clip.TextTowerConfig] = None

  def __post_init__(self):
    if self.condition not in CONDITIONS:
      raise ValueError(f"config.diffusion.condition={self.condition!r}: choose one of {CONDITIONS}")
    if self.condition == "label" and self.num_classes < 1:
      raise ValueError("condition 'label' needs num_classes >= 1")
    if self.condition == "text" and self.text is None:
      raise ValueError("condition 'text' needs a text tower config")
    if (self.condition != "none") != (self.cond_dim > 0):
      raise ValueError(f"cond_dim={self.cond_dim} with condition {self.condition!r}: conditional models need "
                       "cond_dim > 0, unconditional ones 0")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    d = self.denoiser
    return (d.image_size, d.image_size, d.channels)


class DiffusionModel(nnx.Module):
  def __init__(self, cfg: DiffusionModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    if isinstance(cfg.denoiser, unet.UNetConfig):
      self.denoiser = unet.UNet(cfg.denoiser, rngs)
    else:
      self.denoiser = dit.DiT(cfg.denoiser, rngs)
    e = cfg.cond_dim
    if cfg.condition == "label":
      # Unit-variance rows, as a fresh embedding table in ADM; the denoiser projects them.
      self.class_embed = param(rngs, nnx.initializers.normal(1.0), (cfg.num_classes, e), ("vocab", "embed"))
    if cfg.condition == "text":
      d = cfg.text.stack.embed_dim
      self.text = clip.TextTower(cfg.text, rngs)
      self.text_proj = param(rngs, nnx.initializers.normal(d ** -0.5), (d, e), ("embed", None))
    if cfg.condition != "none":
      self.null_embed = param(rngs, nnx.initializers.normal(1.0), (e,), (None,))

  def condition(self, batch, dropout_rng: Optional[jax.Array] = None) -> Optional[jax.Array]:
    """The condition vectors (B, cond_dim) float32 of a batch's labels or caption tokens; None
    for an unconditional model."""
    cfg = self.cfg
    if cfg.condition == "none":
      return None
    if cfg.condition == "label":
      cond_BxE = embed_lookup(self.class_embed[...], batch["labels"], jnp.float32)
    else:
      pooled_BxD = self.text(batch["text_tokens"], dropout_rng).astype(jnp.float32)
      cond_BxE = pooled_BxD @ self.text_proj[...]
    return parallel.constrain(cond_BxE, ("batch", None))

  def null_condition(self, batch_size: int) -> jax.Array:
    """The learned 'no condition' vector for every row: (B, cond_dim) float32."""
    return jnp.broadcast_to(self.null_embed[...].astype(jnp.float32), (batch_size, self.cfg.cond_dim))

  def __call__(self, x_BxHxWxC: jax.Array, t_B: jax.Array, cond_BxE: Optional[jax.Array],
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """The denoiser's prediction (of cfg.process.target), (B, H, W, C) float32."""
    return self.denoiser(x_BxHxWxC, t_B, cond_BxE, dropout_rng)


def param_count(cfg: DiffusionModelConfig) -> int:
  module = unet if isinstance(cfg.denoiser, unet.UNetConfig) else dit
  total = module.param_count(cfg.denoiser)
  if cfg.condition == "label":
    total += cfg.num_classes * cfg.cond_dim
  if cfg.condition == "text":
    total += clip.text_param_count(cfg.text) + cfg.text.stack.embed_dim * cfg.cond_dim
  if cfg.condition != "none":
    total += cfg.cond_dim
  return total


def train_flops_per_example(cfg: DiffusionModelConfig) -> float:
  """Forward + backward FLOPs of one training image: 3 x the denoiser's forward matmuls and
  convolutions, plus the text tower's when captions condition it."""
  module = unet if isinstance(cfg.denoiser, unet.UNetConfig) else dit
  forward = module.forward_flops(cfg.denoiser)
  if cfg.condition == "text":
    forward += clip.text_forward_matmul_flops(cfg.text, cfg.text.max_len) + 2.0 * cfg.text.stack.embed_dim * cfg.cond_dim
  return 3.0 * forward
