"""Seeding part of a model from another run: the encoder of a pretrained model into a new one.

Fine-tuning usually keeps a whole model (`config.checkpoint.init_from` alone), but pretraining
and post-training models often share only a part: a masked-prediction speech encoder becomes
the encoder of a transcriber whose decoder starts from scratch. `config.checkpoint.init_subtrees`
names the parts, as paths in the params tree ('encoder', or 'encoder/stack' ...), optionally
renamed ('encoder=audio_encoder': the source's `encoder` into the destination's
`audio_encoder`). Everything named is copied whole and must match leaf for leaf, shape for
shape: a mismatch is an error naming the parameter and both shapes, raised before training.
"""

from typing import Any, Mapping

import numpy as np


def parse_mapping(spec: str) -> list[tuple[str, str]]:
  """'encoder, a/b=c/d' -> [('encoder', 'encoder'), ('a/b', 'c/d')]; '' -> []."""
  pairs = []
  for item in spec.split(","):
    item = item.strip()
    if not item:
      continue
    source, _, destination = item.partition("=")
    source, destination = source.strip().strip("/"), (destination.strip().strip("/") or source.strip().strip("/"))
    if not source or not destination:
      raise ValueError(f"config.checkpoint.init_subtrees={spec!r}: each entry is 'path' or 'source_path=dest_path'")
    pairs.append((source, destination))
  return pairs


def _subtree(tree: Mapping, path: str, which: str) -> Any:
  node = tree
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      known = sorted(node) if isinstance(node, Mapping) else []
      raise KeyError(f"{which} params have no {path!r} (at {part!r}; there: {known})")
    node = node[part]
  return node


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for key in tree:
      out.update(_leaves(tree[key], f"{prefix}/{key}" if prefix else str(key)))
    return out
  return {prefix: tree}


def _replace(tree: Mapping, path: str, value: Any) -> dict:
  head, _, rest = path.partition("/")
  out = dict(tree)
  out[head] = value if not rest else _replace(tree[head], rest, value)
  return out


def check_compatible(source_params: Mapping, dest_params: Mapping, mapping: list[tuple[str, str]]) -> list[str]:
  """The destination leaf paths the mapping would fill; ValueError on any difference in
  structure or shape (naming the parameter and both shapes)."""
  copied = []
  for source, destination in mapping:
    src_leaves = _leaves(_subtree(source_params, source, "the source run's"))
    dst_leaves = _leaves(_subtree(dest_params, destination, "this model's"))
    if set(src_leaves) != set(dst_leaves):
      only_src = sorted(set(src_leaves) - set(dst_leaves))[:5]
      only_dst = sorted(set(dst_leaves) - set(src_leaves))[:5]
      raise ValueError(f"init_subtrees {source!r} -> {destination!r}: the parameter trees differ "
                       f"(only in the source: {only_src}; only here: {only_dst})")
    for leaf, value in src_leaves.items():
      want = tuple(np.shape(dst_leaves[leaf]))
      if tuple(np.shape(value)) != want:
        raise ValueError(f"init_subtrees: parameter {destination}/{leaf} has shape {want} here but "
                         f"{tuple(np.shape(value))} in the source run ({source}/{leaf})")
      copied.append(f"{destination}/{leaf}")
  return copied


def transfer(source_params: Mapping, dest_params: Mapping, mapping: list[tuple[str, str]]) -> tuple[dict, list[str]]:
  """dest_params with the mapped subtrees replaced by the source's (after check_compatible);
  returns (params, the destination leaf paths copied)."""
  copied = check_compatible(source_params, dest_params, mapping)
  params = dict(dest_params)
  for source, destination in mapping:
    values = _leaves(_subtree(source_params, source, "the source run's"))
    params = _replace(params, destination, _rebuild(_subtree(dest_params, destination, "this model's"), values))
  return params, copied


def _rebuild(like: Any, values: Mapping[str, Any], prefix: str = "") -> Any:
  """`like`'s structure (its key types too: a restored checkpoint spells list indices as
  strings, a live model as integers) holding `values`, keyed by leaf path."""
  if isinstance(like, Mapping):
    return {key: _rebuild(like[key], values, f"{prefix}/{key}" if prefix else str(key)) for key in like}
  return values[prefix]
