"""Sample-quality judge: Fréchet distance against closed forms, and the judge on sklearn digits.

Digits are split 1-in-5 (every fifth image held out), as the diffusion data pipeline does. The
"real" samples are 360 training images (what a perfect generator would produce); the fakes
match the training pixels' statistics to a growing degree but are not digits.
"""

import os

import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits

from fmjax.objectives import diffusion_quality as dq

NUM_SAMPLES = 360  # what one diffusion evaluation generates


@pytest.fixture(scope="module")
def digits():
  data = load_digits()
  images_Nx8x8x1 = np.rint(data.images * 255 / 16).astype(np.uint8)[..., None]
  heldout = np.arange(len(images_Nx8x8x1)) % 5 == 0
  return {"train": images_Nx8x8x1[~heldout], "train_labels": data.target[~heldout],
          "heldout": images_Nx8x8x1[heldout], "heldout_labels": data.target[heldout]}


@pytest.fixture(scope="module")
def samples(digits):
  """Real digits and three kinds of fake, NUM_SAMPLES each, uint8 (N, 8, 8, 1)."""
  rng = np.random.default_rng(1)
  train = digits["train"]
  real = train[rng.choice(len(train), NUM_SAMPLES, replace=False)]
  # Each image's own pixels in a random order: the right pixel histogram, no strokes.
  shuffled = np.stack([rng.permutation(image.ravel()) for image in real]).reshape(real.shape)
  pixels_NxP = train.reshape(len(train), -1).astype(np.float64)
  gaussian = rng.normal(pixels_NxP.mean(0), pixels_NxP.std(0), (NUM_SAMPLES, pixels_NxP.shape[1]))
  per_pixel_gaussian = np.clip(np.rint(gaussian), 0, 255).astype(np.uint8).reshape(real.shape)
  noise = rng.integers(0, 256, real.shape, dtype=np.uint8)
  return {"real": real, "shuffled": shuffled, "per_pixel_gaussian": per_pixel_gaussian, "noise": noise}


@pytest.fixture(scope="module")
def judge(digits):
  return dq.train_judge(digits["train"], digits["train_labels"], digits["heldout"], seed=0)


@pytest.fixture(scope="module")
def pca_judge(digits):
  return dq.train_judge(digits["train"], None, digits["heldout"], seed=0)


def random_covariance(rng, f, rank=None):
  a_FxR = rng.normal(size=(f, rank or f))
  return a_FxR @ a_FxR.T / (rank or f)


def test_frechet_of_identical_statistics_is_zero():
  rng = np.random.default_rng(0)
  mu_F = rng.normal(size=16)
  for sigma_FxF in (random_covariance(rng, 16), random_covariance(rng, 16, rank=3)):
    assert dq.frechet_distance(mu_F, sigma_FxF, mu_F, sigma_FxF) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_diagonal_gaussians_matches_closed_form():
  rng = np.random.default_rng(0)
  m1, m2 = rng.normal(size=12), rng.normal(size=12)
  s1, s2 = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  assert dq.frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_full_covariances_matches_symmetric_form_and_is_symmetric():
  # Tr (S1 S2)^(1/2) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD matrix.
  rng = np.random.default_rng(0)
  for _ in range(3):
    m1, m2 = rng.normal(size=10), rng.normal(size=10)
    s1, s2 = random_covariance(rng, 10), random_covariance(rng, 10)
    root1 = np.real(scipy.linalg.sqrtm(s1))
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root
    forward, backward = dq.frechet_distance(m1, s1, m2, s2), dq.frechet_distance(m2, s2, m1, s1)
    assert forward == pytest.approx(expected, rel=1e-7)
    assert forward == pytest.approx(backward, rel=1e-9)


