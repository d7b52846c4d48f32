"""The reverse process of denoising diffusion: DDPM and DDIM samplers, DDIM inversion, and
classifier-free guidance.

Both samplers walk down a chosen subsequence of the training timesteps, T-1 = t_0 > t_1 > ...
> t_{n-1} = 0 (`sample_timesteps`), and then one step further, to alpha-bar = 1, where what
is left is the model's x0 prediction. At each step the model's output becomes the (x0, eps)
pair it implies, and

  'ddim'  x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
          sigma  = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)
          (Song et al.): eta = 0 is deterministic, eta = 1 has the DDPM posterior's noise;
  'ddpm'  ancestral sampling on the respaced chain, whose betas are beta'_t = 1 - ab_t / ab_prev:
          x_prev ~ q(x_prev | x_t, x0), the Gaussian posterior with mean
          sqrt(ab_prev) beta'_t / (1 - ab_t) x0 + sqrt(1 - beta'_t) (1 - ab_prev) / (1 - ab_t) x_t
          and variance beta-tilde = (1 - ab_prev) / (1 - ab_t) beta'_t. With every timestep
          (n = T), beta' = beta and this is DDPM's own sampler.

Both updates are written as x_prev = a x0 + b x_t + c eps + sigma z. The timesteps are fixed
when the program is traced, so a, b, c and sigma are worked out once per step in float64 NumPy
and enter the loop as constants; the loop itself is one `jax.lax.scan`, so a whole sampling run
jits as one program whatever the number of steps.
"""

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.objectives import diffusion_schedule as ds

SAMPLERS = ("ddpm", "ddim")

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]   # (x_t, t_B int32) -> prediction


def sample_timesteps(num_train_steps: int, num_sample_steps: int) -> np.ndarray:
  """`num_sample_steps` timesteps evenly spaced over [0, T - 1], strictly descending, int32,
  from T - 1 down to 0 (a single step is just [T - 1])."""
  n, total = num_sample_steps, num_train_steps
  if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
    raise ValueError(f"config.diffusion.num_steps={total!r}: must be an integer >= 1")
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
    raise ValueError(f"config.diffusion.sample_steps (--steps)={n!r}: must be an integer in "
                     f"[1, config.diffusion.num_steps={total}]")
  # floor(x + 1/2), not np.round: round-half-to-even could give two equal neighbours.
  steps = np.floor(np.linspace(total - 1, 0, int(n)) + 0.5).astype(np.int32)
  assert np.all(np.diff(steps) < 0), steps
  return steps


