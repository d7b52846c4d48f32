"""Two towers for contrastive image-text pretraining (CLIP, SigLIP).

    images (B, S, S, C) -> ViT -> pooled (B, Di) -> linear, no bias -> L2-normalised (B, J)
    tokens (B, L)       -> text tower -> pooled (B, Dt) -> linear, no bias -> L2-normalised (B, J)

The text tower is token + learned position embeddings, the shared transformer stack and a
final LayerNorm. Captions are `[BOS] text [EOS] 0 0 ...` (right-padded with id 0). With a
causal mask (as CLIP) padding, which only ever follows EOS, cannot reach EOS; without one the
padded keys are masked out. The caption is pooled at EOS, its last non-pad token (or averaged
over its non-pad tokens, pool='mean').

The learnable temperature is stored as log(logit scale) and clamped at `logit_scale_max` where
it is used (see `clamp_inward_gradient`); SigLIP also learns a logit bias. Embeddings, the
scale and the bias are float32 whatever the towers' compute dtype: the losses multiply cosines
by up to 100, where bf16 rounding would show.
"""

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.config_checks import ConfigError
from fmjax.models import attention, vit
from fmjax.models.transformer import LayerNorm, StackConfig, TransformerStack, dropout, embed_lookup, param
from fmjax.objectives import text_assets

TEXT_POOLS = ("eos", "mean")
LOSSES = ("clip", "siglip", "siglip_chunked")
# The initial logit scale each loss's paper uses (config.model.logit_scale_init = 0 picks it).
DEFAULT_LOGIT_SCALE = {"clip": 1 / 0.07, "siglip": 10.0, "siglip_chunked": 10.0}
IMAGE_CHANNELS = 3  # batches carry RGB images; grey ones are repeated to 3 channels by the data
PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
  vocab_size: int
  max_len: int                 # rows of the position table: the longest caption in tokens
  stack: StackConfig
  causal: bool = True
  pool: str = "eos"

  def __post_init__(self):
    if self.pool not in TEXT_POOLS:
      raise ValueError(f"text tower pool {self.pool!r}: choose one of {TEXT_POOLS}")


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  image: vit.VitConfig
  text: TextTowerConfig
  joint_dim: int
  loss: str = "clip"
  logit_scale_init: float = 1 / 0.07
  logit_scale_max: float = 100.0
  logit_bias_init: float = -10.0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"two-tower loss {self.loss!r}: choose one of {LOSSES}")
    if not 0 < self.logit_scale_init <= self.logit_scale_max:
      raise ValueError(f"logit_scale_init={self.logit_scale_init} must be in (0, logit_scale_max="
                       f"{self.logit_scale_max}]")


