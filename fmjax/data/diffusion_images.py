"""Images (with their labels or captions) for the diffusion paradigm: grain pipelines, eval sets.

The sources are the contrastive paradigm's (fmjax.data.image_text): the offline digits, the
user's image folder with a captions file, or a prepared tfds dataset (cifar10, celeb_a,
imagenet2012, coco_captions ...). What differs is the view: the whole image, resized so its
shorter side fits and centre-cropped (a random crop only if config.data.min_crop_area < 1),
optionally mirrored, and grey (1 channel) or RGB as the model wants. Pixels cross to the device
as uint8; the objective scales them to [-1, 1] there.

Batches carry what the condition needs, and nothing else:
  'images'       uint8 [b, S, S, C]
  'labels'       int32 [b]        condition 'label' (and in eval batches, for judging samples)
  'text_tokens'  int32 [b, L]     condition 'text': one of the image's captions, [BOS] .. [EOS] 0..

Evaluation uses two fixed lists of batches, the same every time:
  denoising batches   held-out images, each with its index in the eval set ('eval_index'), from
                      which the objective derives a fixed timestep and noise per image;
  sample batches      'sample_seed' per row plus the condition to sample for: the labels or the
                      first captions of held-out images in a fixed order (so the requested
                      classes are balanced as the held-out set is).
"""

import functools

import grain
import numpy as np

from fmjax.data import batching
from fmjax.data import image_text
from fmjax.data import images
from fmjax.data.pipeline import local_batch_size
from fmjax.data.pipeline import shard_for_process

CONDITIONS = ("none", "label", "text")


def to_channels(image_HxWx3: np.ndarray, channels: int) -> np.ndarray:
  """RGB uint8 -> grey (the rounded channel mean, so grey sources come back unchanged) or RGB."""
  if channels == 3:
    return image_HxWx3
  grey = np.round(image_HxWx3.astype(np.float32).mean(axis=-1, keepdims=True))
  return grey.astype(np.uint8)


def _view(pair: dict, size: int, channels: int, rng: np.random.Generator | None, *, min_area: float,
          flip: bool) -> np.ndarray:
  """uint8 [size, size, channels]: the training view when rng is given, the eval view otherwise."""
  decoded = images.to_rgb_uint8(pair["image"], source=pair["source"], min_side=size)
  if rng is None:
    view = images.eval_view(decoded, size)
  elif min_area < 1.0:
    view = images.train_view(decoded, size, rng, min_area=min_area, flip=flip)
  else:
    view = images.eval_view(decoded, size)
    if flip and rng.random() < 0.5:
      view = np.ascontiguousarray(view[:, ::-1])
  return to_channels(view, channels)


def _condition_fields(pair: dict, condition: str, tokenizer, text_len: int,
                      rng: np.random.Generator | None) -> dict:
  if condition == "label":
    if pair["label"] < 0:
      raise ValueError(f"image {pair['source']} has no class label, but config.diffusion.condition='label' "
                       "needs one: use a labelled dataset, or condition 'text' / 'none'.")
    return {"labels": np.int32(pair["label"])}
  if condition == "text":
    captions = pair["captions"]
    caption = captions[int(rng.integers(len(captions)))] if rng is not None else captions[0]
    return {"text_tokens": image_text.encode_caption(tokenizer, caption, text_len)}
  return {}


def _train_example(pair: dict, rng: np.random.Generator, *, condition: str, tokenizer, size: int,
                   channels: int, text_len: int, min_area: float, flip: bool) -> dict:
  example = {"images": _view(pair, size, channels, rng, min_area=min_area, flip=flip)}
  example.update(_condition_fields(pair, condition, tokenizer, text_len, rng))
  return example


def make_train_dataset(config, tokenizer, *, process_index: int, process_count: int) -> grain.IterDataset:
  """Endless host-local batches (see the module notes), resumable exactly: every random choice
  (crop, flip, caption) is seeded by (config.seed, element index)."""
  data, condition = config.data, config.diffusion.condition
  batch_size = local_batch_size(config, process_count)
  ds = shard_for_process(image_text.open_pairs(data, data.train_split, require_text=condition == "text"), process_index, process_count)
  if len(ds) == 0:
    raise ValueError(f"training split {data.train_split!r} (config.data.train_split) of "
                     f"{image_text.describe_dataset(data)} has no images for process {process_index} of {process_count}.")
  if data.shuffle:
    ds = ds.shuffle(seed=int(config.seed) % 2**32)  # before repeat: reshuffled every epoch
  ds = ds.repeat()
  example = functools.partial(
      _train_example, condition=condition, tokenizer=tokenizer, size=int(data.image_size),
      channels=int(config.model.channels), text_len=int(data.text_len), min_area=float(data.min_crop_area),
      flip=bool(data.flip))
  ds = ds.random_map(example, seed=(int(config.seed) + 1) % 2**32)
  return batching.training_batches(ds, batch_size, prefetch=data.prefetch, max_threads=image_text.THREADS)


