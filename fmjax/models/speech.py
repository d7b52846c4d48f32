"""Speech models over log-mel frames: an encoder, BEST-RQ's masked-prediction model, and a
Whisper-style encoder-decoder transcriber.

    log-mel frames (B, T, M) + frame mask (B, T)
    -> conv stem: Conv1d (kernel 3, padding 1) + GELU per entry of `stem_strides`; their product
       subsamples time (Whisper (1, 2): 20 ms units; BEST-RQ (2, 2): 40 ms units)
    -> + fixed sinusoidal positions -> dropout
    -> TransformerStack (pre-LN blocks, no causal mask, padded units masked as keys)
    -> final LayerNorm = encoder states (B, U, D) and the unit mask (B, U)

    MaskedSpeechModel: encoder -> Dense to codebook logits per unit (float32)
    SpeechSeq2Seq:     encoder -> text decoder: tokens + learned positions -> TransformerStack
                       (causal self-attention, cross-attention over the encoder states) ->
                       final LayerNorm -> logits by the tied embedding (float32)

Padding. The stem zeroes padded frames before each convolution and padded units after it, and
a unit is valid when its centre frame (the first frame of its stride) is valid: so the valid
units' states do not depend on the padded frames at all, nor on how much padding there is; an
utterance padded into a longer batch encodes as it would alone.

The stem's kernel shapes depend only on the number of conv layers and their widths, never on
the strides (a stride is how the kernel is applied), so a 4x masked-prediction encoder and a 2x
transcriber with as many stem layers share one parameter layout. Both models keep the encoder
under the attribute `encoder`: `copy_encoder_params` (or `config.checkpoint.init_subtrees=
encoder`, see fmjax.param_transfer) seeds a transcriber with a pretrained encoder.
"""

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax import param_transfer, parallel
from fmjax.models import attention
from fmjax.models.transformer import LayerNorm, StackConfig, TransformerStack, dropout, embed_lookup, param

STEM_KERNEL = 3
ENCODER_SUBTREE = "encoder"


