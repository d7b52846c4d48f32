"""From a batch of waveforms to the encoder's input, on the device, inside the step.

Both speech objectives see audio the same way: 16 kHz float32 waveforms padded to a fixed window
('audio' [B, N], 'audio_lengths' [B]) become Whisper's 80-bin log-mel frames with a frame mask,
optionally normalised per utterance (BEST-RQ's quantiser needs it; a transcriber initialised
from a masked-prediction encoder must see what that encoder saw) and, in training only,
SpecAugmented. Features are computed here rather than in the input pipeline: on this 2-core CPU
the jitted log-mel and a NumPy one run alike (about 2,500x real time per core, ~300 examples/s
of 30 s audio), so in the pipeline they would cost a host core per ~300 examples/s, about what
one GPU trains Whisper-base at; in the step they are a few FFTs and a matmul beside a
transformer, and the host ships waveforms only.
"""

import dataclasses
from typing import Optional

import jax

from fmjax.models import log_mel, spec_augment
from fmjax.objectives import best_rq


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  num_mels: int = log_mel.N_MELS
  normalize: bool = True            # per-utterance mean / variance over the valid frames
  spec_augment: bool = False        # training only
  freq_masks: int = 2
  freq_width: int = 27              # mel bins, at most, per frequency mask
  time_masks: int = 2
  time_width: int = 40              # frames (10 ms each), at most, per time mask


def features(batch, cfg: FeatureConfig, augment_rng: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """(feats_BxTxM float32, frame_mask_BxT bool), T = N // 160. `augment_rng` (training) turns on
  SpecAugment where the config asks for it."""
  audio_BxN = batch["audio"].astype("float32")
  feats_BxTxM = log_mel.log_mel_spectrogram(audio_BxN, cfg.num_mels)
  frame_mask_BxT = log_mel.frame_mask(batch["audio_lengths"], feats_BxTxM.shape[1])
  if cfg.normalize:
    feats_BxTxM = best_rq.normalize_features(feats_BxTxM, frame_mask_BxT)
  if cfg.spec_augment and augment_rng is not None:
    feats_BxTxM = spec_augment.spec_augment(feats_BxTxM, frame_mask_BxT, augment_rng, freq_masks=cfg.freq_masks,
                                            freq_width=cfg.freq_width, time_masks=cfg.time_masks,
                                            time_width=cfg.time_width)
  return feats_BxTxM, frame_mask_BxT
