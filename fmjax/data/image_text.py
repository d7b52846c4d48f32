"""Image-text pairs for the contrastive paradigm: sources, grain pipelines and eval sets.

Three kinds of dataset, picked by config.data:
  image_dir + captions_file set    the user's pairs (built on first use; image_folder.py)
  dataset == 'digits'              scikit-learn's digits, captioned (built on first use; digits.py)
  any other dataset                a tfds catalog dataset prepared as ArrayRecord (catalog.py),
                                   image + caption (caption_key, e.g. coco_captions'
                                   'captions/text') or image + label (label_key: captions are
                                   class names in random templates, as for cifar10)
Each split is read as a grain MapDataset of pairs {'image': encoded bytes or array,
'captions': [str, ...], 'label': int (-1: none), 'source': str (names the image in errors)}.

Training: this host's pairs -> seeded shuffle per epoch -> repeat -> per element, with a
generator seeded by (seed, index): decode, random-resized crop (+ flip), one caption drawn
and tokenized -> batch -> prefetch. Every stage is a grain dataset with checkpointable state,
so the iterator resumes exactly. Evaluation uses fixed lists of batches, the same each time.
"""

import dataclasses
import functools
import math
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from fmjax import field_checks
from fmjax.data import batching
from fmjax.data import building
from fmjax.data import catalog
from fmjax.data import digits
from fmjax.data import image_folder
from fmjax.data import images
from fmjax.data import prompts
from fmjax.data import tokenizers
from fmjax.data.pipeline import local_batch_size
from fmjax.data.pipeline import shard_for_process

NO_LABEL = -1
_TOKENIZERS = ("byte", "sentencepiece")


THREADS = 16  # decoding and resizing dominate; PIL releases the GIL for both, so threads scale


def _read_options(batch_size: int) -> grain.ReadOptions:
  return batching.read_options(batch_size, THREADS)


# ---- opening a dataset -----------------------------------------------------------------------


def _kind(data_config) -> str:
  if data_config.image_dir or data_config.captions_file:
    return "pairs"
  if data_config.dataset == "digits":
    return "digits"
  if not data_config.dataset:
    raise ValueError(
        "config.data.dataset is empty and no image_dir/captions_file is set: use 'digits' (offline), a "
        "prepared tfds name such as 'coco_captions' or 'cifar10', or the user's pairs.")
  return "catalog"


@dataclasses.dataclass(frozen=True)
class _Opened:
  """A prepared dataset and where a pair's parts are in its records."""
  builder: tfds.core.DatasetBuilder
  name: str
  image_key: str
  caption_key: str                 # '' = captions from the class names and templates
  label_key: str                   # '' = no labels
  class_names: tuple[str, ...]     # () when unlabelled
  label_captions: tuple[tuple[str, ...], ...]  # per class, when caption_key is ''
  path_key: str = ""               # the user's pairs: the relative path, to name images


def _feature_keys(builder) -> list[str]:
  features = builder.info.features
  return list(features.keys()) if hasattr(features, "keys") else []


def _check_feature(builder, field: str, key: str) -> None:
  keys = _feature_keys(builder)
  if key.split("/")[0] not in keys:
    raise ValueError(f"config.data.{field}={key!r} is not a feature of {builder.info.full_name}; its features are {keys}.")


def _open(data_config, require_text: bool = True) -> _Opened:
  data_dir = building.resolve_data_dir(data_config)
  kind = _kind(data_config)
  if kind == "pairs":
    builder = building.prepared_builder(lambda: image_folder.builder(data_config, data_dir))
    return _Opened(builder, builder.info.full_name, "image", "captions", "", (), (), path_key="path")
  if kind == "digits":
    builder = building.prepared_builder(lambda: digits.builder(data_dir))
    caption_key = "captions"
    label_key = "label"
  else:
    builder = catalog.open_builder(data_config.dataset, data_dir)
    caption_key, label_key = data_config.caption_key, data_config.label_key
    _check_feature(builder, "image_key", data_config.image_key)
    if caption_key:
      _check_feature(builder, "caption_key", caption_key)
      if label_key not in _feature_keys(builder):
        label_key = ""  # caption datasets (coco) have no labels; the default 'label' is not an error
    elif not label_key and require_text:
      raise ValueError(f"config.data.caption_key and config.data.label_key are both empty: {builder.info.full_name} "
                       "needs one of them for its captions.")
  image_key = "image" if kind == "digits" else data_config.image_key
  names = tuple(prompts.class_names_for(_with(data_config, label_key=label_key), builder)) if label_key else ()
  template_set = prompts.templates(data_config.templates)
  label_captions = tuple(tuple(prompts.fill(template_set, name)) for name in names) if not caption_key else ()
  return _Opened(builder, builder.info.full_name, image_key, caption_key, label_key, names, label_captions)


