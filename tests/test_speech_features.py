"""Log-mel features, SpecAugment, and BEST-RQ's targets and masking against independent NumPy
references and hand-checked properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.models import log_mel, spec_augment
from fmjax.objectives import best_rq


# ----------------------------------------------------------------------------- references

def slaney_mel(hz):
  """Slaney's mel scale written out: 3 mels per 200 Hz below 1 kHz, then 27 mels per factor 6.4."""
  hz = np.asarray(hz, np.float64)
  return np.where(hz < 1000.0, 3.0 * hz / 200.0, 15.0 + 27.0 * np.log(np.maximum(hz, 1e-9) / 1000.0) / np.log(6.4))


def slaney_hz(mel):
  mel = np.asarray(mel, np.float64)
  return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * 6.4 ** ((mel - 15.0) / 27.0))


def reference_filterbank(num_mels=80, n_fft=400, sr=16000):
  """Triangles built from the differences between band edges and bin frequencies, filter by
  filter, then divided by half their bandwidth."""
  edges = slaney_hz(np.linspace(0.0, slaney_mel(sr / 2), num_mels + 2))
  bins = np.arange(n_fft // 2 + 1) * sr / n_fft
  out = np.zeros((num_mels, len(bins)))
  for i in range(num_mels):
    lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
    for j, f in enumerate(bins):
      if lo < f <= mid:
        out[i, j] = (f - lo) / (mid - lo)
      elif mid < f < hi:
        out[i, j] = (hi - f) / (hi - mid)
    out[i] *= 2.0 / (hi - lo)
  return out


def reference_log_mel(audio_N, filters_MxF):
  """Whisper's recipe, one frame at a time in float64."""
  x = np.pad(np.asarray(audio_N, np.float64), 200, mode="reflect")
  window = np.hanning(401)[:-1]  # periodic Hann of 400
  frames = []
  for t in range(len(audio_N) // 160 + 1):
    spectrum = np.fft.rfft(x[t * 160:t * 160 + 400] * window)
    frames.append(np.abs(spectrum) ** 2)
  power_TxF = np.stack(frames)[:-1]
  logmel = np.log10(np.maximum(power_TxF @ filters_MxF.T, 1e-10))
  logmel = np.maximum(logmel, logmel.max() - 8.0)
  return (logmel + 4.0) / 4.0


# ----------------------------------------------------------------------------- log-mel

def test_filterbank_matches_reference_and_peaks_at_slaney_centres():
  fb = log_mel.mel_filterbank()
  assert fb.shape == (80, 201) and fb.dtype == np.float32
  assert (fb >= 0).all() and (fb.sum(axis=1) > 0).all()
  np.testing.assert_allclose(fb, reference_filterbank(), rtol=1e-5, atol=1e-9)
  assert slaney_mel(1000.0) == pytest.approx(15.0)
  centres = slaney_hz(np.linspace(0.0, slaney_mel(8000.0), 82))[1:-1]
  bin_hz = np.arange(201) * 40.0
  for i, c in enumerate(centres):
    peak = bin_hz[np.argmax(fb[i])]
    assert abs(peak - c) < 40.0, (i, peak, c)  # one of the two bins around the centre
  # Slaney normalisation: every filter has (nearly, on this grid) the same area per Hz.
  areas = fb.sum(axis=1) * 40.0
  assert np.median(areas) == pytest.approx(1.0, rel=0.05)


def test_num_frames_and_frame_mask():
  assert log_mel.num_frames(480000) == 3000 and log_mel.num_frames(64000) == 400
  assert log_mel.num_frames(159) == 0 and log_mel.num_frames(161) == 1
  mask = np.asarray(log_mel.frame_mask(jnp.array([0, 1, 160, 161, 4000, 10 ** 6]), 30))
  assert mask.shape == (6, 30) and mask.dtype == bool
  assert mask.sum(axis=1).tolist() == [0, 1, 1, 2, 25, 30]
  assert (mask[:, :-1] >= mask[:, 1:]).all()  # valid frames form a prefix


def test_log_mel_matches_numpy_reference_on_random_audio():
  rng = np.random.default_rng(0)
  n = 8000 + 137  # not a multiple of the hop
  audio = rng.normal(0, 0.1, (3, n)).astype(np.float32)
  audio[1] *= 30.0                # a loud example: the clamp is per example
  audio[2, 5000:] = 0.0           # padding: frames at the floor
  feats = np.asarray(log_mel.log_mel_spectrogram(jnp.asarray(audio)))
  assert feats.shape == (3, n // 160, 80) and feats.dtype == np.float32
  fb = reference_filterbank()
  for b in range(3):
    np.testing.assert_allclose(feats[b], reference_log_mel(audio[b], fb), atol=1e-4)
  # Each example alone gives the same features as in the batch.
  alone = np.asarray(log_mel.log_mel_spectrogram(jnp.asarray(audio[2:])))
  np.testing.assert_allclose(alone[0], feats[2], atol=1e-6)


def test_log_mel_of_a_440_hz_sine():
  t = np.arange(16000) / 16000.0
  audio = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None]
  feats = np.asarray(log_mel.log_mel_spectrogram(jnp.asarray(audio)))[0]
  expected = reference_log_mel(audio[0], reference_filterbank())
  # Bins 7 decades below a pure tone's peak are at float32 FFT round-off: compare the rest tightly.
  strong = expected > expected.max() - 1.5
  np.testing.assert_allclose(feats[strong], expected[strong], atol=1e-4)
  np.testing.assert_allclose(feats, expected, atol=2e-2)
  loudest = int(np.argmax(feats[10:-10].mean(axis=0)))
  centres = slaney_hz(np.linspace(0.0, slaney_mel(8000.0), 82))[1:-1]
  assert loudest == int(np.argmin(np.abs(centres - 440.0)))
  assert abs(centres[loudest] - 440.0) < 20.0
  assert feats.max() == pytest.approx(expected.max(), abs=1e-5)


def test_log_mel_rejects_bad_shapes():
  with pytest.raises(ValueError, match="audio_BxN"):
    log_mel.log_mel_spectrogram(jnp.zeros((1, 100)))
  with pytest.raises(ValueError, match="audio_BxN"):
    log_mel.log_mel_spectrogram(jnp.zeros((1000,)))


# ----------------------------------------------------------------------------- SpecAugment

def _features(b=4, t=120, m=80, lengths=(120, 90, 50, 7), seed=0):
  feats = np.random.default_rng(seed).normal(size=(b, t, m)).astype(np.float32)
  mask = np.arange(t)[None] < np.asarray(lengths)[:, None]
  feats[~mask] = 7.0  # a padding value nothing should produce
  return jnp.asarray(feats), jnp.asarray(mask)


def _runs(flags):
  """(start, length) of each run of True."""
  flags = np.concatenate([[False], np.asarray(flags, bool), [False]])
  edges = np.flatnonzero(np.diff(flags.astype(int)))
  return [(s, e - s) for s, e in zip(edges[::2], edges[1::2])]


def test_spec_augment_bounds_padding_and_fill_value():
  feats, mask = _features()
  valid = np.asarray(mask)
  mean = np.array([np.asarray(feats)[b][valid[b]].mean() for b in range(4)])
  aug = jax.jit(lambda f, m, k: spec_augment.spec_augment(f, m, k, freq_masks=1, freq_width=10, time_masks=1,
                                                          time_width=20))
  changed_any = False
  for seed in range(20):
    out = np.asarray(aug(feats, mask, jax.random.key(seed)))
    changed = out != np.asarray(feats)
    assert (out[~valid] == 7.0).all()
    changed_any |= changed.any()
    for b in range(4):
      c = changed[b][valid[b]]                # (valid frames, bins)
      np.testing.assert_allclose(out[b][valid[b]][c], mean[b], atol=1e-6)
      full_bins = c.all(axis=0)               # a frequency band covers every valid frame
      full_frames = c.all(axis=1)             # a time span covers every bin
      assert (c == (full_bins[None, :] | full_frames[:, None])).all()
      bands, spans = _runs(full_bins), _runs(full_frames)
      if not full_frames.all():
        assert len(bands) <= 1 and all(w <= 10 for _, w in bands)
      if not full_bins.all():
        assert len(spans) <= 1 and all(w <= 20 for _, w in spans)
  assert changed_any


def test_spec_augment_is_deterministic_and_off_at_zero_width():
  feats, mask = _features()
  kwargs = dict(freq_masks=2, freq_width=27, time_masks=2, time_width=40)
  a = spec_augment.spec_augment(feats, mask, jax.random.key(3), **kwargs)
  b = spec_augment.spec_augment(feats, mask, jax.random.key(3), **kwargs)
  c = spec_augment.spec_augment(feats, mask, jax.random.key(4), **kwargs)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  off = spec_augment.spec_augment(feats, mask, jax.random.key(3), freq_masks=2, freq_width=0, time_masks=2,
                                  time_width=0)
  np.testing.assert_array_equal(np.asarray(off), np.asarray(feats))
  with pytest.raises(ValueError, match="time_width=-1"):
    spec_augment.spec_augment(feats, mask, jax.random.key(3), freq_masks=1, freq_width=1, time_masks=1,
                              time_width=-1)


# ----------------------------------------------------------------------------- BEST-RQ

def test_normalize_features_per_utterance_and_bin():
  feats, mask = _features(lengths=(120, 90, 50, 7))
  feats = feats * jnp.arange(1, 81.0) + 3.0  # a different scale and offset per bin
  out = np.asarray(best_rq.normalize_features(feats, mask))
  valid = np.asarray(mask)
  assert (out[~valid] == 0).all()
  for b in range(4):
    v = out[b][valid[b]]
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(v.var(axis=0), 1.0, atol=1e-3)


def test_stack_frames_and_mask():
  feats = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3)
  stacked = np.asarray(best_rq.stack_frames(feats, 4))
  assert stacked.shape == (2, 2, 12)
  np.testing.assert_array_equal(stacked[1, 1], np.asarray(feats)[1, 4:8].reshape(-1))
  mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [6]]))
  assert np.asarray(best_rq.stack_mask(mask, 4)).tolist() == [[True, True], [True, False]]
  with pytest.raises(ValueError, match="stack=0"):
    best_rq.stack_frames(feats, 0)


