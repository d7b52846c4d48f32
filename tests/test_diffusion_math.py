"""The diffusion maths on its own: schedules against their closed forms, noising and targets
against NumPy, the (x0, eps, v) conversions, the loss, and the samplers against models whose
exact denoiser is known in closed form (a Gaussian, and a 1-D Gaussian mixture), so a sampler
that is wrong by a sigma shows up as a wrong distribution."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.objectives import diffusion_sampling as dsm
from fmjax.objectives import diffusion_schedule as ds

T = 1000


def random_t(key, batch: int, num_steps: int = T) -> jax.Array:
  return jax.random.randint(key, (batch,), 0, num_steps)


# ---- schedules -------------------------------------------------------------------------------

def test_linear_schedule_is_ddpms_and_alpha_bar_is_the_cumulative_product():
  schedule = ds.make_schedule("linear", T)
  assert schedule.betas.dtype == np.float64 and schedule.num_steps == T
  np.testing.assert_allclose(schedule.betas, np.linspace(1e-4, 0.02, T), rtol=1e-12)
  np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1.0 - np.linspace(1e-4, 0.02, T)), rtol=1e-12)
  t_B = jnp.array([0, 1, 500, T - 1])
  ab_B = ds.alpha_bar(schedule, t_B)
  assert ab_B.dtype == jnp.float32 and ab_B.shape == (4,)
  np.testing.assert_allclose(ab_B, schedule.alphas_cumprod[np.asarray(t_B)], rtol=1e-6)
  assert float(ab_B[0]) == pytest.approx(1 - 1e-4) and float(ab_B[-1]) < 1e-4
  # Other lengths scale both ends by 1000 / T, so the chain ends about as noisy.
  short = ds.make_schedule("linear", 250)
  assert short.betas[0] == pytest.approx(4e-4) and short.betas[-1] == pytest.approx(0.08)
  assert short.alphas_cumprod[-1] == pytest.approx(schedule.alphas_cumprod[-1], rel=0.5)
  assert ds.make_schedule("linear", 10).betas.max() == pytest.approx(0.999)   # capped, not >= 1


def test_cosine_schedule_follows_its_formula():
  schedule = ds.make_schedule("cosine", T)
  s = 0.008
  f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
  expected_T = f(np.arange(1, T + 1)) / f(0)
  uncapped = schedule.betas < 0.999      # only the very last step reaches the cap
  assert uncapped.sum() == T - 1 and np.all(schedule.betas <= 0.999)
  np.testing.assert_allclose(schedule.alphas_cumprod[uncapped], expected_T[uncapped], rtol=1e-9)
  np.testing.assert_allclose(ds.alpha_bar(schedule, jnp.arange(T - 1)), expected_T[:-1], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", ds.SCHEDULES)
def test_alpha_bar_decreases_and_snr_is_its_odds(name):
  schedule = ds.make_schedule(name, T)
  ab = schedule.alphas_cumprod
  assert np.all(np.diff(ab) < 0) and 0 < ab[-1] and ab[0] < 1
  t_B = jnp.arange(T)
  np.testing.assert_allclose(ds.snr(schedule, t_B), ab / (1 - ab), rtol=1e-6)
  assert ds.snr(schedule, t_B).dtype == jnp.float32
  signal, noise = ds.signal_and_noise_scales(schedule, t_B)
  np.testing.assert_allclose(signal ** 2 + noise ** 2, 1.0, rtol=1e-6)
  # Near t = 0 the noise scale comes from float64, not from 1 - float32(alpha-bar).
  np.testing.assert_allclose(noise[:3], np.sqrt(1 - ab[:3]), rtol=1e-6)


def test_schedules_are_cached_and_read_only():
  assert ds.make_schedule("cosine", 64) is ds.make_schedule("cosine", 64)
  with pytest.raises(ValueError):
    ds.make_schedule("cosine", 64).betas[0] = 0.5


# ---- noising, targets, conversions, loss -----------------------------------------------------

def test_q_sample_matches_numpy_and_broadcasts_over_trailing_dims():
  schedule = ds.make_schedule("linear", T)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = jax.random.uniform(k1, (3, 4, 5, 2), minval=-1, maxval=1).astype(jnp.bfloat16)
  noise = jax.random.normal(k2, x0.shape)
  t_B = jnp.array([0, 499, 999])
  x_t = ds.q_sample(schedule, x0, t_B, noise)
  assert x_t.dtype == jnp.float32 and x_t.shape == x0.shape
  ab = schedule.alphas_cumprod[np.asarray(t_B)][:, None, None, None]
  expected = np.sqrt(ab) * np.asarray(x0, np.float64) + np.sqrt(1 - ab) * np.asarray(noise, np.float64)
  np.testing.assert_allclose(x_t, expected, rtol=1e-5, atol=1e-6)


def test_training_targets_match_their_definitions():
  schedule = ds.make_schedule("cosine", T)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
  x0, noise, t_B = jax.random.normal(k1, (6, 8)), jax.random.normal(k2, (6, 8)), random_t(k3, 6)
  np.testing.assert_array_equal(ds.training_target(schedule, "eps", x0, noise, t_B), noise)
  ab = schedule.alphas_cumprod[np.asarray(t_B)][:, None]
  v_ref = np.sqrt(ab) * np.asarray(noise) - np.sqrt(1 - ab) * np.asarray(x0)
  np.testing.assert_allclose(ds.training_target(schedule, "v", x0, noise, t_B), v_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ds.SCHEDULES)
@pytest.mark.parametrize("target", ds.TARGETS)
def test_the_true_target_converts_back_to_x0_and_noise(name, target):
  schedule = ds.make_schedule(name, T)
  k1, k2 = jax.random.split(jax.random.PRNGKey(2))
  x0 = jax.random.uniform(k1, (5, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(k2, x0.shape)
  # Both ends of the schedule, where dividing by sqrt(alpha-bar) or sqrt(1 - alpha-bar) hurts most.
  t_B = jnp.array([0, 1, T // 2, T - 2, T - 1])
  x_t = ds.q_sample(schedule, x0, t_B, noise)
  x0_hat, eps_hat = ds.x0_and_eps(schedule, target, ds.training_target(schedule, target, x0, noise, t_B), x_t, t_B)
  np.testing.assert_allclose(eps_hat, noise, atol=2e-5)
  # The eps parameterisation recovers x0 through 1 / sqrt(alpha-bar): up to ~3e4 at the last
  # cosine step, which multiplies float32 rounding accordingly.
  far_end = {"linear": 1e-3, "cosine": 0.1}[name] if target == "eps" else 1e-5
  np.testing.assert_allclose(x0_hat[:3], x0[:3], atol=1e-5)
  np.testing.assert_allclose(x0_hat[3:], x0[3:], atol=far_end)


def test_v_and_eps_helpers_are_inverse_rotations():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  x0, eps = jax.random.normal(k1, (7, 3)), jax.random.normal(k2, (7, 3))
  angle = jax.random.uniform(k3, (7, 1), minval=0.01, maxval=1.55)
  signal, noise = jnp.cos(angle), jnp.sin(angle)
  x_t = signal * x0 + noise * eps
  v = ds.v_from_eps(x0, eps, signal, noise)
  np.testing.assert_allclose(ds.eps_from_v(x_t, v, signal, noise), eps, atol=1e-5)
  np.testing.assert_allclose(ds.x0_from_v(x_t, v, signal, noise), x0, atol=1e-5)
  np.testing.assert_allclose(ds.x0_from_eps(x_t, eps, signal, noise), x0, atol=1e-4)
  np.testing.assert_allclose(ds.eps_from_x0(x_t, x0, signal, noise), eps, atol=1e-4)


def test_per_example_mse_matches_numpy_in_float32_even_for_bf16_inputs():
  pred = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.5, -0.5], [0.0, 2.0]]], np.float32)
  target = np.array([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
  mse = ds.per_example_mse(pred, target)
  assert mse.shape == (2,) and mse.dtype == jnp.float32
  np.testing.assert_allclose(mse, [(0 + 1 + 4 + 9) / 4, (0.25 + 0.25 + 0 + 4) / 4], rtol=1e-7)
  # bf16 inputs whose errors are small next to their magnitude: squaring and averaging in bf16
  # (8 significant bits) would be visibly off; the float32 result matches float64 NumPy.
  rng = np.random.default_rng(0)
  p16 = jnp.asarray(1.0 + rng.integers(1, 20, (4, 64)) * 2.0 ** -7, jnp.bfloat16)
  t16 = jnp.ones((4, 64), jnp.bfloat16)
  reference = np.mean((np.asarray(p16, np.float64) - 1.0) ** 2, axis=1)
  mse16 = ds.per_example_mse(p16, t16)
  assert mse16.dtype == jnp.float32
  np.testing.assert_allclose(mse16, reference, rtol=1e-6)
  in_bf16 = np.asarray(jnp.mean(jnp.square(p16 - t16), axis=1), np.float64)
  assert np.max(np.abs(in_bf16 - reference) / reference) > 1e-3   # so the case above is a real check


# ---- samplers on exactly known models --------------------------------------------------------

def scales_like(schedule, t_B, x):
  signal, noise = ds.signal_and_noise_scales(schedule, t_B)
  return ds.broadcast_over(signal, x), ds.broadcast_over(noise, x)


def as_target(eps_fn, schedule, target):
  """The same exact model, asked for `target`: v from the eps it implies."""
  if target == "eps":
    return eps_fn

  def v_fn(x_t, t_B):
    eps = eps_fn(x_t, t_B)
    signal, noise = scales_like(schedule, t_B, x_t)
    return ds.v_from_eps(ds.x0_from_eps(x_t, eps, signal, noise), eps, signal, noise)
  return v_fn


def gaussian_eps(schedule, data_std: float):
  """Data ~ N(0, s^2 I): x_t ~ N(0, ab s^2 + 1 - ab), and E[eps | x_t] is linear in x_t."""
  def eps_fn(x_t, t_B):
    ab = ds.broadcast_over(ds.alpha_bar(schedule, t_B), x_t)
    return jnp.sqrt(1 - ab) * x_t / (ab * data_std ** 2 + 1 - ab)
  return eps_fn


def test_ddim_eta0_is_deterministic_and_ignores_rng():
  schedule = ds.make_schedule("linear", T)
  eps_fn = gaussian_eps(schedule, 0.5)
  x_T = jax.random.normal(jax.random.PRNGKey(4), (16, 3))
  run = lambda rng: np.asarray(dsm.sample(eps_fn, schedule, x_T, sampler="ddim", num_steps=20, target="eps", rng=rng))
  first = run(None)
  np.testing.assert_array_equal(first, run(None))
  np.testing.assert_array_equal(first, run(jax.random.PRNGKey(1)))
  np.testing.assert_array_equal(first, run(jax.random.PRNGKey(2)))
  noisy = lambda rng: np.asarray(dsm.sample(eps_fn, schedule, x_T, sampler="ddim", num_steps=20, target="eps",
                                            eta=1.0, rng=rng))
  assert not np.allclose(noisy(jax.random.PRNGKey(1)), noisy(jax.random.PRNGKey(2)))


DATA_STD = 0.5
# Measured (linear schedule, T = 1000, eps and v alike): the worst |ddim_invert(sample(x_T)) - x_T|
# over 4096 x 4 normals is 0.107 with 100 steps and 0.0105 with 1000: first order in the step,
# as the inversion evaluates each step's eps at its starting point.
INVERSION_TOL = {100: 0.15, 1000: 0.02}


@pytest.mark.parametrize("target", ds.TARGETS)
def test_ddim_inverts_on_the_exact_gaussian_model(target):
  schedule = ds.make_schedule("linear", T)
  fn = as_target(gaussian_eps(schedule, DATA_STD), schedule, target)
  x_T = jax.random.normal(jax.random.PRNGKey(5), (4096, 4))
  errors = {}
  for steps, tol in INVERSION_TOL.items():
    x_0 = dsm.sample(fn, schedule, x_T, sampler="ddim", num_steps=steps, target=target)
    back = dsm.ddim_invert(fn, schedule, x_0, num_steps=steps, target=target)
    errors[steps] = float(jnp.max(jnp.abs(back - x_T)))
    assert errors[steps] < tol, (steps, errors)
  assert errors[1000] < errors[100] / 5
  # The exact flow maps x_T linearly to s x_T / sqrt(ab_T s^2 + 1 - ab_T), so the samples' std is s.
  ab_end = schedule.alphas_cumprod[-1]
  exact_gain = DATA_STD / math.sqrt(ab_end * DATA_STD ** 2 + 1 - ab_end)
  np.testing.assert_allclose(x_0, exact_gain * x_T, rtol=5e-3, atol=1e-4)
  assert float(jnp.std(x_0)) == pytest.approx(DATA_STD, rel=0.02)


class Mixture:
  """1-D Gaussian mixture data. Noising convolves each component with the forward kernel, so
  p_t = sum_k w_k N(sqrt(ab) m_k, ab s_k^2 + 1 - ab), and eps*(x_t, t) = -sqrt(1 - ab) d/dx log p_t."""
  weights = np.array([0.3, 0.7])
  means = np.array([-1.0, 0.8])
  stds = np.array([0.25, 0.35])

  @classmethod
  def eps_fn(cls, schedule):
    def eps(x_B, t_B):
      signal, noise = (v[:, None] for v in ds.signal_and_noise_scales(schedule, t_B))
      var_BxK = signal ** 2 * cls.stds ** 2 + noise ** 2
      centred_BxK = x_B[:, None] - signal * cls.means
      log_p_BxK = np.log(cls.weights) - 0.5 * jnp.log(var_BxK) - 0.5 * centred_BxK ** 2 / var_BxK
      resp_BxK = jax.nn.softmax(log_p_BxK, axis=1)
      return noise[:, 0] * jnp.sum(resp_BxK * centred_BxK / var_BxK, axis=1)
    return eps

  @classmethod
  def cdf(cls, x):
    return sum(w * 0.5 * (1 + jax.scipy.special.erf((x - m) / (s * math.sqrt(2))))
               for w, m, s in zip(cls.weights, cls.means, cls.stds))

  @classmethod
  def draw(cls, key, n):
    k1, k2 = jax.random.split(key)
    component = jax.random.bernoulli(k1, cls.weights[1], (n,)).astype(jnp.int32)
    return jnp.asarray(cls.means)[component] + jnp.asarray(cls.stds)[component] * jax.random.normal(k2, (n,))

  @classmethod
  def mean_std(cls):
    mean = cls.weights @ cls.means
    return mean, math.sqrt(cls.weights @ (cls.stds ** 2 + cls.means ** 2) - mean ** 2)


NUM_SAMPLES = 20_000
# Bars for 20k samples against the exact mixture. Measured with the samplers below (seeded):
# |mean error| <= 0.005, |std error| <= 0.015, mass left of 0 off by <= 0.005, KS <= 0.012,
# W1 <= 0.017. Sampling noise alone is ~0.006 for the mean, ~0.003 for the mass, ~0.01 for KS.
# A 100-step DDPM whose sigma is 20% too large / too small misses every bar (measured: mean off
# by 0.044 / 0.074, std 0.052 / 0.098, mass left of 0 0.034 / 0.054, KS 0.037 / 0.068, W1 0.077 /
# 0.128); test_the_mixture_bars_catch_a_wrong_sigma keeps that true.
BARS = {"mean": 0.03, "std": 0.04, "left_of_zero": 0.02, "ks": 0.03, "w1": 0.04}


def mixture_errors(samples_N: jax.Array) -> dict:
  x = np.sort(np.asarray(samples_N, np.float64))
  n = len(x)
  cdf = np.asarray(Mixture.cdf(jnp.asarray(x, jnp.float32)), np.float64)
  ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
  truth = np.sort(np.asarray(Mixture.draw(jax.random.PRNGKey(99), n), np.float64))
  mean, std = Mixture.mean_std()
  return {"mean": abs(x.mean() - mean), "std": abs(x.std() - std),
          "left_of_zero": abs(np.mean(x < 0) - float(Mixture.cdf(0.0))),
          "ks": ks, "w1": np.mean(np.abs(x - truth))}


def mixture_samples(sampler, steps, eta, target, schedule_name="linear"):
  schedule = ds.make_schedule(schedule_name, T)
  fn = as_target(Mixture.eps_fn(schedule), schedule, target)
  x_T = jax.random.normal(jax.random.PRNGKey(6), (NUM_SAMPLES,))
  return dsm.sample(fn, schedule, x_T, sampler=sampler, num_steps=steps, target=target, eta=eta,
                    rng=jax.random.PRNGKey(7))


@pytest.mark.parametrize("sampler,steps,eta,target,schedule_name", [
    ("ddpm", T, 0.0, "eps", "linear"),     # DDPM's own sampler, every step
    ("ddpm", 100, 0.0, "v", "cosine"),     # the respaced chain
    ("ddim", 100, 0.0, "eps", "cosine"),
    ("ddim", 100, 0.0, "v", "linear"),
    ("ddim", 100, 1.0, "eps", "linear"),
])
def test_samplers_draw_the_gaussian_mixture(sampler, steps, eta, target, schedule_name):
  errors = mixture_errors(mixture_samples(sampler, steps, eta, target, schedule_name))
  assert all(errors[k] < BARS[k] for k in BARS), errors


def test_the_mixture_bars_catch_a_wrong_sigma(monkeypatch):
  right = dsm.step_coefficients

  def sigma_too_large(schedule, timesteps, sampler, eta=0.0):
    coefs = right(schedule, timesteps, sampler, eta)
    return {**coefs, "sigma": 1.25 * coefs["sigma"]}

  monkeypatch.setattr(dsm, "step_coefficients", sigma_too_large)
  errors = mixture_errors(mixture_samples("ddpm", 100, 0.0, "eps"))
  # Measured: mean 0.054, std 0.067, mass left of 0 0.042, KS 0.046, W1 0.097.
  assert all(errors[k] > BARS[k] for k in BARS), errors


def test_ddpm_with_every_step_uses_ddpms_posterior():
  schedule = ds.make_schedule("linear", T)
  coefs = dsm.step_coefficients(schedule, dsm.sample_timesteps(T, T), "ddpm")
  beta = schedule.betas[::-1]
  ab = schedule.alphas_cumprod[::-1]
  ab_prev = np.append(ab[1:], 1.0)
  np.testing.assert_allclose(coefs["x0_coef"], np.sqrt(ab_prev) * beta / (1 - ab), rtol=1e-10)
  np.testing.assert_allclose(coefs["xt_coef"], np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), rtol=1e-10, atol=1e-15)
  np.testing.assert_allclose(coefs["sigma"] ** 2, beta * (1 - ab_prev) / (1 - ab), rtol=1e-10, atol=1e-15)
  assert coefs["sigma"][-1] == 0 and coefs["x0_coef"][-1] == pytest.approx(1.0)
  # DDIM with eta = 1 adds the same noise as the DDPM posterior.
  ddim = dsm.step_coefficients(schedule, dsm.sample_timesteps(T, 50), "ddim", 1.0)
  np.testing.assert_allclose(ddim["sigma"], dsm.step_coefficients(schedule, dsm.sample_timesteps(T, 50), "ddpm")["sigma"])


@pytest.mark.parametrize("sampler", dsm.SAMPLERS)
def test_one_step_returns_the_x0_prediction_without_noise(sampler):
  schedule = ds.make_schedule("cosine", 100)
  eps_fn = lambda x, t: 0.1 * x + 0.2
  x_T = jax.random.normal(jax.random.PRNGKey(8), (4, 2, 2, 1))
  out = [dsm.sample(eps_fn, schedule, x_T, sampler=sampler, num_steps=1, target="eps", rng=jax.random.PRNGKey(k))
         for k in (1, 2)]
  t_B = jnp.full((4,), 99)
  expected, _ = ds.x0_and_eps(schedule, "eps", eps_fn(x_T, t_B), x_T, t_B)
  np.testing.assert_allclose(out[0], expected, rtol=1e-6)
  np.testing.assert_array_equal(out[0], out[1])


def test_clipped_ddim_recomputes_eps_from_the_clamped_x0():
  schedule = ds.make_schedule("linear", T)
  x_T = 3.0 * jax.random.normal(jax.random.PRNGKey(9), (8, 5))
  eps_fn = lambda x, t: 0.3 * x      # predicts an x0 far outside [-1, 1]
  got = dsm.sample(eps_fn, schedule, x_T, sampler="ddim", num_steps=2, target="eps", clip_x0=(-1.0, 1.0))
  ab = schedule.alphas_cumprod
  x = np.asarray(x_T, np.float64)
  for t, ab_prev in ((T - 1, ab[0]), (0, 1.0)):
    x0 = np.clip((x - np.sqrt(1 - ab[t]) * 0.3 * x) / np.sqrt(ab[t]), -1, 1)
    eps = (x - np.sqrt(ab[t]) * x0) / np.sqrt(1 - ab[t])
    x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-5)
  assert float(jnp.max(jnp.abs(got))) <= 1.0
  ddpm = dsm.sample(eps_fn, schedule, x_T, sampler="ddpm", num_steps=10, target="eps", clip_x0=(-1.0, 1.0),
                    rng=jax.random.PRNGKey(0))
  assert float(jnp.max(jnp.abs(ddpm))) <= 1.0


def test_sampling_is_one_scan_and_jits():
  schedule = ds.make_schedule("linear", T)
  eps_fn = gaussian_eps(schedule, 0.5)
  x_T = jax.random.normal(jax.random.PRNGKey(10), (4, 3))
  run = lambda x, rng: dsm.sample(eps_fn, schedule, x, sampler="ddpm", num_steps=37, target="eps", rng=rng)
  jaxpr = jax.make_jaxpr(run)(x_T, jax.random.PRNGKey(0)).jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
  assert len(scans) == 1 and scans[0].params["length"] == 37
  np.testing.assert_allclose(jax.jit(run)(x_T, jax.random.PRNGKey(0)), run(x_T, jax.random.PRNGKey(0)),
                             rtol=1e-5, atol=1e-6)
  invert = lambda x: dsm.ddim_invert(eps_fn, schedule, x, num_steps=37, target="eps")
  assert len([e for e in jax.make_jaxpr(invert)(x_T).jaxpr.eqns if e.primitive.name == "scan"]) == 1


def test_classifier_free_guidance():
  k1, k2 = jax.random.split(jax.random.PRNGKey(11))
  cond, uncond = jax.random.normal(k1, (3, 4, 4, 2)), jax.random.normal(k2, (3, 4, 4, 2))
  np.testing.assert_array_equal(dsm.classifier_free_guidance(cond, uncond, 1.0), cond)
  np.testing.assert_array_equal(dsm.classifier_free_guidance(cond, uncond, 0.0), uncond)
  np.testing.assert_allclose(dsm.classifier_free_guidance(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond),
                             rtol=1e-5, atol=1e-6)


# ---- timesteps and bad arguments -------------------------------------------------------------

@pytest.mark.parametrize("total,n", [(1000, 1000), (1000, 50), (1000, 7), (1000, 2), (10, 3), (4, 4), (1000, 999)])
def test_sample_timesteps_are_even_descending_and_span_the_chain(total, n):
  steps = dsm.sample_timesteps(total, n)
  assert steps.dtype == np.int32 and steps.shape == (n,)
  assert steps[0] == total - 1 and steps[-1] == 0
  gaps = -np.diff(steps)
  assert np.all(gaps > 0) and gaps.max() - gaps.min() <= 1
  if n == total:
    np.testing.assert_array_equal(steps, np.arange(total)[::-1])
  np.testing.assert_array_equal(dsm.sample_timesteps(1000, 1), [999])


def test_bad_arguments_name_the_field():
  schedule = ds.make_schedule("linear", 100)
  x, t_B = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32)
  eps_fn = lambda x, t: x
  cases = [
      (lambda: ds.make_schedule("quadratic"), "config.diffusion.schedule='quadratic'"),
      (lambda: ds.make_schedule("linear", 0), "config.diffusion.num_steps=0"),
      (lambda: ds.training_target(schedule, "x0", x, x, t_B), "config.diffusion.target='x0'"),
      (lambda: ds.x0_and_eps(schedule, "score", x, x, t_B), "config.diffusion.target='score'"),
      (lambda: ds.q_sample(schedule, x, t_B, jnp.zeros((2, 4))), "noise"),
      (lambda: ds.alpha_bar(schedule, jnp.zeros((2,))), "integers"),
      (lambda: ds.per_example_mse(x, jnp.zeros((3, 2))), "prediction"),
      (lambda: dsm.sample_timesteps(100, 0), "config.diffusion.sample_steps (--steps)=0"),
      (lambda: dsm.sample_timesteps(100, 101), "[1, config.diffusion.num_steps=100]"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="euler", num_steps=5, target="eps"),
       "config.diffusion.sampler (--sampler)='euler'"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddim", num_steps=5, target="eps", eta=-0.5),
       "config.diffusion.eta (--eta)=-0.5"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddim", num_steps=5, target="eps", eta=3.0,
                          rng=jax.random.PRNGKey(0)), "config.diffusion.eta (--eta)=3.0"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddpm", num_steps=5, target="eps"), "rng=None"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddim", num_steps=5, target="eps", eta=0.5), "rng=None"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddim", num_steps=500, target="eps"),
       "config.diffusion.sample_steps"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddim", num_steps=5, target="x0"), "config.diffusion.target"),
      (lambda: dsm.sample(eps_fn, schedule, x, sampler="ddim", num_steps=5, target="eps", clip_x0=(1.0, -1.0)),
       "clip_x0"),
      (lambda: dsm.ddim_invert(eps_fn, schedule, x, num_steps=0, target="eps"), "config.diffusion.sample_steps"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError) as info:
      call()
    assert message in str(info.value), (message, str(info.value))