def _previous_alpha_bars(schedule: ds.Schedule, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(alpha-bar at each chosen step, alpha-bar at the step it goes to), float64; the last step
  goes to alpha-bar = 1, clean data."""
  ab = schedule.alphas_cumprod
  ab_t = ab[timesteps]
  return ab_t, np.append(ab[timesteps[1:]], 1.0)


def step_coefficients(schedule: ds.Schedule, timesteps: np.ndarray, sampler: str, eta: float = 0.0) -> dict:
  """Per step (n,), float64: x_prev = x0_coef x0 + xt_coef x_t + eps_coef eps + sigma z."""
  ab_t, ab_prev = _previous_alpha_bars(schedule, timesteps)
  beta = 1.0 - ab_t / ab_prev          # the respaced chain's beta; = schedule.betas when n = T
  posterior_var = (1.0 - ab_prev) / (1.0 - ab_t) * beta   # beta-tilde
  zeros = np.zeros_like(ab_t)
  if sampler == "ddpm":
    return {"x0_coef": np.sqrt(ab_prev) * beta / (1.0 - ab_t),
            "xt_coef": np.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t),
            "eps_coef": zeros, "sigma": np.sqrt(posterior_var)}
  sigma = eta * np.sqrt(posterior_var)
  eps_var = 1.0 - ab_prev - sigma ** 2
  if np.any(eps_var < -1e-12):
    raise ValueError(f"config.diffusion.eta (--eta)={eta!r}: too large for this schedule and step count "
                     f"(sigma would exceed the noise left at the next step); use 0 <= eta <= 1")
  return {"x0_coef": np.sqrt(ab_prev), "xt_coef": zeros, "eps_coef": np.sqrt(np.maximum(eps_var, 0.0)),
          "sigma": sigma}


def _check_clip(clip_x0) -> None:
  if clip_x0 is None:
    return
  ok = isinstance(clip_x0, (tuple, list)) and len(clip_x0) == 2 and all(isinstance(v, (int, float)) for v in clip_x0)
  if not ok or not clip_x0[0] < clip_x0[1]:
    raise ValueError(f"clip_x0={clip_x0!r}: must be None or a pair (lo, hi) with lo < hi, e.g. (-1.0, 1.0)")


def _check_sampling_args(sampler, eta, target, rng, clip_x0) -> None:
  if sampler not in SAMPLERS:
    raise ValueError(f"config.diffusion.sampler (--sampler)={sampler!r}: choose one of {SAMPLERS}")
  if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta >= 0):
    raise ValueError(f"config.diffusion.eta (--eta)={eta!r}: must be a finite number >= 0 (0: deterministic DDIM)")
  ds.check_target(target)
  if rng is None and (sampler == "ddpm" or eta > 0):
    what = "ddpm" if sampler == "ddpm" else f"ddim with eta={eta}"
    raise ValueError(f"rng=None: config.diffusion.sampler={sampler!r} ({what}) adds noise at every step; "
                     f"pass a PRNG key")
  _check_clip(clip_x0)


def _denoised(denoise_fn: DenoiseFn, schedule: ds.Schedule, target: str, x_t, t, clip_x0):
  """The model at (x_t, t) as an (x0, eps) pair, float32, x0 clamped if asked."""
  t_B = jnp.full(x_t.shape[:1], t, jnp.int32)
  x0, eps = ds.x0_and_eps(schedule, target, denoise_fn(x_t, t_B), x_t, t_B)
  if clip_x0 is not None:
    # eps is recomputed from the clamped x0, so that the pair still explains x_t exactly
    # (x_t = sqrt(ab) x0 + sqrt(1 - ab) eps). Keeping the model's eps next to a clamped x0
    # would make the DDIM step mix two incompatible predictions and drift off the data range.
    x0 = jnp.clip(x0, clip_x0[0], clip_x0[1])
    signal, noise = ds.signal_and_noise_scales(schedule, t_B)
    eps = ds.eps_from_x0(x_t, x0, ds.broadcast_over(signal, x_t), ds.broadcast_over(noise, x_t))
  return x0, eps


def sample(denoise_fn: DenoiseFn, schedule: ds.Schedule, x_T, *, sampler: str, num_steps: int, target: str,
           eta: float = 0.0, rng: Optional[jax.Array] = None,
           clip_x0: Optional[tuple[float, float]] = None) -> jax.Array:
  """Runs the reverse process from x_T (noise, (B, ...)) over `num_steps` timesteps; returns
  the final x0 prediction, float32, x_T's shape.

  denoise_fn(x_t, t_B) is the model's prediction of kind `target` ('eps' or 'v'). `sampler`,
  `num_steps`, `eta` and `clip_x0` are static (plain Python values). rng is needed whenever
  noise is added (ddpm, or ddim with eta > 0) and ignored otherwise."""
  _check_sampling_args(sampler, eta, target, rng, clip_x0)
  timesteps = sample_timesteps(schedule.num_steps, num_steps)
  coefs = step_coefficients(schedule, timesteps, sampler, float(eta))
  stochastic = bool(np.any(coefs["sigma"] > 0))
  per_step = {k: jnp.asarray(v, jnp.float32) for k, v in coefs.items()}
  per_step["t"] = jnp.asarray(timesteps)
  if stochastic:
    per_step["key"] = jax.random.split(rng, len(timesteps))

  def reverse_step(x_t, step):
    x0, eps = _denoised(denoise_fn, schedule, target, x_t, step["t"], clip_x0)
    x_prev = step["x0_coef"] * x0 + step["xt_coef"] * x_t + step["eps_coef"] * eps
    if stochastic:
      # On the last step sigma is 0, so this adds exactly nothing there.
      x_prev = x_prev + step["sigma"] * jax.random.normal(step["key"], x_t.shape, jnp.float32)
    return x_prev, None

  x_0, _ = jax.lax.scan(reverse_step, jnp.asarray(x_T).astype(jnp.float32), per_step)
  return x_0


def ddim_invert(denoise_fn: DenoiseFn, schedule: ds.Schedule, x_0, *, num_steps: int, target: str) -> jax.Array:
  """Deterministic DDIM run forwards, from data x_0 up to x_T, over `sample`'s timesteps in
  reverse order: sample(..., sampler='ddim', eta=0) undoes it, up to discretisation.

  Each step from level ab_from (1 for the data) to timestep t needs eps at the point it is
  going to, which is not known yet; it uses the model at (x_from, t) instead (the usual
  approximation), so the error shrinks as the steps get finer."""
  ds.check_target(target)
  timesteps = sample_timesteps(schedule.num_steps, num_steps)[::-1]    # 0 ... T-1
  ab = schedule.alphas_cumprod
  ab_to = ab[timesteps]
  ab_from = np.concatenate([[1.0], ab_to[:-1]])
  per_step = {"t": jnp.asarray(timesteps.copy()),
              "signal_from": jnp.asarray(np.sqrt(ab_from), jnp.float32),
              "noise_from": jnp.asarray(np.sqrt(1.0 - ab_from), jnp.float32),
              "signal_to": jnp.asarray(np.sqrt(ab_to), jnp.float32),
              "noise_to": jnp.asarray(np.sqrt(1.0 - ab_to), jnp.float32)}

  def forward_step(x_from, step):
    _, eps = _denoised(denoise_fn, schedule, target, x_from, step["t"], None)
    x0 = ds.x0_from_eps(x_from, eps, step["signal_from"], step["noise_from"])
    return step["signal_to"] * x0 + step["noise_to"] * eps, None

  x_T, _ = jax.lax.scan(forward_step, jnp.asarray(x_0).astype(jnp.float32), per_step)
  return x_T


def classifier_free_guidance(pred_cond, pred_uncond, scale) -> jax.Array:
  """pred_uncond + scale (pred_cond - pred_uncond), written as (1 - scale) pred_uncond +
  scale pred_cond so that scale 1 gives the conditional and scale 0 the unconditional
  prediction exactly, not merely up to rounding."""
  return (1.0 - scale) * pred_uncond + scale * pred_cond
