"""The forward (noising) process of denoising diffusion: noise schedules, noising, the
regression targets, the conversions between what a model predicts and (x0, eps), the loss.

A schedule is T betas; alpha-bar_t = prod_{s<=t} (1 - beta_s) is the fraction of signal power
left at step t, so x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps with eps ~ N(0, I).
Timesteps are integers in [0, T): t = 0 is the first, least noisy step (DDPM's t = 1).

Two things a model may predict (`target`):
  'eps'  the noise itself (DDPM);
  'v'    v = sqrt(alpha-bar) eps - sqrt(1 - alpha-bar) x0 (Salimans & Ho, progressive
         distillation), which stays well scaled at both ends of the schedule.

Schedules are built once in float64 NumPy; everything gathered at t inside `jax.jit` comes
from float32 constant tables made from those float64 values (not recomputed in float32:
1 - alpha-bar near t = 0 is ~1e-4, where float32 cancellation would cost three digits).
Everything here is a pure function of plain arrays, model-agnostic and jit-able.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")
TARGETS = ("eps", "v")

MAX_BETA = 0.999           # a beta of 1 would erase the signal: x0 from eps would divide by zero
COSINE_OFFSET = 0.008      # Nichol & Dhariwal's s: keeps beta_0 from being vanishingly small
LINEAR_BETA_START = 1e-4   # DDPM's linear schedule, stated for T = 1000
LINEAR_BETA_END = 0.02


# A Schedule is compared and hashed by identity (eq=False): its fields are arrays, and
# `make_schedule` caches, so equal arguments give the same object, usable as a static argument.
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  name: str
  betas: np.ndarray   # float64 (T,)

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """alpha-bar_t = prod_{s<=t} (1 - beta_s), float64 (T,)."""
    return np.cumprod(1.0 - self.betas)


def linear_betas(num_steps: int) -> np.ndarray:
  """DDPM's linspace(1e-4, 0.02) for T = 1000; for other T both ends scale by 1000 / T (as
  improved DDPM does), so the noise level reached at the end stays comparable. Capped at
  MAX_BETA, which only bites for T <= 20."""
  scale = 1000.0 / num_steps
  betas = np.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_steps, dtype=np.float64)
  return np.minimum(betas, MAX_BETA)


def cosine_alpha_bar(num_steps: int) -> np.ndarray:
  """The cosine schedule's alpha-bar at u = 0..T (T + 1 values): f(u) / f(0) with
  f(u) = cos(((u / T + s) / (1 + s)) * pi / 2)^2. Entry u is the signal left after u steps,
  so entry t + 1 belongs to timestep t."""
  u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * np.pi / 2) ** 2
  return f / f[0]


def cosine_betas(num_steps: int) -> np.ndarray:
  """beta_t = 1 - alpha-bar(t + 1) / alpha-bar(t), capped at MAX_BETA (the last steps, where
  alpha-bar reaches 0, would otherwise have beta = 1)."""
  ab = cosine_alpha_bar(num_steps)
  return np.minimum(1.0 - ab[1:] / ab[:-1], MAX_BETA)


_BETAS = {"linear": linear_betas, "cosine": cosine_betas}


def check_schedule_args(name, num_steps) -> None:
  if name not in SCHEDULES:
    raise ValueError(f"config.diffusion.schedule={name!r}: choose one of {SCHEDULES}")
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"config.diffusion.num_steps={num_steps!r}: must be an integer >= 1")


def check_target(target) -> None:
  if target not in TARGETS:
    raise ValueError(f"config.diffusion.target={target!r}: choose one of {TARGETS}")


@functools.lru_cache(maxsize=32)
def _cached_schedule(name: str, num_steps: int) -> Schedule:
  betas = _BETAS[name](num_steps)
  betas.flags.writeable = False   # shared by every caller of the cache
  return Schedule(name=name, betas=betas)


def make_schedule(name: str, num_steps: int = 1000) -> Schedule:
  """The named schedule with T = `num_steps` steps (see `linear_betas`, `cosine_betas`)."""
  check_schedule_args(name, num_steps)
  return _cached_schedule(name, int(num_steps))


# ---- values at timesteps, inside jit ----------------------------------------------------------

def _gather(table_T: np.ndarray, t_B) -> jax.Array:
  """table[t] as float32: the float64 table becomes one float32 constant of the program."""
  t_B = jnp.asarray(t_B)
  if not jnp.issubdtype(t_B.dtype, jnp.integer):
    raise ValueError(f"timesteps t must be integers in [0, T), got dtype {t_B.dtype}")
  return jnp.asarray(table_T, jnp.float32)[t_B]


def alpha_bar(schedule: Schedule, t_B) -> jax.Array:
  """alpha-bar at integer timesteps, float32 (B,)."""
  return _gather(schedule.alphas_cumprod, t_B)


def snr(schedule: Schedule, t_B) -> jax.Array:
  """Signal-to-noise ratio alpha-bar / (1 - alpha-bar), float32 (B,)."""
  ab = schedule.alphas_cumprod
  return _gather(ab / (1.0 - ab), t_B)


def signal_and_noise_scales(schedule: Schedule, t_B) -> tuple[jax.Array, jax.Array]:
  """(sqrt(alpha-bar), sqrt(1 - alpha-bar)) at t, float32 (B,) each: the weights of x0 and
  of eps in x_t."""
  ab = schedule.alphas_cumprod
  return _gather(np.sqrt(ab), t_B), _gather(np.sqrt(1.0 - ab), t_B)


def broadcast_over(values_B: jax.Array, x: jax.Array) -> jax.Array:
  """(B,) -> (B, 1, ..., 1), to scale each example of x (B, ...) by its own value."""
  if values_B.shape != x.shape[:1]:
    raise ValueError(f"per-example values {values_B.shape} do not match the batch of x {x.shape}")
  return values_B.reshape(values_B.shape + (1,) * (x.ndim - 1))


def _scales_like(schedule: Schedule, t_B, x) -> tuple[jax.Array, jax.Array]:
  signal_B, noise_B = signal_and_noise_scales(schedule, t_B)
  return broadcast_over(signal_B, x), broadcast_over(noise_B, x)


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


# ---- conversions between parameterisations -------------------------------------------------
# `signal` and `noise` are sqrt(alpha-bar) and sqrt(1 - alpha-bar), broadcastable against x;
# they satisfy signal^2 + noise^2 = 1, which is what makes v <-> (x0, eps) a rotation.

def v_from_eps(x0, eps, signal, noise) -> jax.Array:
  return signal * eps - noise * x0


def x0_from_eps(x_t, eps, signal, noise) -> jax.Array:
  return (x_t - noise * eps) / signal


def eps_from_x0(x_t, x0, signal, noise) -> jax.Array:
  return (x_t - signal * x0) / noise


def x0_from_v(x_t, v, signal, noise) -> jax.Array:
  return signal * x_t - noise * v


def eps_from_v(x_t, v, signal, noise) -> jax.Array:
  return noise * x_t + signal * v


# ---- training --------------------------------------------------------------------------------

def _check_same_shape(what: str, a, b, a_name: str, b_name: str) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"{what}: {a_name} {jnp.shape(a)} and {b_name} {jnp.shape(b)} must have the same shape")


def q_sample(schedule: Schedule, x0, t_B, noise) -> jax.Array:
  """x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) noise, one t per example, float32."""
  _check_same_shape("q_sample", x0, noise, "x0", "noise")
  x0, noise = _f32(x0), _f32(noise)
  signal, noise_scale = _scales_like(schedule, t_B, x0)
  return signal * x0 + noise_scale * noise


def training_target(schedule: Schedule, target: str, x0, noise, t_B) -> jax.Array:
  """What the model regresses onto, float32: the noise ('eps') or v ('v')."""
  check_target(target)
  _check_same_shape("training_target", x0, noise, "x0", "noise")
  x0, noise = _f32(x0), _f32(noise)
  if target == "eps":
    return noise
  signal, noise_scale = _scales_like(schedule, t_B, x0)
  return v_from_eps(x0, noise, signal, noise_scale)


def x0_and_eps(schedule: Schedule, target: str, prediction, x_t, t_B) -> tuple[jax.Array, jax.Array]:
  """The model's output at (x_t, t) as the (x0, eps) pair it implies, float32 each; the pair
  always satisfies x_t = sqrt(alpha-bar) x0 + sqrt(1 - alpha-bar) eps."""
  check_target(target)
  _check_same_shape("x0_and_eps", prediction, x_t, "prediction", "x_t")
  prediction, x_t = _f32(prediction), _f32(x_t)
  signal, noise = _scales_like(schedule, t_B, x_t)
  if target == "eps":
    return x0_from_eps(x_t, prediction, signal, noise), prediction
  return x0_from_v(x_t, prediction, signal, noise), eps_from_v(x_t, prediction, signal, noise)


def per_example_mse(prediction, target) -> jax.Array:
  """Mean over all non-batch dims of (prediction - target)^2, (B,) float32. Computed in
  float32 whatever the inputs' dtype: a bf16 square of small errors loses most of its digits."""
  _check_same_shape("per_example_mse", prediction, target, "prediction", "target")
  error = _f32(prediction) - _f32(target)
  return jnp.mean(jnp.square(error).reshape(error.shape[0], -1), axis=1)
