"""The DDPM U-Net (Ho et al. 2020; the ddpm-cifar10 model at its defaults), channels last.

    x (B, S, S, C) -> conv_in 3x3 -> down path: per level, `num_res_blocks` ResBlocks (each
    followed by self-attention at `attention_resolutions`), then a stride-2 3x3 conv except at
    the last level; every block's output is kept as a skip
    -> middle: ResBlock, attention, ResBlock
    -> up path, mirrored: `num_res_blocks + 1` ResBlocks per level, each on [h, skip] concatenated
    along channels, then nearest-neighbour 2x upsampling + 3x3 conv except at the top level
    -> GroupNorm, SiLU, conv_out 3x3 -> (B, S, S, C) float32

ResBlock: GroupNorm, SiLU, conv 3x3, + a projection of SiLU(emb) added per channel, GroupNorm,
SiLU, dropout, conv 3x3; a 1x1 conv on the skip path when the channel count changes. `emb` is
the time embedding (4 x base_channels wide) plus the projected condition (timestep_embedding).
The last conv of every residual branch, the attention output projection and conv_out start at
zero, so at initialisation each block is its skip path and the prediction is zero.

Convolutions are `jax.lax.conv_general_dilated` in NHWC / HWIO: channels last is the layout of
the images and of every other activation in fmjax (no transposes at the model's edges), and an
HWIO kernel (kh, kw, in, out) names its axes like a Dense kernel, so the same logical sharding
rules apply ('embed' on the input channels, 'mlp' on the output ones). XLA picks the device
layout itself on GPU and TPU. Padding is symmetric (1 pixel for a 3x3 kernel), also at stride 2.

The ends are the exception to that naming: the image's 1 or 3 channels cannot be split over a
mesh axis, so conv_in's input and conv_out's output channel axes stay replicated.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from fmjax import parallel
from fmjax.jaxpr_flops import matmul_flops
from fmjax.models import attention
from fmjax.models.timestep_embedding import Linear, TimeConditionEmbedding, check_inputs
from fmjax.models.transformer import DTYPES, dropout, param

CONV_NAMES = (None, None, "embed", "mlp")
ACTIVATION_NAMES = ("batch", None, None, None)
GROUP_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  image_size: int
  channels: int                      # image channels in and out (1 grey, 3 RGB)
  base_channels: int = 128
  channel_mults: tuple = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: tuple = (16,)   # feature-map sides (pixels) that get self-attention
  attention_heads: int = 1
  dropout: float = 0.0
  num_groups: int = 32               # GroupNorm groups (must divide every channel count)
  cond_dim: int = 0                  # 0 = unconditional
  dtype: str = "float32"
  remat: bool = False                # jax.checkpoint each resolution level's blocks (memory for compute)

  def __post_init__(self):
    def positive(value, field):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{field}={value!r}: must be a positive integer")

    positive(self.image_size, "data.image_size")
    positive(self.channels, "model.channels")
    positive(self.base_channels, "model.unet.base_channels")
    positive(self.num_res_blocks, "model.unet.num_res_blocks")
    positive(self.num_groups, "model.unet.num_groups")
    positive(self.attention_heads, "model.unet.attention_heads")
    if not self.channel_mults:
      raise ValueError("config.model.unet.channel_mults=(): needs at least one level")
    for m in self.channel_mults:
      positive(m, "model.unet.channel_mults")
    levels = len(self.channel_mults)
    if self.image_size % 2 ** (levels - 1):
      raise ValueError(f"config.data.image_size={self.image_size} must be divisible by 2**(levels-1)="
                       f"{2 ** (levels - 1)} for config.model.unet.channel_mults={tuple(self.channel_mults)}")
    widths = self.level_channels
    if any(w % self.num_groups for w in widths):
      raise ValueError(f"config.model.unet.num_groups={self.num_groups} must divide every level's channels "
                       f"(config.model.unet.base_channels={self.base_channels} x channel_mults="
                       f"{tuple(self.channel_mults)} = {widths})")
    sides = self.level_sides
    unreached = [r for r in self.attention_resolutions if r not in sides]
    if unreached:
      raise ValueError(f"config.model.unet.attention_resolutions={tuple(self.attention_resolutions)}: {unreached} "
                       f"not among this U-Net's feature-map sides {sides}")
    attended = [w for w, s in zip(widths, sides) if s in self.attention_resolutions] + [widths[-1]]  # + middle
    if any(w % self.attention_heads for w in attended):
      raise ValueError(f"config.model.unet.attention_heads={self.attention_heads} must divide the channels of "
                       f"every attention layer ({sorted(set(attended))})")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"config.model.unet.dropout={self.dropout}: must be in [0, 1)")
    if isinstance(self.cond_dim, bool) or not isinstance(self.cond_dim, int) or self.cond_dim < 0:
      raise ValueError(f"config.model.cond_dim={self.cond_dim!r}: must be an integer >= 0 (0: unconditional)")
    if self.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={self.dtype!r}: choose one of {tuple(DTYPES)}")

  @property
  def level_channels(self) -> list[int]:
    return [self.base_channels * m for m in self.channel_mults]

  @property
  def level_sides(self) -> list[int]:
    return [self.image_size // 2 ** i for i in range(len(self.channel_mults))]

  @property
  def emb_dim(self) -> int:
    return 4 * self.base_channels

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


@dataclasses.dataclass(frozen=True)
class LevelPlan:
  side: int                          # feature-map side (pixels) of the level's blocks
  blocks: tuple                      # (in_channels, out_channels) of each ResBlock
  attention: bool                    # self-attention after each ResBlock
  resample: bool                     # down path: downsample after the blocks; up path: upsample


def plan(cfg: UNetConfig) -> tuple[list[LevelPlan], list[LevelPlan]]:
  """The down levels (top first) and up levels (bottom first): channels of every block, with the
  up path's inputs widened by the skip each block concatenates."""
  base, n, sides = cfg.base_channels, cfg.num_res_blocks, cfg.level_sides
  last = len(cfg.channel_mults) - 1
  skips, down, ch = [base], [], base
  for i, width in enumerate(cfg.level_channels):
    blocks = []
    for _ in range(n):
      blocks.append((ch, width))
      ch = width
      skips.append(ch)
    if i < last:
      skips.append(ch)               # the downsampled map is a skip too
    down.append(LevelPlan(sides[i], tuple(blocks), sides[i] in cfg.attention_resolutions, i < last))
  up = []
  for i in reversed(range(last + 1)):
    width, blocks = cfg.level_channels[i], []
    for _ in range(n + 1):
      blocks.append((ch + skips.pop(), width))
      ch = width
    up.append(LevelPlan(sides[i], tuple(blocks), sides[i] in cfg.attention_resolutions, i > 0))
  return down, up