def _with(data_config, **changes) -> ml_collections.ConfigDict:
  copy = ml_collections.ConfigDict(data_config.to_dict())
  for key, value in changes.items():
    copy[key] = value
  return copy


def _as_text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def caption_strings(record, caption_key: str) -> list[str]:
  """The non-empty captions under caption_key, which may be a path through nested features:
  'captions/text' reads record['captions']['text'], or each element's 'text' when the
  captions are a sequence of dicts. A single string counts as one caption."""
  values = [record]
  for part in caption_key.split("/"):
    found = []
    for value in values:
      if isinstance(value, dict):
        found.append(value[part])
      elif isinstance(value, (list, tuple, np.ndarray)):
        found.extend(element[part] for element in value)
      else:
        raise ValueError(f"caption_key={caption_key!r}: {part!r} is inside a {type(value).__name__}, not a dict.")
    values = found
  texts = []
  for value in values:
    if isinstance(value, (str, bytes)):
      texts.append(_as_text(value))
    elif isinstance(value, (list, tuple, np.ndarray)):
      texts.extend(_as_text(v) for v in np.asarray(value, dtype=object).reshape(-1))
    else:
      raise ValueError(f"caption_key={caption_key!r} holds {type(value).__name__}, not text.")
  return [text.strip() for text in texts if text.strip()]


def _to_pair(index: int, record: dict, *, opened: _Opened, split: str) -> dict:
  if opened.path_key:
    source = repr(_as_text(record[opened.path_key]))
  else:
    source = f"{opened.name} {split}[{index}]"
  label = int(record[opened.label_key]) if opened.label_key else NO_LABEL
  if opened.caption_key:
    captions = caption_strings(record, opened.caption_key)
    if not captions and not opened.path_key:  # the user's images may come without captions
      raise ValueError(f"image {source}: no caption under config.data.caption_key={opened.caption_key!r}.")
  else:
    captions = list(opened.label_captions[label]) if opened.label_key else []  # images alone (diffusion)
  return {"image": record[opened.image_key], "captions": captions, "label": label, "source": source}


def _decoders(opened: _Opened) -> dict:
  # tfds would decode images through PIL without converting modes (a palette PNG gives
  # indices); fmjax.data.images decodes them properly, and JPEGs at reduced scale.
  feature = opened.builder.info.features[opened.image_key]
  if isinstance(feature, tfds.features.Image) and np.dtype(feature.np_dtype) in (np.uint8, np.uint16):
    return {opened.image_key: tfds.decode.SkipDecoding()}
  return {}


def _pairs(opened: _Opened, split: str) -> grain.MapDataset:
  available = list(opened.builder.info.splits.keys())
  if "+" not in split and split.split("[")[0] not in available:
    raise ValueError(
        f"split {split!r} (config.data.train_split / eval_split / zeroshot_split) is not in {opened.name}; "
        f"its splits are {available}.")
  source = opened.builder.as_data_source(split=split, decoders=_decoders(opened))
  return grain.MapDataset.source(source).map_with_index(functools.partial(_to_pair, opened=opened, split=split))


def open_pairs(data_config, split: str, require_text: bool = True) -> grain.MapDataset:
  """The split as a grain MapDataset of pairs (see the module notes), in stored order."""
  return _pairs(_open(data_config, require_text), split)


# ---- tokens ----------------------------------------------------------------------------------


def encode_caption(tokenizer: tokenizers.Tokenizer, text: str, text_len: int) -> np.ndarray:
  """int32 [text_len]: [BOS] ids [EOS] then 0s. Long captions are cut before the EOS, which
  always stays: the text tower pools at EOS."""
  if text_len < 2:
    raise ValueError(f"text_len={text_len} must be >= 2 (BOS and EOS; config.data.text_len).")
  ids = tokenizer.encode(text)[: text_len - 2]
  tokens = np.full(text_len, tokenizer.pad_id, dtype=np.int32)
  tokens[0] = tokenizer.bos_id
  tokens[1:1 + len(ids)] = ids
  tokens[1 + len(ids)] = tokenizer.eos_id
  return tokens