def test_quantizer_is_frozen_by_its_seed():
  p1, c1 = best_rq.make_quantizer(7, 320)
  p2, c2 = best_rq.make_quantizer(7, 320)
  p3, c3 = best_rq.make_quantizer(8, 320)
  assert p1.shape == (320, 16) and c1.shape == (8192, 16) and p1.dtype == c1.dtype == np.float32
  np.testing.assert_array_equal(p1, p2)
  np.testing.assert_array_equal(c1, c2)
  assert not np.allclose(p1, p3) and not np.allclose(c1, c3)
  np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1.0, atol=1e-6)
  limit = np.sqrt(6 / (320 + 16))
  assert np.abs(p1).max() <= limit and np.abs(p1).max() > 0.9 * limit  # Xavier-uniform range
  # The projection does not depend on the codebook size.
  np.testing.assert_array_equal(best_rq.make_quantizer(7, 320, codebook_size=64)[0], p1)
  with pytest.raises(ValueError, match="codebook_size=0"):
    best_rq.make_quantizer(7, 320, codebook_size=0)


def test_quantize_is_nearest_code_and_scale_invariant():
  projection, codebook = best_rq.make_quantizer(1, 24, proj_dim=8, codebook_size=256)
  stacked = np.random.default_rng(1).normal(size=(3, 50, 24)).astype(np.float32)
  codes = np.asarray(best_rq.quantize(jnp.asarray(stacked), projection, codebook))
  assert codes.shape == (3, 50) and codes.dtype == np.int32
  z = stacked @ projection.astype(np.float64)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  distances = ((z[:, :, None, :] - codebook[None, None]) ** 2).sum(-1)
  np.testing.assert_array_equal(codes, distances.argmin(-1))
  assert len(np.unique(codes)) > 50  # the codes are spread, not collapsed
  scaled = np.asarray(best_rq.quantize(jnp.asarray(stacked * 2.5), projection, codebook))
  np.testing.assert_array_equal(scaled, codes)


