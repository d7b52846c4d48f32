"""Zero-shot classification and retrieval from a contrastive (CLIP / SigLIP) run.

    python -m fmjax.classify --workdir DIR --image a.png [--image b.jpg ...] --labels "cat,dog,bird"
        [--templates default|digits|plain] [--top_k 5]

prints, for each image, every label's probability, most likely first. A label is embedded in
every prompt template of the set (the run's own `config.data.templates` unless --templates is
given) and the embeddings averaged, as zero-shot evaluation does during training. CLIP runs
give a softmax over the labels; SigLIP runs the sigmoid of each label's logit on its own (the
probabilities need not sum to one: that is how SigLIP was trained). A request the run cannot
serve (no contrastive run in DIR, an image that is missing or does not decode, no labels) is
one `error: ...` line and exit status 2, before the model is loaded.

Python:
    model = ImageText.from_workdir(DIR)
    model.embed_images([array_or_path, ...])       # (N, joint_dim), L2-normalised
    model.embed_texts(["a photo of a cat", ...])   # (M, joint_dim), L2-normalised
    model.classify(images, ["cat", "dog"])         # (N, 2) probabilities
    model.retrieve(query_embedding, candidate_embeddings, k=5)   # [(index, similarity), ...]
"""

from typing import Sequence

import jax
import numpy as np
from absl import flags
from flax import nnx

from fmjax import argument_checks, cli_errors, inference
from fmjax.data import image_text, images as image_ops, prompts
from fmjax.objectives import retrieval_metrics

_BATCH = 64  # rows per forward pass; batches are padded to this, so each tower compiles once


def clean_labels(labels: Sequence[str]) -> list[str]:
  """The labels without surrounding spaces and empty ones; none left is a ValueError."""
  labels = [argument_checks.text(l, "labels").strip() for l in labels]
  labels = [l for l in labels if l]
  if not labels:
    raise ValueError("no labels to classify with: give at least one, e.g. --labels 'cat,dog'")
  return labels


def template_set(run: inference.RunFiles, templates: str | None) -> tuple[str, ...]:
  """The prompt templates named by `templates`, or the run's own (config.data.templates)."""
  if not templates:
    return prompts.templates(run.config.data.templates)
  if templates not in prompts.TEMPLATE_SETS:
    raise ValueError(f"templates={templates!r}: choose one of {sorted(prompts.TEMPLATE_SETS)}")
  return prompts.TEMPLATE_SETS[templates]


def image_views(run: inference.RunFiles, images: Sequence) -> np.ndarray:
  """uint8 (N, S, S, 3): images as paths or arrays (any size, grey / RGB / RGBA), resized and
  centre-cropped to the run's image size as in evaluation. A file that is missing or does not
  decode is an error naming it."""
  size = int(run.config.data.image_size)
  views = [image_ops.eval_view(_as_rgb(image, i), size) for i, image in enumerate(images)]
  return np.stack(views) if views else np.zeros((0, size, size, 3), np.uint8)


def _as_rgb(image, index: int) -> np.ndarray:
  if isinstance(image, str):
    return image_ops.load_image_file(image)
  return image_ops.to_rgb_uint8(np.asarray(image), source=f"image #{index}")