def class_prompt_tokens(config, tokenizer: tokenizers.Tokenizer, class_names) -> tuple[np.ndarray, np.ndarray]:
  """Every class name in every template of config.data.templates: tokens int32 [C*T, L] (class
  by class, templates in order) and the class of each row, int32 [C*T]."""
  template_set = prompts.templates(config.data.templates)
  rows, classes = [], []
  for label, name in enumerate(class_names):
    for text in prompts.fill(template_set, name):
      rows.append(encode_caption(tokenizer, text, int(config.data.text_len)))
      classes.append(label)
  if not rows:
    return np.zeros((0, int(config.data.text_len)), np.int32), np.zeros((0,), np.int32)
  return np.stack(rows), np.asarray(classes, dtype=np.int32)


def class_prompt_batches(config, tokenizer: tokenizers.Tokenizer, class_names, *, process_index: int,
                         process_count: int) -> list[dict[str, np.ndarray]]:
  """class_prompt_tokens as this host's eval batches {'text_tokens', 'prompt_class', 'valid'},
  split over processes and zero-padded like the other eval sets."""
  tokens, classes = class_prompt_tokens(config, tokenizer, class_names)
  zero_row = {"text_tokens": np.zeros_like(tokens[0]), "prompt_class": np.zeros((), np.int32)}
  return _eval_batches(range(len(tokens)), lambda i: {"text_tokens": tokens[i], "prompt_class": classes[i]},
                       local_batch_size(config, process_count), process_index, process_count, zero_row)


# ---- training --------------------------------------------------------------------------------


def _decode(pair: dict, min_side: int) -> np.ndarray:
  return images.to_rgb_uint8(pair["image"], source=pair["source"], min_side=min_side)


def _train_example(pair: dict, rng: np.random.Generator, *, tokenizer, image_size: int, text_len: int,
                   min_area: float, flip: bool) -> dict[str, np.ndarray]:
  # A crop keeping a fraction a of the area is about sqrt(a) of each side: decode at least
  # that large, so the crop is never smaller than image_size when the source is not.
  image = _decode(pair, min_side=math.ceil(image_size / math.sqrt(min_area)))
  view = images.train_view(image, image_size, rng, min_area=min_area, flip=flip)
  caption = pair["captions"][int(rng.integers(len(pair["captions"])))]
  return {"images": view, "text_tokens": encode_caption(tokenizer, caption, text_len)}


def make_train_dataset(config, tokenizer: tokenizers.Tokenizer, *, process_index: int,
                       process_count: int) -> grain.IterDataset:
  """Endless host-local batches {'images': uint8 [b, S, S, 3], 'text_tokens': int32 [b, L]},
  b = config.train.batch_size // process_count, S = config.data.image_size, L = text_len.

  Iterate with `iter(...)`; the iterator has get_state / set_state for
  grain.checkpoint.CheckpointSave / CheckpointRestore and resumes exactly.
  """
  data = config.data
  batch_size = local_batch_size(config, process_count)
  ds = shard_for_process(open_pairs(data, data.train_split), process_index, process_count)
  if len(ds) == 0:
    raise ValueError(f"training split {data.train_split!r} (config.data.train_split) of {describe_dataset(data)} "
                     f"has no pairs for process {process_index} of {process_count}.")
  if data.shuffle:
    ds = ds.shuffle(seed=int(config.seed) % 2**32)  # before repeat: reshuffled every epoch
  ds = ds.repeat()
  example = functools.partial(
      _train_example, tokenizer=tokenizer, image_size=int(data.image_size), text_len=int(data.text_len),
      min_area=float(data.min_crop_area), flip=bool(data.flip))
  # Seeded by (seed, element index): crops and caption choices resume exactly and differ by epoch.
  ds = ds.random_map(example, seed=(int(config.seed) + 1) % 2**32)
  return batching.training_batches(ds, batch_size, prefetch=data.prefetch, max_threads=THREADS)


# ---- evaluation ------------------------------------------------------------------------------


def _fixed_subset(pairs: grain.MapDataset, eval_examples: int) -> grain.MapDataset:
  """The first eval_examples pairs (0 = all) of a seed-0 shuffle: spread over the split, and the
  same set whatever config.seed is."""
  shuffled = pairs.shuffle(seed=0)
  count = len(shuffled) if eval_examples <= 0 else min(int(eval_examples), len(shuffled))
  return shuffled[:count]


