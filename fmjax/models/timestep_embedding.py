"""What the denoisers (U-Net, DiT) share on their input side: the timestep and condition embedding.

    emb_BxD = TimestepMlp(sinusoidal_embedding(t_B)) + Linear(cond_BxE)

t_B are the integer diffusion timesteps; TimestepMlp is Linear, SiLU, Linear; cond_BxE is an
already-embedded condition (a class's or a caption's vector, or the learned null one).

Adding the projected condition to the time embedding is ADM's way of conditioning on a class;
here the condition may as well be a caption's pooled features, so one code path serves both.
The U-Net projects the sum into every residual block, the DiT feeds it to adaLN.

The embedding is computed in float32 whatever the compute dtype: it is one row per image, so
it costs nothing, and it sets the scale and shift of every normalised activation downstream.

Also here: `check_inputs`, the shape checks of the denoisers' common call signature, so both
models reject bad inputs with the same words.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.models.transformer import param


def sinusoidal_embedding(t_B: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """(B,) timesteps -> (B, dim) float32: [sin(t * f_k), cos(t * f_k)] with frequencies f_k
  falling geometrically from 1 to 1 / max_period, as the Transformer's position encoding."""
  if dim < 2:
    raise ValueError(f"sinusoidal_embedding dim={dim}: must be >= 2 (one sine and one cosine)")
  half = dim // 2
  freqs_F = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxF = t_B.astype(jnp.float32)[:, None] * freqs_F[None, :]
  emb_BxD = jnp.concatenate([jnp.sin(angles_BxF), jnp.cos(angles_BxF)], axis=-1)
  if dim % 2:  # an odd width gets one constant zero feature
    emb_BxD = jnp.pad(emb_BxD, ((0, 0), (0, 1)))
  return emb_BxD


class Linear(nnx.Module):
  """x @ W + b, computed in x's dtype; W carries the logical names `names` (in, out)."""

  def __init__(self, in_dim: int, out_dim: int, rngs: nnx.Rngs, *, init=nnx.initializers.xavier_uniform(),
               names=("embed", "mlp")):
    self.kernel = param(rngs, init, (in_dim, out_dim), names)
    self.bias = param(rngs, nnx.initializers.zeros, (out_dim,), (None,))

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = x.dtype
    return x @ self.kernel[...].astype(dt) + self.bias[...].astype(dt)


class TimestepMlp(nnx.Module):
  """Sinusoidal features -> Linear -> SiLU -> Linear: lets the network reshape the fixed code."""

  def __init__(self, in_dim: int, out_dim: int, rngs: nnx.Rngs, *, init=nnx.initializers.xavier_uniform()):
    self.fc1 = Linear(in_dim, out_dim, rngs, init=init, names=("embed", "mlp"))
    self.fc2 = Linear(out_dim, out_dim, rngs, init=init, names=("mlp", "embed"))

  def __call__(self, features_BxF: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(features_BxF)))


class TimeConditionEmbedding(nnx.Module):
  """TimestepMlp(sinusoidal(t)) + Linear(cond): (B, out_dim) float32; the Linear exists only
  when cond_dim > 0."""

  def __init__(self, freq_dim: int, out_dim: int, cond_dim: int, rngs: nnx.Rngs, *,
               init=nnx.initializers.xavier_uniform()):
    self.freq_dim = freq_dim
    self.time_mlp = TimestepMlp(freq_dim, out_dim, rngs, init=init)
    self.cond_proj = Linear(cond_dim, out_dim, rngs, init=init) if cond_dim > 0 else None

  def __call__(self, t_B: jax.Array, cond_BxE: Optional[jax.Array]) -> jax.Array:
    emb_BxD = self.time_mlp(sinusoidal_embedding(t_B, self.freq_dim))
    if self.cond_proj is not None:
      emb_BxD = emb_BxD + self.cond_proj(cond_BxE.astype(jnp.float32))
    return parallel.constrain(emb_BxD, ("batch", "act_embed"))


def check_inputs(model: str, x_BxHxWxC, t_B, cond_BxE, *, image_size: int, channels: int, cond_dim: int) -> None:
  """ValueError unless x is (B, S, S, C), t is (B,) and cond is (B, cond_dim), or None exactly
  when the model is unconditional (cond_dim == 0)."""
  expected = (image_size, image_size, channels)
  if x_BxHxWxC.ndim != 4 or tuple(x_BxHxWxC.shape[1:]) != expected:
    raise ValueError(f"{model} x_BxHxWxC: expected shape (batch, {image_size}, {image_size}, {channels}) "
                     f"(config.data.image_size={image_size}, config.model.channels={channels}), "
                     f"got {tuple(x_BxHxWxC.shape)}")
  b = x_BxHxWxC.shape[0]
  if tuple(jnp.shape(t_B)) != (b,):
    raise ValueError(f"{model} t_B: expected shape ({b},), one timestep per image, got {tuple(jnp.shape(t_B))}")
  if cond_dim == 0 and cond_BxE is not None:
    raise ValueError(f"{model} is unconditional (cond_dim=0) but was given cond_BxE of shape "
                     f"{tuple(cond_BxE.shape)}: pass None, or build the model with cond_dim > 0")
  if cond_dim > 0 and cond_BxE is None:
    raise ValueError(f"{model} is conditional (cond_dim={cond_dim}): cond_BxE of shape ({b}, {cond_dim}) is "
                     "required (the learned null condition stands for 'no condition')")
  if cond_BxE is not None and tuple(cond_BxE.shape) != (b, cond_dim):
    raise ValueError(f"{model} cond_BxE: expected shape ({b}, {cond_dim}), got {tuple(cond_BxE.shape)}")