def test_frechet_is_never_negative_and_survives_singular_covariances():
  rng = np.random.default_rng(0)
  for _ in range(5):  # nearly equal Gaussians: rounding could dip below zero
    mu_F, sigma_FxF = rng.normal(size=32), random_covariance(rng, 32, rank=8)
    assert dq.frechet_distance(mu_F, sigma_FxF, mu_F + 1e-9, sigma_FxF * (1 + 1e-12)) >= 0.0
  # Rank-1 covariances along one unit direction: 1-D closed form (sqrt(a) - sqrt(b))^2.
  u_F = rng.normal(size=8)
  u_F /= np.linalg.norm(u_F)
  m1, m2 = rng.normal(size=8), rng.normal(size=8)
  value = dq.frechet_distance(m1, 4.0 * np.outer(u_F, u_F), m2, 1.0 * np.outer(u_F, u_F))
  assert np.isfinite(value)
  assert value == pytest.approx(np.sum((m1 - m2) ** 2) + (2.0 - 1.0) ** 2, abs=1e-4)
  no_spread = np.zeros((8, 8))
  assert dq.frechet_distance(m1, no_spread, m2, no_spread) == pytest.approx(np.sum((m1 - m2) ** 2))


def test_frechet_retries_with_eps_when_the_root_is_not_finite(monkeypatch):
  # Forces the rare failure: the first square root comes back NaN, the eps * I retry is used.
  calls = []
  real_sqrtm = scipy.linalg.sqrtm

  def flaky_sqrtm(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(dq.scipy.linalg, "sqrtm", flaky_sqrtm)
  s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
  value = dq.frechet_distance(np.zeros(2), s1, np.ones(2), s2)
  assert len(calls) == 2
  assert value == pytest.approx(2.0 + (1 - 3) ** 2 + (2 - 1) ** 2, abs=1e-4)
  monkeypatch.setattr(dq.scipy.linalg, "sqrtm", lambda a: np.full_like(a, np.nan))
  with pytest.raises(ValueError, match="not finite"):
    dq.frechet_distance(np.zeros(2), s1, np.ones(2), s2)


def test_frechet_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r"sigma2 has shape \(3, 3\), expected \(4, 4\)"):
    dq.frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(3))
  with pytest.raises(ValueError, match="mu1 has non-finite"):
    dq.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


def test_classifier_recognises_heldout_digits(judge, digits, samples):
  # Measured: 0.983 held-out accuracy (chance is 0.1).
  assert judge.num_classes == 10 and judge.image_shape == (8, 8, 1)
  assert judge.accuracy(digits["heldout"], digits["heldout_labels"]) > 0.9
  # Asking for a class the image does not show counts as a miss.
  assert judge.accuracy(digits["heldout"], (digits["heldout_labels"] + 1) % 10) < 0.1
  predicted_N = judge.predict(digits["heldout"])
  assert predicted_N.shape == (len(digits["heldout"]),) and predicted_N.dtype == np.int64
  # The features are the hidden ReLU layer: non-negative, with some units off for each image.
  features_NxF = judge.features(samples["real"])
  assert features_NxF.shape == (NUM_SAMPLES, 128) and features_NxF.dtype == np.float64
  assert features_NxF.min() == 0.0 and np.mean(features_NxF == 0.0) > 0.05


def test_frechet_orders_real_below_pixel_statistics_below_noise(judge, samples):
  # Measured (classifier judge, 360 samples): real 1.23, per-pixel Gaussian 12.3,
  # shuffled pixels 35.6, uniform noise 58.9.
  fd = {name: judge.frechet_distance(images) for name, images in samples.items()}
  assert fd["real"] < fd["per_pixel_gaussian"] < fd["noise"]
  assert fd["real"] < fd["shuffled"] < fd["noise"]
  assert fd["noise"] > 20 * fd["real"]


def test_pca_judge_orders_real_below_noise_and_has_no_classifier(pca_judge, samples):
  # Measured (PCA judge, all 64 components): real 0.21, per-pixel Gaussian 1.68,
  # shuffled pixels 9.47, uniform noise 10.1.
  assert pca_judge.num_classes == 0
  assert pca_judge.features(samples["real"]).shape == (NUM_SAMPLES, 64)  # 64 pixels < hidden=128
  # Orthonormal components in order of explained variance, each with its largest entry positive
  # (an eigenvector's sign is otherwise arbitrary).
  components_PxF = pca_judge.feature_weight_PxF
  np.testing.assert_allclose(components_PxF.T @ components_PxF, np.eye(64), atol=1e-9)
  variance_F = np.var(pca_judge.features(samples["real"]), axis=0)
  assert variance_F[0] > variance_F[10] > variance_F[40]
  largest_F = components_PxF[np.argmax(np.abs(components_PxF), axis=0), np.arange(64)]
  assert np.all(largest_F > 0)
  fd = {name: pca_judge.frechet_distance(images) for name, images in samples.items()}
  assert fd["real"] < fd["per_pixel_gaussian"] < fd["noise"]
  assert fd["noise"] > 20 * fd["real"]
  with pytest.raises(ValueError, match="num_classes=0"):
    pca_judge.predict(samples["real"])
  with pytest.raises(ValueError, match="num_classes=0"):
    pca_judge.accuracy(samples["real"], np.zeros(NUM_SAMPLES, np.int64))