def l2_normalize(x_BxJ: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x_BxJ.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def last_token_index(tokens_BxL: jax.Array) -> jax.Array:
  """Slot of each row's last non-pad token (its EOS); 0 for an all-pad row."""
  nonpad_BxL = tokens_BxL != PAD_ID
  length = tokens_BxL.shape[1]
  from_end_B = jnp.argmax(nonpad_BxL[:, ::-1], axis=1)
  return jnp.where(nonpad_BxL.any(axis=1), length - 1 - from_end_B, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def clamp_inward_gradient(x: jax.Array, upper: float) -> jax.Array:
  """min(x, upper), whose gradient is kept above `upper` only when a descent step would move x
  back down towards it.

  CLIP clips the log-scale parameter after each step, so at the limit a gradient asking for a
  smaller scale still acts while one asking for a larger scale is undone. A pure train step
  cannot clip its parameters afterwards; this is the same rule in the gradient: a plain
  `minimum` would freeze a parameter that overshot the limit (zero gradient forever), and a
  straight-through clamp would let it drift upwards without bound."""
  return jnp.minimum(x, upper)


def _clamp_forward(x, upper):
  return jnp.minimum(x, upper), x


def _clamp_backward(upper, x, g):
  # Gradient descent moves x by -lr * g: g > 0 points back below the limit.
  return (jnp.where((x <= upper) | (g > 0), g, jnp.zeros_like(g)),)


clamp_inward_gradient.defvjp(_clamp_forward, _clamp_backward)


class TextTower(nnx.Module):
  def __init__(self, cfg: TextTowerConfig, rngs: nnx.Rngs):
    d = cfg.stack.embed_dim
    self.cfg = cfg
    self.embed = param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, d), ("vocab", "embed"))
    self.pos_embed = param(rngs, nnx.initializers.normal(0.01), (cfg.max_len, d), (None, "embed"))
    self.stack = TransformerStack(cfg.stack, rngs)
    self.ln_final = LayerNorm(d, rngs)

  def tokens(self, tokens_BxL: jax.Array, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """Final-LayerNorm features of every slot (B, L, D) in the compute dtype."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    b, length = tokens_BxL.shape
    if length > cfg.max_len:
      raise ValueError(f"text tower: captions of {length} tokens, but the position table has "
                       f"max_len={cfg.max_len} rows")
    rng_embed, rng_stack = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x_BxLxD = embed_lookup(self.embed[...], tokens_BxL, dt) + self.pos_embed[:length].astype(dt)
    x_BxLxD = parallel.constrain(dropout(x_BxLxD, cfg.stack.dropout, rng_embed), ("batch", "length", "act_embed"))
    positions_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
    if cfg.causal:
      mask = None  # causal alone: padding sits after EOS, so no earlier slot can see it
    else:
      nonpad_BxL = (tokens_BxL != PAD_ID).astype(jnp.int32)
      mask = attention.segment_mask(nonpad_BxL, nonpad_BxL)
    x_BxLxD, _ = self.stack(x_BxLxD, positions_BxT=positions_BxL, mask=mask, is_causal=cfg.causal,
                            dropout_rng=rng_stack)
    return self.ln_final(x_BxLxD)

  def __call__(self, tokens_BxL: jax.Array, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """The pooled caption representation (B, D) in float32."""
    x_BxLxD = self.tokens(tokens_BxL, dropout_rng)
    if self.cfg.pool == "eos":
      eos_B = last_token_index(tokens_BxL)
      return jnp.take_along_axis(x_BxLxD, eos_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    weights_BxL = (tokens_BxL != PAD_ID).astype(jnp.float32)
    total_BxD = jnp.einsum("bld,bl->bd", x_BxLxD.astype(jnp.float32), weights_BxL)
    return total_BxD / jnp.maximum(weights_BxL.sum(axis=1, keepdims=True), 1.0)


class ContrastiveLogits(nnx.Module):
  """The learnable temperature (as log of the logit scale) and the logit bias, float32 scalars."""

  def __init__(self, cfg: TwoTowerConfig, rngs: nnx.Rngs):
    self.log_scale = param(rngs, nnx.initializers.constant(math.log(cfg.logit_scale_init)), (), ())
    self.bias = param(rngs, nnx.initializers.constant(cfg.logit_bias_init), (), ())


class TwoTower(nnx.Module):
  def __init__(self, cfg: TwoTowerConfig, rngs: nnx.Rngs):
    di, dt, j = cfg.image.stack.embed_dim, cfg.text.stack.embed_dim, cfg.joint_dim
    self.cfg = cfg
    self.image = vit.Vit(cfg.image, rngs)
    self.text = TextTower(cfg.text, rngs)
    self.image_proj = param(rngs, nnx.initializers.normal(di ** -0.5), (di, j), ("embed", None))
    self.text_proj = param(rngs, nnx.initializers.normal(dt ** -0.5), (dt, j), ("embed", None))
    self.logits = ContrastiveLogits(cfg, rngs)

  def encode_images(self, images_BxSxSxC: jax.Array, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """L2-normalised image embeddings (B, joint_dim), float32."""
    pooled_BxD = self.image(images_BxSxSxC, dropout_rng).astype(jnp.float32)
    return parallel.constrain(l2_normalize(pooled_BxD @ self.image_proj[...]), ("batch", None))

  def encode_texts(self, tokens_BxL: jax.Array, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """L2-normalised caption embeddings (B, joint_dim), float32."""
    pooled_BxD = self.text(tokens_BxL, dropout_rng)
    return parallel.constrain(l2_normalize(pooled_BxD @ self.text_proj[...]), ("batch", None))

  def logit_scale(self) -> jax.Array:
    return jnp.exp(clamp_inward_gradient(self.logits.log_scale[...], math.log(self.cfg.logit_scale_max)))

  def logit_bias(self) -> jax.Array:
    return self.logits.bias[...]

  def __call__(self, images_BxSxSxC, tokens_BxL, dropout_rng=None):
    """(image embeddings, text embeddings), each (B, joint_dim)."""
    rng_image, rng_text = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    return self.encode_images(images_BxSxSxC, rng_image), self.encode_texts(tokens_BxL, rng_text)


def _stack_params(s: StackConfig) -> int:
  d, f = s.embed_dim, s.mlp_dim
  return s.num_layers * (4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d)


def text_param_count(cfg: TextTowerConfig) -> int:
  d = cfg.stack.embed_dim
  return cfg.vocab_size * d + cfg.max_len * d + _stack_params(cfg.stack) + 2 * d


def param_count(cfg: TwoTowerConfig) -> int:
  projections = (cfg.image.stack.embed_dim + cfg.text.stack.embed_dim) * cfg.joint_dim
  return vit.param_count(cfg.image) + text_param_count(cfg.text) + projections + 2


def text_forward_matmul_flops(cfg: TextTowerConfig, text_len: int) -> float:
  """Forward FLOPs of one caption's matmuls (no output head; lookups are not matmuls).
  Attention counts all T x T scores even when causal, as the GPT estimate does."""
  s = cfg.stack
  d, L = s.embed_dim, s.num_layers
  return 2.0 * text_len * L * (4 * d * d + 2 * d * s.mlp_dim) + 4.0 * L * text_len * text_len * d


def train_flops_per_example(cfg: TwoTowerConfig, text_len: Optional[int] = None) -> float:
  """Forward + backward FLOPs of one image-caption pair: 3 x the forward matmuls of both towers
  and both projections. The B x B similarity matrix (2 * B * J per pair forward) is left out:
  it depends on the batch and is under 1% of a step at ViT-B sizes."""
  text_len = cfg.text.max_len if text_len is None else text_len
  projections = 2.0 * (cfg.image.stack.embed_dim + cfg.text.stack.embed_dim) * cfg.joint_dim
  forward = vit.forward_matmul_flops(cfg.image) + text_forward_matmul_flops(cfg.text, text_len) + projections
  return 3.0 * forward


# ---- from the run's config ----------------------------------------------------------------

def validate_two_tower(config) -> None:
  """ConfigError naming the field for two-tower settings the model cannot build."""
  m, d = config.model, config.data
  if m.loss not in LOSSES:
    raise ConfigError(f"config.model.loss={m.loss!r}: choose one of {LOSSES}")
  for tower in ("image", "text"):
    section = m[tower]
    for field in ("num_layers", "num_heads", "embed_dim", "mlp_dim"):
      if not (isinstance(section[field], int) and section[field] > 0):
        raise ConfigError(f"config.model.{tower}.{field}={section[field]!r}: must be a positive integer")
    if section.embed_dim % section.num_heads:
      raise ConfigError(f"config.model.{tower}.embed_dim={section.embed_dim} must be divisible by "
                        f"config.model.{tower}.num_heads={section.num_heads}")
    if section.positions != "learned":
      raise ConfigError(f"config.model.{tower}.positions={section.positions!r}: the towers use learned "
                        "position embeddings; set 'learned'")
  if m.image.pool not in vit.POOLS:
    raise ConfigError(f"config.model.image.pool={m.image.pool!r}: choose one of {vit.POOLS}")
  if m.text.pool not in TEXT_POOLS:
    raise ConfigError(f"config.model.text.pool={m.text.pool!r}: choose one of {TEXT_POOLS}")
  if not isinstance(m.text.causal, bool):
    raise ConfigError(f"config.model.text.causal={m.text.causal!r}: must be True or False")
  if not (isinstance(m.image.patch_size, int) and m.image.patch_size > 0):
    raise ConfigError(f"config.model.image.patch_size={m.image.patch_size!r}: must be a positive integer")
  if d.image_size % m.image.patch_size:
    raise ConfigError(f"config.data.image_size={d.image_size} must be divisible by "
                      f"config.model.image.patch_size={m.image.patch_size}")
  if not (isinstance(d.text_len, int) and d.text_len >= 2):
    raise ConfigError(f"config.data.text_len={d.text_len!r}: must be an integer >= 2 (BOS and EOS)")
  if not (isinstance(m.joint_dim, int) and m.joint_dim > 0):
    raise ConfigError(f"config.model.joint_dim={m.joint_dim!r}: must be a positive integer")
  if not m.logit_scale_max > 0:
    raise ConfigError(f"config.model.logit_scale_max={m.logit_scale_max}: must be positive")
  if m.logit_scale_init < 0 or m.logit_scale_init > m.logit_scale_max:
    raise ConfigError(f"config.model.logit_scale_init={m.logit_scale_init}: must be 0 (the loss's default) "
                      f"or in (0, config.model.logit_scale_max={m.logit_scale_max}]")
  for field in ("pixel_mean", "pixel_std"):
    values = tuple(d[field])
    if len(values) != IMAGE_CHANNELS:
      raise ConfigError(f"config.data.{field}={values}: needs {IMAGE_CHANNELS} values (R, G, B)")
  if min(d.pixel_std) <= 0:
    raise ConfigError(f"config.data.pixel_std={tuple(d.pixel_std)}: must be positive")


def two_tower_config(config, vocab_size: int) -> TwoTowerConfig:
  m, d = config.model, config.data
  scale_init = float(m.logit_scale_init) or DEFAULT_LOGIT_SCALE[m.loss]
  image = vit.VitConfig(image_size=int(d.image_size), patch_size=int(m.image.patch_size), channels=IMAGE_CHANNELS,
                        stack=text_assets.stack_config(m.image), pool=m.image.pool,
                        pixel_mean=tuple(float(v) for v in d.pixel_mean),
                        pixel_std=tuple(float(v) for v in d.pixel_std))
  text = TextTowerConfig(vocab_size=int(vocab_size), max_len=int(d.text_len), stack=text_assets.stack_config(m.text),
                         causal=bool(m.text.causal), pool=m.text.pool)
  return TwoTowerConfig(image=image, text=text, joint_dim=int(m.joint_dim), loss=m.loss,
                        logit_scale_init=scale_init, logit_scale_max=float(m.logit_scale_max),
                        logit_bias_init=float(m.logit_bias_init))