def _split(rng: Optional[jax.Array], n: int) -> list:
  return [None] * n if rng is None else list(jax.random.split(rng, n))


class Conv(nnx.Module):
  """k x k convolution, stride 1 or 2, symmetric padding (same size, or half at stride 2)."""

  def __init__(self, in_ch: int, out_ch: int, rngs: nnx.Rngs, *, kernel_size: int = 3, stride: int = 1,
               init=nnx.initializers.xavier_uniform(), names=CONV_NAMES):
    self.kernel = param(rngs, init, (kernel_size, kernel_size, in_ch, out_ch), names)
    self.bias = param(rngs, nnx.initializers.zeros, (out_ch,), (None,))
    self.stride = stride

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    dt = x_BxHxWxC.dtype
    pad = self.kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(x_BxHxWxC, self.kernel[...].astype(dt), (self.stride, self.stride),
                                     ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.bias[...].astype(dt)


class GroupNorm(nnx.Module):
  def __init__(self, channels: int, groups: int, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones, (channels,), (None,))
    self.bias = param(rngs, nnx.initializers.zeros, (channels,), (None,))
    self.groups = groups

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    # Statistics in float32 under bf16 compute, as the transformer's LayerNorm.
    b, h, w, c = x_BxHxWxC.shape
    x_BxHxWxGxK = x_BxHxWxC.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
    mean = x_BxHxWxGxK.mean((1, 2, 4), keepdims=True)
    var = jnp.square(x_BxHxWxGxK - mean).mean((1, 2, 4), keepdims=True)
    y = ((x_BxHxWxGxK - mean) * jax.lax.rsqrt(var + GROUP_NORM_EPS)).reshape(b, h, w, c)
    return (y * self.scale[...] + self.bias[...]).astype(x_BxHxWxC.dtype)


class ResBlock(nnx.Module):
  def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, rngs: nnx.Rngs):
    self.norm1 = GroupNorm(in_ch, cfg.num_groups, rngs)
    self.conv1 = Conv(in_ch, out_ch, rngs)
    self.emb_proj = Linear(cfg.emb_dim, out_ch, rngs)
    self.norm2 = GroupNorm(out_ch, cfg.num_groups, rngs)
    self.conv2 = Conv(out_ch, out_ch, rngs, init=nnx.initializers.zeros)
    self.skip = Conv(in_ch, out_ch, rngs, kernel_size=1) if in_ch != out_ch else None
    self.rate = cfg.dropout

  def __call__(self, x_BxHxWxC, emb_BxE, dropout_rng=None):
    dt = x_BxHxWxC.dtype
    h = self.conv1(jax.nn.silu(self.norm1(x_BxHxWxC)))
    h = h + self.emb_proj(jax.nn.silu(emb_BxE)).astype(dt)[:, None, None, :]
    h = self.conv2(dropout(jax.nn.silu(self.norm2(h)), self.rate, dropout_rng))
    return (x_BxHxWxC if self.skip is None else self.skip(x_BxHxWxC)) + h