def test_targets_do_not_change_with_input_gain():
  feats, mask = _features(t=64, lengths=(64, 48, 40, 64))
  projection, codebook = best_rq.make_quantizer(0, 4 * 80, codebook_size=1024)

  def targets(f):
    return np.asarray(best_rq.quantize(best_rq.stack_frames(best_rq.normalize_features(f, mask), 4),
                                       projection, codebook))
  np.testing.assert_array_equal(targets(feats * 3.0 - 1.0), targets(feats))


def test_span_mask_spans_padding_and_guarantee():
  lengths = np.array([200, 150, 3, 1, 0, 12])
  valid = jnp.asarray(np.arange(200)[None] < lengths[:, None])
  for seed in range(5):
    m = np.asarray(best_rq.span_mask(jax.random.key(seed), valid, prob=0.02, span=5))
    assert m.dtype == bool and not (m & ~np.asarray(valid)).any()
    assert m.sum(axis=1)[lengths > 0].min() >= 1 and m[4].sum() == 0
    for b in range(6):
      for start, width in _runs(m[b]):
        assert width >= 5 or start + width == lengths[b], (b, start, width)
  # With no span drawn, the guaranteed one has the full length where it fits, else starts at
  # the first valid unit.
  forced = np.asarray(best_rq.span_mask(jax.random.key(0), valid, prob=0.0, span=5))
  assert forced.sum(axis=1).tolist() == [5, 5, 3, 1, 0, 5]
  assert all(len(_runs(row)) == (1 if row.any() else 0) for row in forced)
  everything = np.asarray(best_rq.span_mask(jax.random.key(0), valid, prob=1.0, span=3))
  np.testing.assert_array_equal(everything, np.asarray(valid))
  with pytest.raises(ValueError, match="prob=1.5"):
    best_rq.span_mask(jax.random.key(0), valid, prob=1.5, span=2)


