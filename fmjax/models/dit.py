"""DiT (Peebles & Xie 2023): a transformer denoiser on image patches, conditioned by adaLN-Zero.

    x (B, S, S, C) -> non-overlapping P x P patches (vit.patchify), one Linear -> (B, N, D)
    + fixed 2-D sin-cos position embedding (not learned: the grid is fixed, and it is DiT's choice)
    c = TimestepMlp(sinusoidal(t)) + Linear(cond)          (timestep_embedding, D wide)
    -> the shared TransformerStack with adaLN-Zero (StackConfig.adaln=True), every block
       modulated by c
    -> final layer: LayerNorm (no affine), x * (1 + scale) + shift from SiLU(c), a zero-init
       Linear to P * P * C -> unpatchify -> (B, S, S, C) float32

At initialisation every block is the identity (its gates are zero) and the output is zero (the
last Linear is), as in DiT. The final layer runs in float32: it is the prediction, and its cost
(N x D x P*P*C per image) is a rounding error beside the stack's.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax import parallel
from fmjax.jaxpr_flops import matmul_flops
from fmjax.models.timestep_embedding import Linear, TimeConditionEmbedding, check_inputs
from fmjax.models.transformer import AdaLNModulation, LayerNorm, StackConfig, TransformerStack, modulate
from fmjax.models.vit import patchify

FREQUENCY_DIM = 256                  # width of the sinusoidal timestep features, as in DiT


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  image_size: int
  channels: int
  patch_size: int
  stack: StackConfig                 # must have adaln=True
  cond_dim: int = 0                  # 0 = unconditional

  def __post_init__(self):
    for value, field in ((self.image_size, "data.image_size"), (self.channels, "model.channels"),
                         (self.patch_size, "model.dit.patch_size")):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{field}={value!r}: must be a positive integer")
    if self.image_size % self.patch_size:
      raise ValueError(f"config.data.image_size={self.image_size} must be divisible by "
                       f"config.model.dit.patch_size={self.patch_size}")
    if not self.stack.adaln:
      raise ValueError("config.model.dit: the DiT's StackConfig needs adaln=True (its blocks are conditioned "
                       "by adaLN-Zero)")
    if self.stack.embed_dim % 4:
      raise ValueError(f"config.model.dit.embed_dim={self.stack.embed_dim} must be divisible by 4 (the 2-D "
                       "sin-cos position embedding gives a sine and a cosine per axis)")
    if isinstance(self.cond_dim, bool) or not isinstance(self.cond_dim, int) or self.cond_dim < 0:
      raise ValueError(f"config.model.cond_dim={self.cond_dim!r}: must be an integer >= 0 (0: unconditional)")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels


def sincos_position_embedding(grid: int, dim: int) -> np.ndarray:
  """(grid * grid, dim) float32, tokens in row-major order: the first half of the features
  encodes the row, the second the column, each as [sin, cos] of dim / 4 frequencies."""
  quarter = dim // 4
  freqs_F = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
  angles_GxF = np.arange(grid, dtype=np.float64)[:, None] * freqs_F[None]
  code_GxH = np.concatenate([np.sin(angles_GxF), np.cos(angles_GxF)], axis=1)
  rows_NxH = np.repeat(code_GxH, grid, axis=0)        # token r * grid + c: row r
  cols_NxH = np.tile(code_GxH, (grid, 1))             # ... and column c
  return np.concatenate([rows_NxH, cols_NxH], axis=1).astype(np.float32)


def unpatchify(patches_BxNxK: jax.Array, patch: int, channels: int) -> jax.Array:
  """The inverse of vit.patchify: (B, N, P * P * C) -> (B, S, S, C)."""
  b, n, _ = patches_BxNxK.shape
  g = int(round(n ** 0.5))
  x = patches_BxNxK.reshape(b, g, g, patch, patch, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * patch, g * patch, channels)


class DiT(nnx.Module):
  def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
    d = cfg.stack.embed_dim
    self.cfg = cfg
    # Patch embedding as a Linear on the flattened patch (rows ordered as a (P, P, C, D) conv kernel).
    self.patch_embed = Linear(cfg.patch_dim, d, rngs, names=(None, "embed"))
    # std 0.02 for the embedding MLPs, as DiT initialises them.
    self.embedding = TimeConditionEmbedding(FREQUENCY_DIM, d, cfg.cond_dim, rngs, init=nnx.initializers.normal(0.02))
    self.stack = TransformerStack(cfg.stack, rngs)
    self.final_norm = LayerNorm(d, rngs, affine=False)
    self.final_modulation = AdaLNModulation(d, 2, rngs)
    self.final_proj = Linear(d, cfg.patch_dim, rngs, init=nnx.initializers.zeros, names=("embed", None))

  def __call__(self, x_BxHxWxC: jax.Array, t_B: jax.Array, cond_BxE: Optional[jax.Array],
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """The prediction (eps or v, whichever it is trained on), (B, H, W, C) float32."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    check_inputs("DiT", x_BxHxWxC, t_B, cond_BxE, image_size=cfg.image_size, channels=cfg.channels,
                 cond_dim=cfg.cond_dim)
    c_BxD = self.embedding(t_B, cond_BxE)
    x_BxNxD = self.patch_embed(patchify(x_BxHxWxC.astype(dt), cfg.patch_size))
    x_BxNxD = x_BxNxD + jnp.asarray(sincos_position_embedding(cfg.grid, cfg.stack.embed_dim), dt)
    x_BxNxD = parallel.constrain(x_BxNxD, ("batch", "length", "act_embed"))
    b, n = x_BxNxD.shape[:2]
    positions_BxN = jnp.broadcast_to(jnp.arange(n), (b, n))  # read only by rotary attention, if on
    x_BxNxD, _ = self.stack(x_BxNxD, positions_BxT=positions_BxN, mask=None, is_causal=False,
                            dropout_rng=dropout_rng, condition_BxD=c_BxD)
    shift_BxD, scale_BxD = self.final_modulation(c_BxD, jnp.float32)
    y_BxNxD = modulate(self.final_norm(x_BxNxD).astype(jnp.float32), shift_BxD, scale_BxD)
    return unpatchify(self.final_proj(y_BxNxD), cfg.patch_size, cfg.channels)


def param_count(cfg: DiTConfig) -> int:
  s = cfg.stack
  d, f, k, e = s.embed_dim, s.mlp_dim, cfg.patch_dim, cfg.cond_dim
  linear = lambda i, o: i * o + o
  # Attention (q, k, v, out with biases), MLP, adaLN's 6D modulation; the LayerNorms have no affine.
  per_layer = linear(d, 3 * d) + linear(d, d) + linear(d, f) + linear(f, d) + linear(d, 6 * d)
  embedding = linear(FREQUENCY_DIM, d) + linear(d, d) + (linear(e, d) if e else 0)
  final = linear(d, 2 * d) + linear(d, k)
  return linear(k, d) + embedding + s.num_layers * per_layer + final


def forward_flops(cfg: DiTConfig) -> float:
  """Forward FLOPs of one image's matmuls (attention included), counted on the traced program.
  Traced in float32, where attention always takes the XLA path, whose matmuls the count sees."""
  cfg32 = dataclasses.replace(cfg, stack=dataclasses.replace(cfg.stack, dtype="float32"))
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DiT(cfg32, nnx.Rngs(0))))
  x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  cond = jax.ShapeDtypeStruct((1, cfg.cond_dim), jnp.float32) if cfg.cond_dim else None
  jaxpr = jax.make_jaxpr(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))(state, x, t, cond)
  return matmul_flops(jaxpr)