class ImageText:
  def __init__(self, run: inference.LoadedRun):
    self.run = run
    self.tokenizer = run.assets
    self.config = run.config
    graphdef, state = nnx.split(run.model)
    self._state = state
    self._images = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_images(x))
    self._texts = jax.jit(lambda s, t: nnx.merge(graphdef, s).encode_texts(t))
    self._scale_bias = jax.jit(lambda s: (nnx.merge(graphdef, s).logit_scale(), nnx.merge(graphdef, s).logit_bias()))

  @classmethod
  def from_workdir(cls, workdir: str) -> "ImageText":
    return cls(inference.load_run(workdir, expect_objective="contrastive"))

  # ---- embeddings ------------------------------------------------------------------------
  def _in_batches(self, fn, rows_NxK: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(rows_NxK), _BATCH):
      chunk = rows_NxK[start:start + _BATCH]
      padded = np.zeros((_BATCH,) + chunk.shape[1:], chunk.dtype)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(fn(self._state, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.run.model.cfg.joint_dim), np.float32)

  def embed_images(self, images: Sequence) -> np.ndarray:
    """Images as paths or arrays (any size, gray / RGB / RGBA), preprocessed as in evaluation."""
    return self._in_batches(self._images, image_views(self.run, images))

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    length = int(self.config.data.text_len)
    tokens = [image_text.encode_caption(self.tokenizer, t, length) for t in texts]
    return self._in_batches(self._texts, np.stack(tokens) if tokens else np.zeros((0, length), np.int32))

  def label_embeddings(self, labels: Sequence[str], templates: str | None = None) -> np.ndarray:
    """(C, joint_dim): each label in every template of the set, averaged (prompt ensembling)."""
    chosen = template_set(self.run, templates)
    texts = [t for label in labels for t in prompts.fill(chosen, label)]
    classes = np.repeat(np.arange(len(labels)), len(chosen))
    return retrieval_metrics.class_embeddings(self.embed_texts(texts), classes, len(labels))

  # ---- zero-shot classification and retrieval --------------------------------------------
  def classify(self, images: Sequence, labels: Sequence[str], templates: str | None = None) -> np.ndarray:
    """(N images, C labels) probabilities."""
    labels = clean_labels(labels)
    scale, bias = (float(v) for v in jax.device_get(self._scale_bias(self._state)))
    logits_NxC = scale * self.embed_images(images) @ self.label_embeddings(labels, templates).T
    if self.run.model.cfg.loss == "clip":
      logits_NxC = logits_NxC - logits_NxC.max(axis=1, keepdims=True)
      probs = np.exp(logits_NxC)
      return probs / probs.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-(logits_NxC + bias)))

  @staticmethod
  def retrieve(query_J: np.ndarray, candidates_NxJ: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The k candidates most similar to the query (both normalised): [(index, cosine), ...]."""
    similarity_N = candidates_NxJ @ query_J
    best = np.argsort(-similarity_N, kind="stable")[:k]
    return [(int(i), float(similarity_N[i])) for i in best]


FLAGS = flags.FLAGS


def define_flags():
  # Defined when run as a program (cli_errors.run; see fmjax/fill_mask.py).
  flags.DEFINE_string("workdir", None, "workdir of a contrastive training run")
  flags.DEFINE_multi_string("image", None, "image file to classify; repeat the flag for several")
  flags.DEFINE_string("labels", None, "comma-separated class names, e.g. 'cat,dog,bird'")
  flags.DEFINE_string("templates", None, "prompt template set (default: the run's config.data.templates): "
                      + ", ".join(sorted(prompts.TEMPLATE_SETS)))
  flags.DEFINE_integer("top_k", 0, "labels printed per image, an integer >= 0 (0: all)")


def main(argv):
  del argv
  cli_errors.require(workdir=FLAGS.workdir, image=FLAGS.image, labels=FLAGS.labels)
  labels = clean_labels(FLAGS.labels.split(","))
  argument_checks.integer(FLAGS.top_k, "top_k", 0, note=" (0: all)")
  files = inference.open_run(FLAGS.workdir, expect_objective="contrastive")
  template_set(files, FLAGS.templates)
  # Decoded before the model loads, so that a bad file is reported first; the views are small
  # (the run's image size), and classifying them again leaves them as they are.
  views = image_views(files, FLAGS.image)
  model = ImageText(inference.restore(files))
  probs_NxC = model.classify(list(views), labels, FLAGS.templates)
  print(f"# {FLAGS.workdir} at step {model.run.step} ({model.run.model.cfg.loss})")
  for path, probs_C in zip(FLAGS.image, probs_NxC):
    order = np.argsort(-probs_C, kind="stable")[:FLAGS.top_k or len(labels)]
    print(f"--- {path}")
    for c in order:
      print(f"{labels[c]}\t{probs_C[c]:.4f}")


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