def test_span_mask_rate_matches_expectation():
  prob, span, u = 0.02, 10, 400
  valid = jnp.ones((64, u), bool)
  draws = jax.jit(jax.vmap(lambda k: best_rq.span_mask(k, valid, prob=prob, span=span)))
  masked = np.asarray(draws(jax.random.split(jax.random.key(0), 16)))
  # A unit is masked unless no span starts in the span units up to it (fewer near the start).
  expected = np.mean(1.0 - (1.0 - prob) ** np.minimum(np.arange(u) + 1, span))
  assert masked.mean() == pytest.approx(expected, rel=0.03)


def test_fill_masked_replaces_exactly_the_masked_frames():
  feats = jnp.asarray(np.random.default_rng(0).normal(5.0, 1.0, (2, 403, 8)).astype(np.float32))
  units = np.zeros((2, 100), bool)
  units[0, 10:60] = True
  units[1, 99] = True
  out = np.asarray(best_rq.fill_masked(feats, jnp.asarray(units), 4, jax.random.key(0), noise_std=0.1))
  frames = np.zeros((2, 403), bool)
  frames[0, 40:240] = True
  frames[1, 396:400] = True
  changed = (out != np.asarray(feats)).any(axis=-1)
  np.testing.assert_array_equal(changed, frames)
  noise = out[frames]
  assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(0.1, rel=0.1)