class AttentionBlock(nnx.Module):
  """x + proj(attention(GroupNorm(x))) over the H * W positions."""

  def __init__(self, ch: int, cfg: UNetConfig, rngs: nnx.Rngs):
    self.norm = GroupNorm(ch, cfg.num_groups, rngs)
    self.query = Linear(ch, ch, rngs)
    self.key = Linear(ch, ch, rngs)
    self.value = Linear(ch, ch, rngs)
    self.proj = Linear(ch, ch, rngs, init=nnx.initializers.zeros, names=("mlp", "embed"))
    self.heads = cfg.attention_heads

  def __call__(self, x_BxHxWxC):
    b, h, w, c = x_BxHxWxC.shape
    tokens_BxTxC = self.norm(x_BxHxWxC).reshape(b, h * w, c)
    split = lambda y: y.reshape(b, h * w, self.heads, c // self.heads)
    # XLA's attention, not cuDNN's: heads here are wide (256 channels, one head, in DDPM) and the
    # maps small (256 positions), outside what the fused kernel takes and where it would pay.
    y_BxTxHxK = attention.attend(split(self.query(tokens_BxTxC)), split(self.key(tokens_BxTxC)),
                                 split(self.value(tokens_BxTxC)), mask=None, is_causal=False, implementation="xla")
    return x_BxHxWxC + self.proj(y_BxTxHxK.reshape(b, h * w, c)).reshape(b, h, w, c)


class ResAttnBlock(nnx.Module):
  """A ResBlock, and self-attention after it at the attention resolutions."""

  def __init__(self, in_ch: int, out_ch: int, with_attention: bool, cfg: UNetConfig, rngs: nnx.Rngs):
    self.res = ResBlock(in_ch, out_ch, cfg, rngs)
    self.attn = AttentionBlock(out_ch, cfg, rngs) if with_attention else None

  def __call__(self, x_BxHxWxC, emb_BxE, dropout_rng=None):
    h = self.res(x_BxHxWxC, emb_BxE, dropout_rng)
    if self.attn is not None:
      h = self.attn(h)
    return parallel.constrain(h, ACTIVATION_NAMES)


class DownLevel(nnx.Module):
  def __init__(self, level: LevelPlan, cfg: UNetConfig, rngs: nnx.Rngs):
    self.blocks = nnx.List([ResAttnBlock(i, o, level.attention, cfg, rngs) for i, o in level.blocks])
    out = level.blocks[-1][1]
    self.downsample = Conv(out, out, rngs, stride=2) if level.resample else None

  def __call__(self, h_BxHxWxC, emb_BxE, dropout_rng=None):
    """(h, the skips: every block's output, then the downsampled map if any)."""
    skips = []
    for block, rng in zip(self.blocks, _split(dropout_rng, len(self.blocks))):
      h_BxHxWxC = block(h_BxHxWxC, emb_BxE, rng)
      skips.append(h_BxHxWxC)
    if self.downsample is not None:
      h_BxHxWxC = self.downsample(h_BxHxWxC)
      skips.append(h_BxHxWxC)
    return h_BxHxWxC, skips


class Middle(nnx.Module):
  def __init__(self, ch: int, cfg: UNetConfig, rngs: nnx.Rngs):
    self.res1 = ResBlock(ch, ch, cfg, rngs)
    self.attn = AttentionBlock(ch, cfg, rngs)
    self.res2 = ResBlock(ch, ch, cfg, rngs)

  def __call__(self, h_BxHxWxC, emb_BxE, dropout_rng=None):
    rng1, rng2 = _split(dropout_rng, 2)
    h_BxHxWxC = self.attn(self.res1(h_BxHxWxC, emb_BxE, rng1))
    return parallel.constrain(self.res2(h_BxHxWxC, emb_BxE, rng2), ACTIVATION_NAMES)


class UpLevel(nnx.Module):
  def __init__(self, level: LevelPlan, cfg: UNetConfig, rngs: nnx.Rngs):
    self.blocks = nnx.List([ResAttnBlock(i, o, level.attention, cfg, rngs) for i, o in level.blocks])
    out = level.blocks[-1][1]
    self.upsample = Conv(out, out, rngs) if level.resample else None

  def __call__(self, h_BxHxWxC, skips, emb_BxE, dropout_rng=None):
    """`skips`: one per block, in the order the blocks take them."""
    for block, skip, rng in zip(self.blocks, skips, _split(dropout_rng, len(self.blocks))):
      h_BxHxWxC = block(jnp.concatenate([h_BxHxWxC, skip], axis=-1), emb_BxE, rng)
    if self.upsample is not None:
      h_BxHxWxC = self.upsample(jnp.repeat(jnp.repeat(h_BxHxWxC, 2, axis=1), 2, axis=2))
    return h_BxHxWxC


def _apply(module: nnx.Module, remat: bool, *args):
  """module(*args), under jax.checkpoint when remat: the level's activations are recomputed in
  the backward pass instead of being kept."""
  if not remat:
    return module(*args)
  graphdef, state = nnx.split(module)
  return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


class UNet(nnx.Module):
  def __init__(self, cfg: UNetConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    base = cfg.base_channels
    down, up = plan(cfg)
    self.embedding = TimeConditionEmbedding(base, cfg.emb_dim, cfg.cond_dim, rngs)
    self.conv_in = Conv(cfg.channels, base, rngs, names=(None, None, None, "mlp"))
    self.down = nnx.List([DownLevel(level, cfg, rngs) for level in down])
    self.middle = Middle(cfg.level_channels[-1], cfg, rngs)
    self.up = nnx.List([UpLevel(level, cfg, rngs) for level in up])
    self.norm_out = GroupNorm(base, cfg.num_groups, rngs)
    self.conv_out = Conv(base, cfg.channels, rngs, init=nnx.initializers.zeros, names=(None, None, "embed", None))

  def __call__(self, x_BxHxWxC: jax.Array, t_B: jax.Array, cond_BxE: Optional[jax.Array],
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """The prediction (eps or v, whichever it is trained on), (B, H, W, C) float32."""
    cfg = self.cfg
    check_inputs("UNet", x_BxHxWxC, t_B, cond_BxE, image_size=cfg.image_size, channels=cfg.channels,
                 cond_dim=cfg.cond_dim)
    emb_BxE = self.embedding(t_B, cond_BxE)
    rngs = _split(dropout_rng, len(self.down) + 1 + len(self.up))
    h = parallel.constrain(self.conv_in(x_BxHxWxC.astype(cfg.compute_dtype)), ACTIVATION_NAMES)
    skips = [h]
    for i, level in enumerate(self.down):
      h, level_skips = _apply(level, cfg.remat, h, emb_BxE, rngs[i])
      skips += level_skips
    h = _apply(self.middle, cfg.remat, h, emb_BxE, rngs[len(self.down)])
    for i, level in enumerate(self.up):
      n = len(level.blocks)
      taken, skips = skips[::-1][:n], skips[:-n]
      h = _apply(level, cfg.remat, h, taken, emb_BxE, rngs[len(self.down) + 1 + i])
    # The last norm and conv in float32: the prediction is the model's output, and cheap here.
    h = jax.nn.silu(self.norm_out(h).astype(jnp.float32))
    return self.conv_out(h)


def param_count(cfg: UNetConfig) -> int:
  conv = lambda k, i, o: k * k * i * o + o
  linear = lambda i, o: i * o + o
  norm = lambda c: 2 * c
  e = cfg.emb_dim
  res = lambda i, o: norm(i) + conv(3, i, o) + linear(e, o) + norm(o) + conv(3, o, o) + (conv(1, i, o) if i != o else 0)
  attn = lambda c: norm(c) + 4 * linear(c, c)
  total = linear(cfg.base_channels, e) + linear(e, e) + (linear(cfg.cond_dim, e) if cfg.cond_dim else 0)
  total += conv(3, cfg.channels, cfg.base_channels)
  for level in sum(plan(cfg), []):
    for i, o in level.blocks:
      total += res(i, o) + (attn(o) if level.attention else 0)
    out = level.blocks[-1][1]
    total += conv(3, out, out) if level.resample else 0
  mid = cfg.level_channels[-1]
  total += 2 * res(mid, mid) + attn(mid)
  return total + norm(cfg.base_channels) + conv(3, cfg.base_channels, cfg.channels)


def forward_flops(cfg: UNetConfig) -> float:
  """Forward FLOPs of one image's convolutions and matmuls (attention included), counted on the
  traced program. Traced in float32, where attention always takes the XLA path, whose matmuls
  the count sees."""
  cfg32 = dataclasses.replace(cfg, dtype="float32")
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(cfg32, nnx.Rngs(0))))
  x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  cond = jax.ShapeDtypeStruct((1, cfg.cond_dim), jnp.float32) if cfg.cond_dim else None
  jaxpr = jax.make_jaxpr(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))(state, x, t, cond)
  return matmul_flops(jaxpr)
