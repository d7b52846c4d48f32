"""The optimizer, from `config.optim`: AdamW with warmup + decay, global-norm clipping, and no
weight decay on biases and LayerNorm scales."""

from typing import Any, Callable

import jax
import optax

DECAYS = ("cosine", "linear", "constant")


def make_schedule(optim_config, total_steps: int) -> optax.Schedule:
  peak, warmup = optim_config.learning_rate, optim_config.warmup_steps
  end = peak * optim_config.end_lr_fraction
  decay_steps = max(total_steps - warmup, 1)
  if optim_config.decay == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim_config.end_lr_fraction)
  elif optim_config.decay == "linear":
    after = optax.linear_schedule(peak, end, decay_steps)
  elif optim_config.decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.optim.decay={optim_config.decay!r}: choose one of {DECAYS}")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decays(path: tuple, leaf: Any) -> bool:
  """Weight decay applies to matrices and embeddings, not to biases, norm scales, scalars (a
  learned temperature would be pulled towards 1) or a ViT's class token."""
  name = str(getattr(path[-1], "key", path[-1]))
  if len(getattr(leaf, "shape", ())) < 2:
    return False
  return not (name.endswith("bias") or name == "scale" or name == "cls_token")


def decay_mask(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim_config, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
  schedule = make_schedule(optim_config, total_steps)
  parts = []
  if optim_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                           weight_decay=optim_config.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
