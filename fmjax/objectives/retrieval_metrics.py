"""Retrieval and zero-shot metrics over embeddings gathered on the host (NumPy).

Similarity is cosine (rows are L2-normalised here, whatever the caller passes). Ties are
counted against the query: a correct key ranks behind every wrong key with the same score, so
a collapsed model (all embeddings equal) scores chance, never 100%. Queries are processed in
blocks so a 5k x 25k similarity matrix (COCO) never exists whole.
"""

from typing import Callable, Iterable, Sequence

import numpy as np

QUERY_BLOCK = 1024


def normalize_rows(x_NxJ: np.ndarray) -> np.ndarray:
  x = np.asarray(x_NxJ, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _rank_of_best_correct(query_QxJ, key_NxJ, correct_block: Callable[[slice], np.ndarray],
                          what: str) -> np.ndarray:
  """For each query, how many wrong keys score at least as high as its best correct key (0 =
  a correct key comes first). `correct_block(rows)` gives the (rows, N) bool correctness."""
  query_QxJ, key_NxJ = normalize_rows(query_QxJ), normalize_rows(key_NxJ)
  ranks = []
  for start in range(0, len(query_QxJ), QUERY_BLOCK):
    rows = slice(start, start + QUERY_BLOCK)
    sims_qxN = query_QxJ[rows] @ key_NxJ.T
    correct_qxN = correct_block(rows)
    missing = np.flatnonzero(~correct_qxN.any(axis=1))
    if missing.size:
      raise ValueError(f"{what}: query {start + missing[0]} has no correct key")
    best_q = np.where(correct_qxN, sims_qxN, -np.inf).max(axis=1)
    ranks.append(np.sum(~correct_qxN & (sims_qxN >= best_q[:, None]), axis=1))
  return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def _recalls(ranks_Q: np.ndarray, ks: Iterable[int]) -> dict:
  return {int(k): float(np.mean(ranks_Q < k)) for k in ks}


def recall_at_k(query_emb_QxJ, key_emb_NxJ, correct_QxN, ks: Sequence[int] = (1, 5)) -> dict:
  """{k: fraction of queries with a correct key among their top k keys by cosine similarity}."""
  correct_QxN = np.asarray(correct_QxN, bool)
  expected = (len(query_emb_QxJ), len(key_emb_NxJ))
  if correct_QxN.shape != expected:
    raise ValueError(f"recall_at_k: correct_QxN has shape {correct_QxN.shape}, expected (queries, keys) = {expected}")
  ranks = _rank_of_best_correct(query_emb_QxJ, key_emb_NxJ, lambda rows: correct_QxN[rows], "recall_at_k")
  return _recalls(ranks, ks)


def image_text_recall(image_emb_NxJ, text_emb_MxJ, text_image_index_M, ks: Sequence[int] = (1, 5)) -> dict:
  """Recall@k both ways; caption m describes image text_image_index_M[m] (an image may have
  several captions: image->text counts a hit for any of them)."""
  index_M = np.asarray(text_image_index_M)
  n = len(image_emb_NxJ)
  if index_M.shape != (len(text_emb_MxJ),):
    raise ValueError(f"image_text_recall: text_image_index has shape {index_M.shape}, expected one image "
                     f"index per caption ({len(text_emb_MxJ)},)")
  if index_M.size and (index_M.min() < 0 or index_M.max() >= n):
    raise ValueError(f"image_text_recall: text_image_index values must be in [0, {n}), got "
                     f"[{index_M.min()}, {index_M.max()}]")
  images_N = np.arange(n)
  image_ranks = _rank_of_best_correct(
      image_emb_NxJ, text_emb_MxJ, lambda rows: images_N[rows, None] == index_M[None, :],
      "image_text_recall (image -> text: every image needs a caption)")
  text_ranks = _rank_of_best_correct(
      text_emb_MxJ, image_emb_NxJ, lambda rows: index_M[rows, None] == images_N[None, :],
      "image_text_recall (text -> image)")
  out = {}
  for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
    out.update({f"{direction}_recall@{k}": v for k, v in _recalls(ranks, ks).items()})
  return out


def class_embeddings(prompt_emb_PxJ, prompt_class_P, num_classes: int) -> np.ndarray:
  """One embedding per class: the mean of its prompts' normalised embeddings, renormalised
  (CLIP's prompt ensembling over templates)."""
  prompts_PxJ = normalize_rows(prompt_emb_PxJ)
  class_P = np.asarray(prompt_class_P)
  counts_C = np.bincount(class_P, minlength=num_classes)
  if len(counts_C) > num_classes or not counts_C.all():
    raise ValueError(f"class_embeddings: every class in [0, {num_classes}) needs at least one prompt and "
                     f"no prompt may name another; prompts per class = {counts_C.tolist()}")
  sums_CxJ = np.zeros((num_classes, prompts_PxJ.shape[1]), np.float32)
  np.add.at(sums_CxJ, class_P, prompts_PxJ)
  return normalize_rows(sums_CxJ / counts_C[:, None])


def zero_shot_accuracy(image_emb_NxJ, labels_N, class_emb_CxJ, k: int = 1) -> float:
  """Fraction of images whose true class is among the k classes most similar to the image."""
  labels_N = np.asarray(labels_N)
  num_classes = len(class_emb_CxJ)
  if labels_N.shape != (len(image_emb_NxJ),):
    raise ValueError(f"zero_shot_accuracy: labels shape {labels_N.shape}, expected ({len(image_emb_NxJ)},)")
  if labels_N.size and (labels_N.min() < 0 or labels_N.max() >= num_classes):
    raise ValueError(f"zero_shot_accuracy: labels must be in [0, {num_classes}), got "
                     f"[{labels_N.min()}, {labels_N.max()}]")
  classes_C = np.arange(num_classes)
  ranks = _rank_of_best_correct(image_emb_NxJ, class_emb_CxJ,
                                lambda rows: labels_N[rows, None] == classes_C[None, :], "zero_shot_accuracy")
  return _recalls(ranks, [k])[k]
