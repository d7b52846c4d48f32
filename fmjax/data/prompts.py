"""Prompt templates and class names: how a class label becomes text.

Used twice by the contrastive paradigm: labelled datasets (cifar10, digits, imagenet2012) get
their training captions by putting a class name into a random template, and zero-shot
classification embeds every class name in every template and averages per class.
`config.data.templates` picks the set.
"""

import tensorflow_datasets as tfds

from fmjax.data import catalog

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # Photo-style prompts in the manner of CLIP's ImageNet prompt ensemble (our own wording).
    "default": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a close-up photo of a {}.",
        "a bright photo of a {}.",
        "a cropped photo of the {}.",
        "a low resolution photo of a {}.",
        "a good photo of the {}.",
        "a picture of a {}.",
    ),
    "digits": (
        "a handwritten {}.",
        "the digit {}.",
        "a blurry scan of the number {}.",
        "a small image of the digit {}.",
        "the number {}, written by hand.",
    ),
    "plain": ("{}",),
}


def templates(name: str) -> tuple[str, ...]:
  if name not in TEMPLATE_SETS:
    raise ValueError(f"config.data.templates={name!r}: choose one of {sorted(TEMPLATE_SETS)}.")
  return TEMPLATE_SETS[name]


def fill(template_set: tuple[str, ...], class_name: str) -> list[str]:
  return [template.format(class_name) for template in template_set]


def _label_feature(builder: tfds.core.DatasetBuilder, label_key: str):
  return catalog.feature(builder, "label_key", label_key,
                         "Set config.data.label_key to the class label feature, or '' for none.")


def class_names_for(data_config, builder: tfds.core.DatasetBuilder) -> list[str]:
  """class_names with the data section of the config (what the data modules hold)."""
  label = _label_feature(builder, data_config.label_key)
  num_classes = getattr(label, "num_classes", None)
  given = [name.strip() for name in str(data_config.class_names).split(",") if name.strip()]
  if given:
    if num_classes is not None and len(given) != num_classes:
      raise ValueError(
          f"config.data.class_names names {len(given)} classes, but {builder.info.full_name}'s "
          f"{data_config.label_key!r} feature has {num_classes}.")
    return given
  names = getattr(label, "names", None)
  if not names:
    raise ValueError(
        f"the {data_config.label_key!r} feature of {builder.info.full_name} has no class names; "
        "set config.data.class_names to a comma-separated list, in label order (or config.data.label_key='' for no labels).")
  return [name.replace("_", " ") for name in names]


def class_names(config, builder: tfds.core.DatasetBuilder) -> list[str]:
  """config.data.class_names (comma-separated, in label order), else the names of the label
  feature (config.data.label_key) with underscores as spaces.

  Some catalogs name classes by ids (imagenet2012: WordNet ids such as 'n01440764'): give
  readable names through config.data.class_names for those.
  """
  return class_names_for(config.data, builder)
