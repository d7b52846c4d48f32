"""Drawing images from a diffusion run: DDPM or DDIM, guided by captions or class labels.

    python -m fmjax.sample --workdir DIR --prompt "the digit seven" [--prompt ...] [--num 16]
        [--steps 50] [--sampler ddim|ddpm] [--eta 0] [--guidance 3] [--seed S] --out grid.png
        [--npy samples.npy] [--noema]
    python -m fmjax.sample --workdir DIR --label 7 [--label ...] ...   (class-conditional runs)
    python -m fmjax.sample --workdir DIR --num 64 --out grid.png        (unconditional runs)

writes a PNG grid, one row per prompt or label (--num samples each), and with --npy the uint8
array (N, H, W, C). Sampler settings default to the run's config.diffusion. The run's moving
average of the parameters is used unless --noema. The same seed gives the same images.

Python:
    sampler = ImageSampler.from_workdir(DIR)
    images = sampler.sample(prompts=["the digit seven"], num=8, steps=50, guidance=3.0, seed=0)
    # uint8 (8, H, W, C); labels=[7, 3] for class-conditional runs, neither for unconditional ones
"""

import dataclasses
import math
import os
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from fmjax import inference, metrics, paths
from fmjax.data import image_text
from fmjax.objectives import diffusion as diffusion_objective
from fmjax.objectives import diffusion_sampling

_BATCH = 64  # rows per sampling call; padded to this, so each setting compiles once


class ImageSampler:
  def __init__(self, run: inference.LoadedRun):
    self.run = run
    self.model_config = run.model.cfg
    graphdef, self._state = nnx.split(run.model)
    self._graphdef = graphdef
    self._compiled = {}

  @classmethod
  def from_workdir(cls, workdir: str, use_ema: bool = True) -> "ImageSampler":
    return cls(inference.load_run(workdir, expect_objective="diffusion", use_ema=use_ema))

  @property
  def condition(self) -> str:
    return self.model_config.condition

  def _sampling(self, sampler, steps, eta, guidance):
    """The run's sampling settings with the given ones replaced, checked."""
    base = self.model_config.sampling
    settings = dataclasses.replace(
        base, sampler=base.sampler if sampler is None else sampler, steps=base.steps if steps is None else int(steps),
        eta=base.eta if eta is None else float(eta), guidance=base.guidance if guidance is None else float(guidance))
    if settings.sampler not in diffusion_sampling.SAMPLERS:
      raise ValueError(f"--sampler={settings.sampler!r}: choose one of {diffusion_sampling.SAMPLERS}")
    total = self.model_config.process.num_steps
    if not 1 <= settings.steps <= total:
      raise ValueError(f"--steps={settings.steps}: must be in [1, {total}] (the run's diffusion steps)")
    if not (settings.eta >= 0 and math.isfinite(settings.eta)):
      raise ValueError(f"--eta={settings.eta}: must be a finite number >= 0")
    if not (settings.guidance >= 0 and math.isfinite(settings.guidance)):
      raise ValueError(f"--guidance={settings.guidance}: must be a finite number >= 0 (1: no guidance)")
    if settings.guidance != 1.0 and self.condition == "none":
      raise ValueError(f"--guidance={settings.guidance}: this run is unconditional, so there is nothing to guide "
                       "towards; use --guidance 1")
    return settings

  def _conditions(self, prompts, labels, num: int) -> tuple[dict, int]:
    """The batch fields of every requested sample (each prompt / label `num` times)."""
    cfg = self.run.config
    if self.condition == "text":
      prompts = [p for p in (prompts or [])]
      if not prompts or any(not p.strip() for p in prompts) or labels:
        raise ValueError("this run is caption-conditioned: give one or more non-empty --prompt texts (no --label)")
      tokens = np.stack([image_text.encode_caption(self.run.assets.tokenizer, p.strip(), int(cfg.data.text_len))
                         for p in prompts])
      return {"text_tokens": np.repeat(tokens, num, axis=0)}, len(prompts)
    if self.condition == "label":
      classes = len(self.run.assets.class_names) or self.model_config.num_classes
      if not labels or prompts:
        names = ", ".join(f"{i}={n}" for i, n in enumerate(self.run.assets.class_names))
        raise ValueError(f"this run is class-conditional: give one or more --label numbers (no --prompt); classes: {names}")
      for label in labels:
        if not 0 <= int(label) < classes:
          raise ValueError(f"--label={label}: must be in [0, {classes})")
      return {"labels": np.repeat(np.asarray(labels, np.int32), num)}, len(labels)
    if prompts or labels:
      raise ValueError("this run is unconditional: give neither --prompt nor --label")
    return {}, 1

  def _sample_fn(self, settings):
    if settings not in self._compiled:
      graphdef = self._graphdef

      def run(state, batch):
        model = nnx.merge(graphdef, state)
        return diffusion_objective.draw_samples(model, batch, settings, batch["sample_seed"])
      self._compiled[settings] = jax.jit(run)
    return self._compiled[settings]

  def sample(self, prompts: Optional[Sequence[str]] = None, labels: Optional[Sequence[int]] = None, *,
             num: int = 16, steps: Optional[int] = None, sampler: Optional[str] = None, eta: Optional[float] = None,
             guidance: Optional[float] = None, seed: int = 0) -> np.ndarray:
    """uint8 (groups * num, H, W, C): `num` samples per prompt or label, in order."""
    if int(num) < 1:
      raise ValueError(f"--num={num}: must be >= 1")
    settings = self._sampling(sampler, steps, eta, guidance)
    fields, groups = self._conditions(prompts, labels, int(num))
    total = groups * int(num)
    seeds = (np.int64(seed) * 1_000_003 + np.arange(total)) % (2**31 - 1)
    out = []
    for start in range(0, total, _BATCH):
      rows = slice(start, min(start + _BATCH, total))
      batch = {k: _pad(v[rows], _BATCH) for k, v in fields.items()}
      batch["sample_seed"] = _pad(seeds[rows].astype(np.int32), _BATCH)
      images = self._sample_fn(settings)(self._state, {k: jnp.asarray(v) for k, v in batch.items()})
      out.append(diffusion_objective.to_uint8(jax.device_get(images))[:rows.stop - rows.start])
    return np.concatenate(out)


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  padded = np.zeros((size,) + rows.shape[1:], rows.dtype)
  padded[:len(rows)] = rows
  return padded