def heldout_pairs(config) -> grain.MapDataset:
  """The fixed held-out set: config.data.eval_examples images (0 = all) of the eval split, spread
  over it by a seed-0 shuffle, the same whatever config.seed is."""
  data = config.data
  pairs = image_text.open_pairs(data, data.eval_split, require_text=config.diffusion.condition == "text")
  if len(pairs) == 0:
    raise ValueError(f"evaluation split {data.eval_split!r} (config.data.eval_split) of "
                     f"{image_text.describe_dataset(data)} is empty.")
  return image_text._fixed_subset(pairs, int(data.eval_examples))  # pylint: disable=protected-access


def _eval_row(index: int, pair: dict, *, condition: str, tokenizer, size: int, channels: int,
              text_len: int) -> dict:
  row = {"images": _view(pair, size, channels, None, min_area=1.0, flip=False), "eval_index": np.int32(index)}
  row.update(_condition_fields(pair, condition, tokenizer, text_len, None))
  return row


def _zero_row(config, with_images: bool) -> dict:
  data, condition = config.data, config.diffusion.condition
  size, channels = int(data.image_size), int(config.model.channels)
  row = {"images": np.zeros((size, size, channels), np.uint8)} if with_images else {}
  if condition == "label":
    row["labels"] = np.int32(0)
  elif condition == "text":
    row["text_tokens"] = np.zeros((int(data.text_len),), np.int32)
  return row


def denoising_eval_batches(config, tokenizer, *, process_index: int, process_count: int) -> list[dict]:
  """The held-out images as host-local batches {'images', 'eval_index', condition..., 'valid'},
  zero-padded (valid 0) at the end; the global batches are the same for any process count."""
  data = config.data
  subset = heldout_pairs(config).map_with_index(functools.partial(
      _eval_row, condition=config.diffusion.condition, tokenizer=tokenizer, size=int(data.image_size),
      channels=int(config.model.channels), text_len=int(data.text_len)))
  zero = _zero_row(config, with_images=True)
  zero["eval_index"] = np.int32(0)
  return image_text._eval_batches(subset, lambda row: row, local_batch_size(config, process_count),  # pylint: disable=protected-access
                                  process_index, process_count, zero)


def _sample_row(index: int, pair: dict, *, condition: str, tokenizer, text_len: int) -> dict:
  # The class asked for, to judge the sample by; none for an unconditional model (it is asked
  # for nothing, whatever the image's label).
  requested = pair["label"] if condition != "none" else -1
  row = {"sample_seed": np.int32(index), "sample_label": np.int32(requested)}
  row.update(_condition_fields(pair, condition, tokenizer, text_len, None))
  return row


def sample_eval_batches(config, tokenizer, *, process_index: int, process_count: int) -> list[dict]:
  """config.diffusion.eval_samples rows {'sample_seed', 'sample_label' (-1: unlabelled),
  condition..., 'valid'} asking for the conditions of held-out images, cycling through the
  held-out set when more samples than images are asked for."""
  count = int(config.diffusion.eval_samples)
  if count == 0:
    return []
  held = heldout_pairs(config)
  cycled = grain.MapDataset.source(list(range(count))).map(lambda i: held[i % len(held)])
  subset = cycled.map_with_index(functools.partial(
      _sample_row, condition=config.diffusion.condition, tokenizer=tokenizer, text_len=int(config.data.text_len)))
  zero = _zero_row(config, with_images=False)
  zero.update({"sample_seed": np.int32(0), "sample_label": np.int32(-1)})
  return image_text._eval_batches(subset, lambda row: row, local_batch_size(config, process_count),  # pylint: disable=protected-access
                                  process_index, process_count, zero)


def real_images(config, split: str, max_count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
  """Up to max_count images of `split` in the eval view (a seeded subset when the split is
  larger) as uint8 [N, S, S, C], and their labels (None when the dataset has none): what the
  sample-quality judge learns from."""
  data = config.data
  pairs = image_text.open_pairs(data, split, require_text=config.diffusion.condition == "text")
  if len(pairs) == 0:
    raise ValueError(f"split {split!r} of {image_text.describe_dataset(data)} is empty.")
  subset = pairs.shuffle(seed=seed)[:min(int(max_count), len(pairs))] if max_count else pairs
  size, channels = int(data.image_size), int(config.model.channels)
  rows = list(subset.map(lambda pair: (_view(pair, size, channels, None, min_area=1.0, flip=False), pair["label"]))
              .to_iter_dataset(batching.read_options(64, image_text.THREADS)))
  pixels = np.stack([r[0] for r in rows])
  labels = np.asarray([r[1] for r in rows], np.int64)
  return pixels, (labels if (labels >= 0).all() else None)
