"""Drawing images from a diffusion run: DDPM or DDIM, guided by captions or class labels.

    python -m fmjax.sample --workdir DIR --prompt "the digit seven" [--prompt ...] [--num 16]
        [--steps 50] [--sampler ddim|ddpm] [--eta 0] [--guidance 3] [--seed S] --out grid.png
        [--npy samples.npy] [--noema]
    python -m fmjax.sample --workdir DIR --label 7 [--label ...] ...   (class-conditional runs)
    python -m fmjax.sample --workdir DIR --num 64 --out grid.png        (unconditional runs)

writes a PNG grid, one row per prompt or label (--num samples each), and with --npy the uint8
array (N, H, W, C). Sampler settings default to the run's config.diffusion. The run's moving
average of the parameters is used unless --noema. The same seed gives the same images. A
request the run cannot serve (no diffusion run in DIR, a prompt for a class-conditional run, a
setting out of range, an --out folder that does not exist) is one `error: ...` line and exit
status 2, before the model is loaded.

Python:
    sampler = ImageSampler.from_workdir(DIR)
    images = sampler.sample(prompts=["the digit seven"], num=8, steps=50, guidance=3.0, seed=0)
    # uint8 (8, H, W, C); labels=[7, 3] for class-conditional runs, neither for unconditional ones
"""

import dataclasses
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from fmjax import argument_checks, cli_errors, inference, metrics, paths
from fmjax.data import image_text
from fmjax.objectives import diffusion as diffusion_objective
from fmjax.objectives import diffusion_sampling

_BATCH = 64  # rows per sampling call; padded to this, so each setting compiles once


def plan(run: inference.RunFiles, prompts: Optional[Sequence[str]] = None, labels: Optional[Sequence[int]] = None,
         *, num: int, steps: Optional[int], sampler: Optional[str], eta: Optional[float], guidance: Optional[float],
         seed: int):
  """(sampling settings, batch fields of every sample, number of prompts or labels) for a
  request, checked against the run; ValueError naming the argument where it cannot be served.
  Reads no parameters: works on the files of a run (inference.open_run) as on a loaded one."""
  model_config = run.objective.model_config(run.config, run.assets)
  num = argument_checks.integer(num, "--num", 1)
  argument_checks.seed(seed, "--seed")
  settings = _settings(model_config, sampler, steps, eta, guidance)
  fields, groups = _conditions(run, model_config, prompts, labels, num)
  return settings, fields, groups


def _settings(model_config, sampler, steps, eta, guidance):
  """The run's sampling settings with the given ones replaced, checked."""
  base = model_config.sampling
  if sampler is not None and sampler not in diffusion_sampling.SAMPLERS:
    raise ValueError(f"--sampler={sampler!r}: choose one of {diffusion_sampling.SAMPLERS}")
  total = model_config.process.num_steps
  settings = dataclasses.replace(
      base, sampler=base.sampler if sampler is None else sampler,
      steps=base.steps if steps is None else argument_checks.integer(
          steps, "--steps", 1, total, note=" (the run's diffusion steps)"),
      eta=base.eta if eta is None else argument_checks.number(eta, "--eta", 0.0, note=" (0: deterministic DDIM)"),
      guidance=base.guidance if guidance is None else argument_checks.number(
          guidance, "--guidance", 0.0, note=" (1: no guidance)"))
  if settings.guidance != 1.0 and model_config.condition == "none":
    raise ValueError(f"--guidance={settings.guidance:g}: this run is unconditional, so there is nothing to guide "
                     "towards; use --guidance 1")
  return settings


def _conditions(run: inference.RunFiles, model_config, prompts, labels, num: int) -> tuple[dict, int]:
  """The batch fields of every requested sample (each prompt / label `num` times)."""
  condition = model_config.condition
  prompts = [argument_checks.text(p, "--prompt") for p in (prompts or [])]
  labels = list(labels or [])
  if condition == "text":
    if not prompts or any(not p.strip() for p in prompts) or labels:
      raise ValueError("this run is caption-conditioned: give one or more non-empty --prompt texts (no --label)")
    text_len = int(run.config.data.text_len)
    tokens = np.stack([image_text.encode_caption(run.assets.tokenizer, p.strip(), text_len) for p in prompts])
    return {"text_tokens": np.repeat(tokens, num, axis=0)}, len(prompts)
  if condition == "label":
    classes = len(run.assets.class_names) or model_config.num_classes
    if not labels or prompts:
      names = ", ".join(f"{i}={n}" for i, n in enumerate(run.assets.class_names))
      raise ValueError("this run is class-conditional: give one or more --label numbers (no --prompt); "
                       f"classes: {names}")
    for label in labels:
      argument_checks.integer(label, "--label", 0, classes - 1)
    return {"labels": np.repeat(np.asarray(labels, np.int32), num)}, len(labels)
  if prompts or labels:
    raise ValueError("this run is unconditional: give neither --prompt nor --label")
  return {}, 1