def _own_rows(count: int, batch_size: int, process_index: int, process_count: int) -> list[range]:
  """For each global batch, the indices of this host's rows: global batch i holds items
  i*G .. (i+1)*G-1 (G = batch_size * process_count) and host p its rows p*b .. (p+1)*b-1, the
  order in which fmjax.parallel.global_batch concatenates hosts. So every global batch, and
  any metric of it, is the same whatever the process count."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  global_size = batch_size * process_count
  starts = range(0, count, global_size)
  return [range(min(s + process_index * batch_size, count), min(s + (process_index + 1) * batch_size, count))
          for s in starts]


def _eval_batches(subset: grain.MapDataset, make_row, batch_size: int, process_index: int,
                  process_count: int, zero_row: dict) -> list[dict]:
  """This host's rows of each global batch of `subset`, zero-padded to batch_size rows, with
  'valid' 1.0 for real rows and 0.0 for padding. Every host returns as many batches (all hosts
  run each eval step together), and the union of their valid rows is `subset`."""
  own = _own_rows(len(subset), batch_size, process_index, process_count)
  indices = [i for rows in own for i in rows]
  rows = []
  if indices:  # decoded in threads; a host whose rows are all padding reads nothing
    read = grain.MapDataset.source(indices).map(lambda i: make_row(subset[i]))
    rows = list(read.to_iter_dataset(_read_options(batch_size)))
  batches, taken = [], 0
  for batch_rows in own:
    chunk = rows[taken:taken + len(batch_rows)]
    taken += len(chunk)
    padded = chunk + [zero_row] * (batch_size - len(chunk))
    batch = {key: np.stack([row[key] for row in padded]) for key in zero_row}
    batch["valid"] = (np.arange(batch_size) < len(chunk)).astype(np.float32)
    batches.append(batch)
  return batches


def _eval_image(pair: dict, image_size: int) -> np.ndarray:
  return images.eval_view(_decode(pair, min_side=image_size), image_size)


def _retrieval_row(pair: dict, *, tokenizer, image_size: int, text_len: int) -> dict[str, np.ndarray]:
  return {"images": _eval_image(pair, image_size),
          "text_tokens": encode_caption(tokenizer, pair["captions"][0], text_len)}


def retrieval_eval_batches(config, tokenizer: tokenizers.Tokenizer, *, process_index: int,
                           process_count: int) -> list[dict[str, np.ndarray]]:
  """The fixed held-out pairs (config.data.eval_split, capped by eval_examples), one per image
  with its first caption, eval preprocessing: host-local batches {'images', 'text_tokens',
  'valid': float32 [b]}, zero-padded at the end (valid 0). The global batches (hosts'
  batches concatenated in process order) are the same for any process count."""
  data = config.data
  batch_size = local_batch_size(config, process_count)
  pairs = open_pairs(data, data.eval_split)
  if len(pairs) == 0:
    raise ValueError(f"evaluation split {data.eval_split!r} (config.data.eval_split) of {describe_dataset(data)} is empty.")
  size, text_len = int(data.image_size), int(data.text_len)
  make_row = functools.partial(_retrieval_row, tokenizer=tokenizer, image_size=size, text_len=text_len)
  zero_row = {"images": np.zeros((size, size, 3), np.uint8), "text_tokens": np.zeros((text_len,), np.int32)}
  return _eval_batches(_fixed_subset(pairs, int(data.eval_examples)), make_row, batch_size, process_index,
                       process_count, zero_row)


def _zeroshot_opened(data_config) -> _Opened | None:
  """The labelled dataset for zero-shot: zeroshot_dataset, else the dataset when labelled."""
  if data_config.zeroshot_dataset:
    # label_key may be '' because the training data (coco) has none; tfds names labels 'label'.
    return _open(_with(data_config, dataset=data_config.zeroshot_dataset, image_dir="", captions_file="",
                       caption_key="", label_key=data_config.label_key or "label"))
  if _kind(data_config) == "pairs":
    return None
  opened = _open(data_config)
  return opened if opened.label_key else None


def _zeroshot_row(pair: dict, *, image_size: int) -> dict[str, np.ndarray]:
  return {"images": _eval_image(pair, image_size), "labels": np.int32(pair["label"])}


def zeroshot_eval_batches(config, *, process_index: int,
                          process_count: int) -> tuple[list[dict[str, np.ndarray]], list[str]]:
  """Labelled held-out images as host-local batches {'images', 'labels': int32 [b], 'valid':
  float32 [b]} (capped by eval_examples, zero-padded) and the class names; ([], []) when
  neither config.data.zeroshot_dataset nor the dataset itself has labels."""
  data = config.data
  opened = _zeroshot_opened(data)
  if opened is None:
    return [], []
  batch_size = local_batch_size(config, process_count)
  split = data.zeroshot_split or data.eval_split
  pairs = _pairs(opened, split)
  if len(pairs) == 0:
    raise ValueError(f"zero-shot split {split!r} (config.data.zeroshot_split or eval_split) of {opened.name} is empty.")
  size = int(data.image_size)
  zero_row = {"images": np.zeros((size, size, 3), np.uint8), "labels": np.int32(0)}
  batches = _eval_batches(_fixed_subset(pairs, int(data.eval_examples)),
                          functools.partial(_zeroshot_row, image_size=size), batch_size, process_index,
                          process_count, zero_row)
  return batches, list(opened.class_names)


# ---- tokenizer training and cache keys -------------------------------------------------------


def describe_dataset(data_config) -> str:
  """A string naming the training captions exactly: equal strings mean equal text (it keys
  cached tokenizers)."""
  kind = _kind(data_config)
  if kind == "pairs":
    config = image_folder.builder_config(data_config)  # named by a fingerprint of the files
    name = f"fmjax_image_folder/{config.name}:{config.version}"
  elif kind == "digits":
    name = f"fmjax_digits:{digits.FmjaxDigits.VERSION}"
  else:
    opened = _open(data_config)
    name = f"{opened.name} caption_key={opened.caption_key}"
    if not opened.caption_key:  # the captions are the class names in the templates
      name += f" label_key={opened.label_key} templates={data_config.templates} classes={list(opened.class_names)}"
  return f"{name} split={data_config.train_split}"


def caption_texts(data_config, max_chars: int, seed: int = 0) -> Iterator[str]:
  """Training captions for a tokenizer: every caption of each pair, pairs in a seeded random
  order, stopping once max_chars characters are yielded. Label datasets yield each class's
  template captions once (that is all their text)."""
  opened = _open(data_config)
  if not opened.caption_key:
    texts = [text for captions in opened.label_captions for text in captions]
  else:
    pairs = _pairs(opened, data_config.train_split)
    if len(pairs) == 0:
      raise ValueError(f"the training split {data_config.train_split!r} of {opened.name} is empty.")
    shuffled = pairs.shuffle(seed=seed)
    texts = (text for index in range(len(shuffled)) for text in shuffled[index]["captions"])
  total = 0
  for text in texts:
    yield text
    total += len(text)
    if total >= max_chars:
      return


# ---- config checks ---------------------------------------------------------------------------


def validate(config, captions_required: bool = True) -> None:
  """Cheap checks of config.data (nothing is opened or built): ConfigError naming the field.
  captions_required=False lets the user's images come without a captions file (image_dir alone)."""
  data = config.data
  check = field_checks.section_checker(data, "data")
  is_int = field_checks.is_int
  check(is_int(data.image_size) and data.image_size >= 1, "image_size", "must be an integer >= 1")
  check(is_int(data.text_len) and data.text_len >= 3, "text_len", "must be an integer >= 3 (BOS, a token, EOS)")
  check(0.0 < data.min_crop_area <= 1.0, "min_crop_area", "must be in (0, 1] (1 = no random crop)")
  check(data.bad_images in image_folder.BAD_IMAGE_POLICIES, "bad_images", f"choose one of {image_folder.BAD_IMAGE_POLICIES}")
  check(data.templates in prompts.TEMPLATE_SETS, "templates", f"choose one of {sorted(prompts.TEMPLATE_SETS)}")
  check(0.0 < data.eval_fraction < 1.0, "eval_fraction", "must be in (0, 1)")
  for field in ("pixel_mean", "pixel_std"):
    value = data[field]
    check(isinstance(value, (tuple, list)) and len(value) == 3, field, "must be 3 numbers (R, G, B)")
  check(all(s > 0 for s in data.pixel_std), "pixel_std", "every value must be > 0")
  check(is_int(data.eval_examples) and data.eval_examples >= 0, "eval_examples", "must be an integer >= 0 (0 = all)")
  check(is_int(data.prefetch) and data.prefetch >= 0, "prefetch", "must be an integer >= 0 (0 = no prefetching)")
  check(data.tokenizer in _TOKENIZERS, "tokenizer", f"choose one of {_TOKENIZERS}")
  check(isinstance(data.flip, bool), "flip", "must be True or False")
  if data.image_dir or data.captions_file:
    check(bool(data.image_dir), "image_dir", f"must be set with config.data.captions_file={data.captions_file!r}")
    if captions_required:
      check(bool(data.captions_file), "captions_file", f"must be set with config.data.image_dir={data.image_dir!r}")
  else:
    check(bool(data.dataset), "dataset", "must be 'digits', a prepared tfds name, or set image_dir + captions_file")
    if data.dataset != "digits":
      check(bool(data.image_key), "image_key", "must name the image feature of the dataset")
      if captions_required:
        check(bool(data.caption_key or data.label_key), "caption_key",
              "caption_key or label_key must be set: captions come from one of them")