@dataclasses.dataclass(frozen=True)
class SpeechEncoderConfig:
  stack: StackConfig                 # the encoder's blocks; the compute dtype is `stack.dtype`
  num_mels: int = 80
  stem_channels: int = 0             # width of the stem's inner conv layers; 0: the stack's embed_dim
  stem_strides: tuple = (2, 2)       # one conv layer per stride; their product subsamples time
  max_frames: int = 3000             # log-mel frames (10 ms each) accepted at most: 30 s

  def __post_init__(self):
    s = self.stack
    strides = self.stem_strides
    if not (isinstance(strides, (tuple, list)) and strides and
            all(isinstance(x, (int, np.integer)) and x >= 1 for x in strides)):
      raise ValueError(f"SpeechEncoderConfig.stem_strides={strides!r}: must be a non-empty tuple of integers >= 1")
    object.__setattr__(self, "stem_strides", tuple(int(x) for x in strides))
    for name in ("num_mels", "max_frames"):
      if getattr(self, name) < 1:
        raise ValueError(f"SpeechEncoderConfig.{name}={getattr(self, name)}: must be >= 1")
    if self.stem_channels < 0:
      raise ValueError(f"SpeechEncoderConfig.stem_channels={self.stem_channels}: must be >= 0 (0: embed_dim)")
    if s.embed_dim % 2:
      raise ValueError(f"SpeechEncoderConfig.stack.embed_dim={s.embed_dim}: sinusoidal positions need an even width")
    if s.cross_attention or s.adaln:
      raise ValueError("SpeechEncoderConfig.stack: the encoder's blocks take no context (cross_attention=False) "
                       "and no condition (adaln=False)")

  @property
  def dtype(self) -> str:
    return self.stack.dtype

  @property
  def subsampling(self) -> int:
    """Input frames per encoder unit."""
    return math.prod(self.stem_strides)

  @property
  def stem_widths(self) -> tuple:
    inner = self.stem_channels or self.stack.embed_dim
    return (inner,) * (len(self.stem_strides) - 1) + (self.stack.embed_dim,)

  def units(self, frames: int) -> int:
    """Encoder units for `frames` input frames: each stride s maps n positions to ceil(n / s)."""
    for stride in self.stem_strides:
      frames = -(-frames // stride)
    return frames


def sinusoids(length: int, dim: int, max_timescale: float = 10_000.0) -> np.ndarray:
  """(length, dim) fixed positions: sines then cosines of geometrically spaced frequencies."""
  half = dim // 2
  inv_timescales = np.exp(-np.log(max_timescale) * np.arange(half) / max(half - 1, 1))
  angles = np.arange(length)[:, None] * inv_timescales[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


class Conv1d(nnx.Module):
  """Kernel 3, padding 1, over (B, T, C); the stride is given per call, not stored as a shape."""

  def __init__(self, in_channels: int, out_channels: int, rngs: nnx.Rngs):
    # LeCun-normal fan-in init (fan-in = kernel * in_channels), as a conv layer gets by default.
    self.kernel = param(rngs, nnx.initializers.lecun_normal(), (STEM_KERNEL, in_channels, out_channels),
                        (None, None, "embed"))
    self.bias = param(rngs, nnx.initializers.zeros, (out_channels,), (None,))

  def __call__(self, x_BxTxC: jax.Array, stride: int) -> jax.Array:
    dt = x_BxTxC.dtype
    y_BxUxO = jax.lax.conv_general_dilated(x_BxTxC, self.kernel[...].astype(dt), window_strides=(stride,),
                                           padding=((1, 1),), dimension_numbers=("NWC", "WIO", "NWC"))
    return y_BxUxO + self.bias[...].astype(dt)


class ConvStem(nnx.Module):
  def __init__(self, cfg: SpeechEncoderConfig, rngs: nnx.Rngs):
    widths = cfg.stem_widths
    self.convs = nnx.List([Conv1d(i, o, rngs) for i, o in zip((cfg.num_mels,) + widths[:-1], widths)])
    self.strides = cfg.stem_strides

  def __call__(self, feats_BxTxM: jax.Array, frame_mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(units (B, U, D), unit mask (B, U)); padded positions are zero going into every layer."""
    x, mask = feats_BxTxM, frame_mask_BxT
    x = jnp.where(mask[..., None], x, 0).astype(x.dtype)
    for conv, stride in zip(self.convs, self.strides):
      # Output u reads frames s*u-1 .. s*u+1 and is valid when its centre s*u is.
      x = jax.nn.gelu(conv(x, stride), approximate=False)
      mask = mask[:, ::stride]
      x = jnp.where(mask[..., None], x, 0).astype(x.dtype)
      x = parallel.constrain(x, ("batch", "length", "act_embed"))
    return x, mask


class SpeechEncoder(nnx.Module):
  def __init__(self, cfg: SpeechEncoderConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.stem = ConvStem(cfg, rngs)
    self.stack = TransformerStack(cfg.stack, rngs)
    self.ln_final = LayerNorm(cfg.stack.embed_dim, rngs)

  def __call__(self, feats_BxTxM: jax.Array, frame_mask_BxT: jax.Array, *,
               dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """(encoder states (B, U, D) in the compute dtype, unit mask (B, U) bool)."""
    cfg, dt = self.cfg, self.cfg.stack.compute_dtype
    if feats_BxTxM.ndim != 3 or feats_BxTxM.shape[2] != cfg.num_mels:
      raise ValueError(f"speech encoder feats: expected shape (batch, frames, {cfg.num_mels}), "
                       f"got {tuple(feats_BxTxM.shape)}")
    if tuple(frame_mask_BxT.shape) != tuple(feats_BxTxM.shape[:2]):
      raise ValueError(f"speech encoder frame_mask: expected shape {tuple(feats_BxTxM.shape[:2])} (batch, frames), "
                       f"got {tuple(frame_mask_BxT.shape)}")
    if feats_BxTxM.shape[1] > cfg.max_frames:
      raise ValueError(f"speech encoder: {feats_BxTxM.shape[1]} frames exceed SpeechEncoderConfig.max_frames="
                       f"{cfg.max_frames}")
    rng_embed, rng_stack = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    feats_BxTxM = parallel.constrain(feats_BxTxM.astype(dt), ("batch", "length", None))
    x_BxUxD, mask_BxU = self.stem(feats_BxTxM, frame_mask_BxT.astype(bool))
    b, u, d = x_BxUxD.shape
    x_BxUxD = x_BxUxD + jnp.asarray(sinusoids(u, d), dt)
    x_BxUxD = parallel.constrain(dropout(x_BxUxD, cfg.stack.dropout, rng_embed), ("batch", "length", "act_embed"))
    positions_BxU = jnp.broadcast_to(jnp.arange(u), (b, u))  # only read by rotary, if the stack has it
    keys_Bx1xUxU = jnp.broadcast_to(mask_BxU[:, None, None, :], (b, 1, u, u))
    x_BxUxD, _ = self.stack(x_BxUxD, positions_BxT=positions_BxU, mask=keys_Bx1xUxU, is_causal=False,
                            dropout_rng=rng_stack)
    return self.ln_final(x_BxUxD), mask_BxU


# ---- BEST-RQ -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MaskedSpeechConfig:
  encoder: SpeechEncoderConfig
  codebook_size: int = 8192          # classes of the head: the random quantiser's codes

  def __post_init__(self):
    if self.codebook_size < 2:
      raise ValueError(f"MaskedSpeechConfig.codebook_size={self.codebook_size}: must be >= 2")


class MaskedSpeechModel(nnx.Module):
  def __init__(self, cfg: MaskedSpeechConfig, rngs: nnx.Rngs):
    d = cfg.encoder.stack.embed_dim
    self.cfg = cfg
    self.encoder = SpeechEncoder(cfg.encoder, rngs)
    self.head = param(rngs, nnx.initializers.normal(0.02), (d, cfg.codebook_size), ("embed", "vocab"))
    self.head_bias = param(rngs, nnx.initializers.zeros, (cfg.codebook_size,), ("vocab",))

  def __call__(self, feats_BxTxM: jax.Array, frame_mask_BxT: jax.Array, *,
               dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """(code logits (B, U, K) float32, unit mask (B, U))."""
    h_BxUxD, mask_BxU = self.encoder(feats_BxTxM, frame_mask_BxT, dropout_rng=dropout_rng)
    dt = h_BxUxD.dtype
    logits_BxUxK = jnp.einsum("bud,dk->buk", h_BxUxD, self.head[...].astype(dt), preferred_element_type=jnp.float32)
    logits_BxUxK = logits_BxUxK + self.head_bias[...]
    return parallel.constrain(logits_BxUxK, ("batch", "length", "vocab")), mask_BxU


# ---- Whisper-style encoder-decoder ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SpeechSeq2SeqConfig:
  encoder: SpeechEncoderConfig
  decoder: StackConfig               # cross_attention is switched on here whatever it says
  vocab_size: int                    # embedding rows: the tokenizer's vocabulary padded, as for GPT
                                     # (fmjax.objectives.text_assets.padded_vocab_size)
  max_text_len: int                  # learned decoder positions: tokens the decoder reads at most

  def __post_init__(self):
    if not self.decoder.cross_attention:
      object.__setattr__(self, "decoder", dataclasses.replace(self.decoder, cross_attention=True))
    if self.decoder.embed_dim != self.encoder.stack.embed_dim:
      raise ValueError(f"SpeechSeq2SeqConfig.decoder.embed_dim={self.decoder.embed_dim} must equal the encoder's "
                       f"stack.embed_dim={self.encoder.stack.embed_dim} (cross-attention reads encoder states)")
    for name in ("vocab_size", "max_text_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"SpeechSeq2SeqConfig.{name}={getattr(self, name)}: must be >= 1")


class TextDecoder(nnx.Module):
  def __init__(self, cfg: SpeechSeq2SeqConfig, rngs: nnx.Rngs):
    d = cfg.decoder.embed_dim
    self.cfg = cfg
    self.embed = param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, d), ("vocab", "embed"))
    self.pos_embed = param(rngs, nnx.initializers.normal(0.01), (cfg.max_text_len, d), (None, "embed"))
    self.stack = TransformerStack(cfg.decoder, rngs)
    self.ln_final = LayerNorm(d, rngs)

  def __call__(self, tokens_BxL, enc_BxUxD, enc_mask_BxU, *, caches=None, cache_index=None, dropout_rng=None):
    """(logits (B, L, V) float32, caches). Without caches: teacher forcing, positions 0..L-1 and
    plain causal attention. With caches: the tokens sit at slots cache_index.. of the cache."""
    cfg, dt = self.cfg, self.cfg.decoder.compute_dtype
    b, length = tokens_BxL.shape
    rng_embed, rng_stack = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    if caches is None:
      if length > cfg.max_text_len:
        raise ValueError(f"speech decoder: {length} tokens exceed SpeechSeq2SeqConfig.max_text_len={cfg.max_text_len}")
      positions_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
      mask, is_causal = None, True
    else:
      if cache_index is None:
        raise ValueError("speech decoder: caches need a cache_index (the slot of the first token)")
      positions_BxL = jnp.broadcast_to(cache_index + jnp.arange(length), (b, length))
      slots = self.stack.cache_length(caches)
      mask = attention.causal_mask(positions_BxL, jnp.broadcast_to(jnp.arange(slots), (b, slots)))
      is_causal = False
    x_BxLxD = embed_lookup(self.embed[...], tokens_BxL, dt)
    x_BxLxD = x_BxLxD + jnp.take(self.pos_embed[...], positions_BxL, axis=0).astype(dt)
    x_BxLxD = parallel.constrain(dropout(x_BxLxD, cfg.decoder.dropout, rng_embed), ("batch", "length", "act_embed"))
    x_BxLxD, caches = self.stack(x_BxLxD, positions_BxT=positions_BxL, mask=mask, is_causal=is_causal,
                                 dropout_rng=rng_stack, caches=caches, cache_index=cache_index,
                                 context_BxSxD=enc_BxUxD, context_mask_BxS=enc_mask_BxU)
    x_BxLxD = self.ln_final(x_BxLxD)
    logits_BxLxV = jnp.einsum("bld,vd->blv", x_BxLxD, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
    return parallel.constrain(logits_BxLxV, ("batch", "length", "vocab")), caches


class SpeechSeq2Seq(nnx.Module):
  def __init__(self, cfg: SpeechSeq2SeqConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = SpeechEncoder(cfg.encoder, rngs)
    self.decoder = TextDecoder(cfg, rngs)

  def encode(self, feats_BxTxM, frame_mask_BxT, *, dropout_rng=None) -> tuple[jax.Array, jax.Array]:
    """(encoder states (B, U, D), unit mask (B, U))."""
    return self.encoder(feats_BxTxM, frame_mask_BxT, dropout_rng=dropout_rng)

  def decode(self, tokens_BxL, enc_BxUxD, enc_mask_BxU, caches=None, cache_index=None, *, dropout_rng=None):
    """(logits (B, L, V) float32, caches). With caches from `init_caches` the encoder states
    are read from them (`enc_BxUxD` may be None); the unit mask is needed either way."""
    return self.decoder(tokens_BxL, enc_BxUxD, enc_mask_BxU, caches=caches, cache_index=cache_index,
                        dropout_rng=dropout_rng)

  def __call__(self, feats_BxTxM, frame_mask_BxT, tokens_in_BxL, *, dropout_rng=None) -> jax.Array:
    """Teacher forcing: logits (B, L, V) float32 for the next token after each input token."""
    rng_enc, rng_dec = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    enc_BxUxD, enc_mask_BxU = self.encode(feats_BxTxM, frame_mask_BxT, dropout_rng=rng_enc)
    logits_BxLxV, _ = self.decode(tokens_in_BxL, enc_BxUxD, enc_mask_BxU, dropout_rng=rng_dec)
    return logits_BxLxV

  def init_caches(self, batch: int, length: int, enc_BxUxD: jax.Array) -> Any:
    """Decoder caches for `length` token slots, holding each layer's cross-attention keys and
    values of `enc_BxUxD`, computed here once."""
    if length > self.cfg.max_text_len:
      raise ValueError(f"init_caches: {length} slots exceed SpeechSeq2SeqConfig.max_text_len={self.cfg.max_text_len}")
    return self.decoder.stack.init_caches(batch, length, self.cfg.decoder.compute_dtype, context_BxSxD=enc_BxUxD)


# ---- seeding a transcriber with a pretrained encoder ---------------------------------------------

def encoder_param_mapping() -> list[tuple[str, str]]:
  """The (source, destination) subtrees `fmjax.param_transfer` copies from a MaskedSpeechModel
  (or another SpeechSeq2Seq) into a SpeechSeq2Seq: the encoder, one to one."""
  return [(ENCODER_SUBTREE, ENCODER_SUBTREE)]


def _pure(state: Any) -> dict:
  return nnx.to_pure_dict(state) if isinstance(state, nnx.State) else dict(state)


def copy_encoder_params(src_state: Any, dst_state: Any) -> tuple[Any, list[str]]:
  """`dst_state` with its `encoder` subtree replaced by `src_state`'s, and the parameter paths
  copied ('encoder/stem/convs/0/kernel', ...). Both are model params (an nnx.State, or its pure
  dict); the result has the type of `dst_state`. Anything outside the encoder is left as it
  was. A missing parameter or a shape that differs is a ValueError naming the parameter and
  both shapes (e.g. a different stem width or depth; the strides may differ)."""
  params, copied = param_transfer.transfer(_pure(src_state), _pure(dst_state), encoder_param_mapping())
  if isinstance(dst_state, nnx.State):
    out = jax.tree.map(lambda x: x, dst_state)
    nnx.replace_by_pure_dict(out, params)
    return out, copied
  return params, copied