FLAGS = flags.FLAGS


def define_flags():
  # Defined only when run as a program (see fmjax/fill_mask.py).
  flags.DEFINE_string("workdir", None, "workdir of a diffusion training run")
  flags.DEFINE_multi_string("prompt", None, "caption to draw (caption-conditioned runs); repeat for several")
  flags.DEFINE_multi_integer("label", None, "class to draw (class-conditional runs); repeat for several")
  flags.DEFINE_integer("num", 16, "samples per prompt or label (unconditional runs: in all)")
  flags.DEFINE_integer("steps", None, "sampling steps (default: the run's config.diffusion.sample_steps)")
  flags.DEFINE_string("sampler", None, "'ddim' or 'ddpm' (default: the run's)")
  flags.DEFINE_float("eta", None, "DDIM stochasticity, 0 = deterministic (default: the run's)")
  flags.DEFINE_float("guidance", None, "classifier-free guidance scale, 1 = none (default: the run's)")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_bool("ema", True, "use the run's moving average of the parameters (--noema: the raw ones)")
  flags.DEFINE_string("out", None, "PNG file for the grid of samples")
  flags.DEFINE_string("npy", None, "also save the samples as a uint8 .npy array (N, H, W, C)")


def main(argv):
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, tfds) drown the output
  del argv
  if not FLAGS.workdir or not FLAGS.out:
    print("error: --workdir and --out are required", file=sys.stderr)
    sys.exit(2)
  try:
    out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
    if not os.path.isdir(out_dir):
      raise FileNotFoundError(f"--out={FLAGS.out!r}: the folder {out_dir!r} does not exist")
    sampler = ImageSampler.from_workdir(FLAGS.workdir, use_ema=FLAGS.ema)
    images = sampler.sample(FLAGS.prompt, FLAGS.label, num=FLAGS.num, steps=FLAGS.steps, sampler=FLAGS.sampler,
                            eta=FLAGS.eta, guidance=FLAGS.guidance, seed=FLAGS.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  columns = FLAGS.num if (FLAGS.prompt or FLAGS.label) else min(FLAGS.num, diffusion_objective.GRID_COLUMNS)
  paths.write_atomically(FLAGS.out, metrics.png_bytes(diffusion_objective.sample_grid(images, columns=columns)))
  if FLAGS.npy:
    np.save(FLAGS.npy, images)
  groups = FLAGS.prompt or FLAGS.label or ["(unconditional)"]
  print(f"# {FLAGS.workdir} at step {sampler.run.step}: {len(images)} samples, {len(groups)} row(s) -> {FLAGS.out}")
  for group in groups:
    print(f"--- {group}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