def check_output(path: str, flag: str) -> None:
  """A file the tool can write once it is done: not a folder, in a folder that exists."""
  if os.path.isdir(path):
    raise ValueError(f"--{flag}={path!r} is a folder: give a file name in it")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--{flag}={path!r}: the folder {folder!r} does not exist")


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
    """uint8 (groups * num, H, W, C): `num` samples per prompt or label, in order. A request
    the run cannot serve is a ValueError naming the argument (see `plan`)."""
    settings, fields, groups = plan(self.run, prompts, labels, num=num, steps=steps, sampler=sampler, eta=eta,
                                    guidance=guidance, seed=seed)
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
  # Defined when run as a program (cli_errors.run; see fmjax/fill_mask.py).
  flags.DEFINE_string("workdir", None, "workdir of a diffusion training run")
  flags.DEFINE_multi_string("prompt", None, "caption to draw (caption-conditioned runs); repeat for several")
  flags.DEFINE_multi_integer("label", None, "class to draw (class-conditional runs), 0 <= label < classes; "
                             "repeat for several")
  flags.DEFINE_integer("num", 16, "samples per prompt or label (unconditional runs: in all), an integer >= 1")
  flags.DEFINE_integer("steps", None, "sampling steps, 1 to the run's config.diffusion.num_steps "
                       "(default: the run's config.diffusion.sample_steps)")
  flags.DEFINE_string("sampler", None, f"one of {', '.join(diffusion_sampling.SAMPLERS)} (default: the run's)")
  flags.DEFINE_float("eta", None, "DDIM stochasticity, a finite number >= 0, 0 = deterministic (default: the run's)")
  flags.DEFINE_float("guidance", None, "classifier-free guidance scale, a finite number >= 0, 1 = none "
                     "(default: the run's)")
  flags.DEFINE_integer("seed", 0, f"sampling seed, an integer in [0, {argument_checks.SEED_LIMIT - 1}]")
  flags.DEFINE_bool("ema", True, "use the run's moving average of the parameters (--noema: the raw ones)")
  flags.DEFINE_string("out", None, "PNG file for the grid of samples")
  flags.DEFINE_string("npy", None, "also save the samples as a uint8 .npy array (N, H, W, C)")


def main(argv):
  del argv
  cli_errors.require(workdir=FLAGS.workdir, out=FLAGS.out)
  if not paths.is_remote(FLAGS.out):  # the grid is written through paths, which knows URLs
    check_output(FLAGS.out, "out")
  if FLAGS.npy:
    check_output(FLAGS.npy, "npy")  # np.save writes local files only
  files = inference.open_run(FLAGS.workdir, expect_objective="diffusion")
  request = dict(num=FLAGS.num, steps=FLAGS.steps, sampler=FLAGS.sampler, eta=FLAGS.eta, guidance=FLAGS.guidance,
                 seed=FLAGS.seed)
  plan(files, FLAGS.prompt, FLAGS.label, **request)
  sampler = ImageSampler(inference.restore(files, use_ema=FLAGS.ema))
  images = sampler.sample(FLAGS.prompt, FLAGS.label, **request)
  columns = FLAGS.num if (FLAGS.prompt or FLAGS.label) else min(FLAGS.num, diffusion_objective.GRID_COLUMNS)
  paths.write_atomically(FLAGS.out, metrics.png_bytes(diffusion_objective.sample_grid(images, columns=columns)))
  if FLAGS.npy:
    np.save(FLAGS.npy, images)
  groups = FLAGS.prompt or FLAGS.label or ["(unconditional)"]
  print(f"# {FLAGS.workdir} at step {sampler.run.step}: {len(images)} samples, {len(groups)} row(s) -> {FLAGS.out}")
  for group in groups:
    print(f"--- {group}")


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
