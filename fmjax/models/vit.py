"""ViT: an image encoder from the shared transformer blocks.

    uint8 / float pixels in [0, 255] -> (x / 255 - mean) / std      (on the device, so training
                                                                     and inference share it)
    -> non-overlapping patches, flattened and projected (one matmul)
    -> [CLS] + patches, + learned position embeddings -> dropout
    -> TransformerStack (pre-LN blocks, no mask) -> final LayerNorm
    -> pool: the CLS token ('cls') or the mean of the patch tokens ('gap')

The CLS token exists only when it is pooled. Patches are cut with a reshape and embedded with
a matmul rather than a strided convolution: for non-overlapping patches the two are the same
linear map, and the matmul is one plain GEMM of (B * patches, P * P * C) x (P * P * C, D) that
XLA tiles (and shards, by the same logical names) like every other matmul of the model, on GPU
and TPU alike, with no convolution algorithm or layout search. Speed hardly decides it: at
ViT-B/16 the patch embedding is under 1% of the forward FLOPs, and the transpose that cuts
the patches moves the image once (38 MB in bf16 at batch 128, tens of microseconds on an
H100). The kernel's rows are ordered (row-in-patch, column-in-patch, channel), as a conv
kernel (P, P, C, D) flattened, so conv-trained weights load by a reshape.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.models.transformer import LayerNorm, StackConfig, TransformerStack, dropout, param

POOLS = ("cls", "gap")


@dataclasses.dataclass(frozen=True)
class VitConfig:
  image_size: int
  patch_size: int
  channels: int
  stack: StackConfig
  pool: str = "cls"
  pixel_mean: tuple = (0.5, 0.5, 0.5)
  pixel_std: tuple = (0.5, 0.5, 0.5)

  def __post_init__(self):
    if self.pool not in POOLS:
      raise ValueError(f"ViT pool {self.pool!r}: choose one of {POOLS}")
    if self.image_size % self.patch_size:
      raise ValueError(f"ViT image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
    for name in ("pixel_mean", "pixel_std"):
      if len(getattr(self, name)) != self.channels:
        raise ValueError(f"ViT {name}={getattr(self, name)} needs one value per channel ({self.channels})")
    if min(self.pixel_std) <= 0:
      raise ValueError(f"ViT pixel_std={self.pixel_std} must be positive")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def num_tokens(self) -> int:
    return self.num_patches + (self.pool == "cls")

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels


def normalize_pixels(images_BxSxSxC: jax.Array, mean, std) -> jax.Array:
  """[0, 255] pixels -> (x / 255 - mean) / std, in float32."""
  x = images_BxSxSxC.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def patchify(x_BxSxSxC: jax.Array, patch: int) -> jax.Array:
  """(B, S, S, C) -> (B, N, P * P * C), patches in row-major order of the grid."""
  b, s, _, c = x_BxSxSxC.shape
  g = s // patch
  x = x_BxSxSxC.reshape(b, g, patch, g, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, patch * patch * c)


class Vit(nnx.Module):
  def __init__(self, cfg: VitConfig, rngs: nnx.Rngs):
    d = cfg.stack.embed_dim
    self.cfg = cfg
    # LeCun-normal fan-in init for the patch projection, as a conv kernel would get.
    self.patch_embed = param(rngs, nnx.initializers.lecun_normal(), (cfg.patch_dim, d), (None, "embed"))
    self.patch_bias = param(rngs, nnx.initializers.zeros, (d,), (None,))
    if cfg.pool == "cls":
      self.cls_token = param(rngs, nnx.initializers.zeros, (d,), (None,))
    self.pos_embed = param(rngs, nnx.initializers.normal(0.02), (cfg.num_tokens, d), (None, "embed"))
    self.stack = TransformerStack(cfg.stack, rngs)
    self.ln_final = LayerNorm(d, rngs)

  def tokens(self, images_BxSxSxC: jax.Array, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """Final-LayerNorm token features (B, tokens, D) in the compute dtype; CLS first if any."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    expected = (cfg.image_size, cfg.image_size, cfg.channels)
    if images_BxSxSxC.ndim != 4 or tuple(images_BxSxSxC.shape[1:]) != expected:
      raise ValueError(f"ViT images: expected shape (batch, {', '.join(map(str, expected))}), "
                       f"got {tuple(images_BxSxSxC.shape)}")
    rng_embed, rng_stack = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x_BxSxSxC = normalize_pixels(images_BxSxSxC, cfg.pixel_mean, cfg.pixel_std).astype(dt)
    patches_BxNxK = patchify(x_BxSxSxC, cfg.patch_size)
    x_BxNxD = patches_BxNxK @ self.patch_embed[...].astype(dt) + self.patch_bias[...].astype(dt)
    if cfg.pool == "cls":
      cls_Bx1xD = jnp.broadcast_to(self.cls_token[...].astype(dt), (x_BxNxD.shape[0], 1, x_BxNxD.shape[2]))
      x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
    x_BxNxD = x_BxNxD + self.pos_embed[...].astype(dt)
    x_BxNxD = parallel.constrain(dropout(x_BxNxD, cfg.stack.dropout, rng_embed), ("batch", "length", "act_embed"))
    b, n = x_BxNxD.shape[:2]
    positions_BxN = jnp.broadcast_to(jnp.arange(n), (b, n))  # only read by rotary, which ViT does not use
    x_BxNxD, _ = self.stack(x_BxNxD, positions_BxT=positions_BxN, mask=None, is_causal=False,
                            dropout_rng=rng_stack)
    return self.ln_final(x_BxNxD)

  def __call__(self, images_BxSxSxC: jax.Array, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """The pooled image representation (B, D) in the compute dtype."""
    x_BxNxD = self.tokens(images_BxSxSxC, dropout_rng)
    if self.cfg.pool == "cls":
      return x_BxNxD[:, 0]
    return x_BxNxD.astype(jnp.float32).mean(axis=1).astype(x_BxNxD.dtype)


def param_count(cfg: VitConfig) -> int:
  s = cfg.stack
  d, f, L = s.embed_dim, s.mlp_dim, s.num_layers
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
  embeddings = cfg.patch_dim * d + d + cfg.num_tokens * d + (d if cfg.pool == "cls" else 0)
  return embeddings + L * per_layer + 2 * d


def forward_matmul_flops(cfg: VitConfig) -> float:
  """Forward FLOPs of one image's matmuls: patch embedding, the blocks' weights, attention
  scores and values (2 * T * D each per token and layer)."""
  s = cfg.stack
  d, L, t = s.embed_dim, s.num_layers, cfg.num_tokens
  patch = 2.0 * cfg.num_patches * cfg.patch_dim * d
  blocks = 2.0 * t * L * (4 * d * d + 2 * d * s.mlp_dim)
  attention = 4.0 * L * t * t * d
  return patch + blocks + attention