@pytest.mark.parametrize("which", ["judge", "pca_judge"])
def test_save_load_round_trip_is_exact(which, request, samples, tmp_path):
  original = request.getfixturevalue(which)
  path = str(tmp_path / "run" / "judge.npz")
  dq.save_judge(original, path)
  assert os.listdir(tmp_path / "run") == ["judge.npz"]  # no temporary file left behind
  loaded = dq.load_judge(path)
  assert loaded.image_shape == original.image_shape and loaded.num_classes == original.num_classes
  np.testing.assert_array_equal(loaded.features(samples["noise"]), original.features(samples["noise"]))
  assert loaded.frechet_distance(samples["real"]) == original.frechet_distance(samples["real"])
  if original.num_classes:
    np.testing.assert_array_equal(loaded.predict(samples["real"]), original.predict(samples["real"]))


def test_training_is_deterministic_for_a_seed(judge, digits):
  again = dq.train_judge(digits["train"], digits["train_labels"], digits["heldout"], seed=0)
  for name in dq._ARRAY_FIELDS:
    np.testing.assert_array_equal(getattr(again, name), getattr(judge, name), err_msg=name)
  other_seed = dq.train_judge(digits["train"], digits["train_labels"], digits["heldout"], seed=1)
  assert not np.allclose(other_seed.feature_weight_PxF, judge.feature_weight_PxF)


def test_max_train_uses_a_seeded_subset(digits):
  train, heldout = digits["train"], digits["heldout"]
  capped = dq.train_judge(train, None, heldout, seed=3, max_train=300)
  subset = train[dq._seeded_subset(len(train), 300, seed=3)]
  assert len(subset) == 300
  direct = dq.train_judge(subset, None, heldout, seed=3)
  full = dq.train_judge(train, None, heldout, seed=3)
  np.testing.assert_array_equal(capped.feature_weight_PxF, direct.feature_weight_PxF)
  assert not np.allclose(capped.feature_weight_PxF, full.feature_weight_PxF)


def test_wrong_images_are_rejected_with_both_shapes(judge):
  with pytest.raises(ValueError, match=r"shape \(3, 8, 8, 3\), expected \(N, 8, 8, 1\)"):
    judge.features(np.zeros((3, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"shape \(8, 8, 1\), expected \(N, 8, 8, 1\)"):
    judge.predict(np.zeros((8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match="dtype float32, expected uint8"):
    judge.frechet_distance(np.zeros((4, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match=r"requested_labels has shape \(3,\).*\(4,\)"):
    judge.accuracy(np.zeros((4, 8, 8, 1), np.uint8), np.zeros(3, np.int64))


def test_train_judge_rejects_bad_inputs(digits):
  train, labels, heldout = digits["train"], digits["train_labels"], digits["heldout"]
  with pytest.raises(ValueError, match="train_labels has shape"):
    dq.train_judge(train, labels[:-1], heldout)
  with pytest.raises(ValueError, match="hidden=0"):
    dq.train_judge(train, labels, heldout, hidden=0)
  with pytest.raises(ValueError, match=r"heldout_images: images have shape \(5, 4, 4, 1\)"):
    dq.train_judge(train, labels, np.zeros((5, 4, 4, 1), np.uint8))
  with pytest.raises(ValueError, match="only class"):
    dq.train_judge(train, np.zeros(len(train), np.int64), heldout)


def test_load_judge_names_a_missing_or_foreign_file(tmp_path):
  missing = str(tmp_path / "nowhere" / "judge.npz")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    dq.load_judge(missing)
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="garbage.npz"):
    dq.load_judge(str(garbage))
  foreign = str(tmp_path / "foreign.npz")
  np.savez(foreign, weights=np.zeros(3))
  with pytest.raises(ValueError, match="foreign.npz is not a judge file"):
    dq.load_judge(foreign)
