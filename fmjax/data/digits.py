"""The offline default image-text dataset: scikit-learn's 1797 handwritten digits, captioned.

scikit-learn ships the 8x8 images (values 0..16, ink high) inside its package, so this builds
anywhere without a download, in seconds. Each image gets a few captions rendered from varied
templates and its digit's name ("a handwritten 7", "the digit seven", ...), which is enough
text for a contrastive model to tie images to words, and a class label for zero-shot.

Images are stored as 8x8 greyscale PNG (0..16 scaled to 0..255) in a tfds Image feature. tfds
would decode it without TensorFlow (through PIL), but the readers of this package skip tfds'
decoding and decode with fmjax.data.images, the same path as every other image source.
The split is by image and stratified: every fifth image of each digit is held out.
"""

import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from fmjax.data import images

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {numeral} is "7", {word} is "seven". Several phrasings per image so that the text tower
# learns that numerals, words and descriptions name the same thing.
CAPTION_TEMPLATES = (
    "a handwritten {numeral}",
    "the digit {word}",
    "a blurry scan of the number {word}",
    "{numeral}",
    "{word}",
    "a handwritten {word}",
    "the number {numeral}, written by hand",
    "a low resolution image of the digit {word}",
    "a pixelated {word}",
    "a small grey picture of the numeral {numeral}",
    "{word}, handwritten",
    "an 8 by 8 scan of the digit {numeral}",
)
CAPTIONS_PER_IMAGE = 5
HOLD_OUT_EVERY = 5  # per digit, images 4, 9, 14, ... (in scikit-learn's order) are validation
_RAW_RANGE = (0, 16)


def captions_for(index: int, label: int) -> list[str]:
  """CAPTIONS_PER_IMAGE distinct captions, a choice fixed by the image's index."""
  order = np.random.default_rng(index).permutation(len(CAPTION_TEMPLATES))[:CAPTIONS_PER_IMAGE]
  return [CAPTION_TEMPLATES[i].format(numeral=str(label), word=DIGIT_WORDS[label]) for i in order]


def held_out(labels: np.ndarray) -> np.ndarray:
  """bool (N,): the validation images, every HOLD_OUT_EVERY-th of each class (stratified)."""
  mask = np.zeros(len(labels), dtype=bool)
  for label in np.unique(labels):
    of_label = np.flatnonzero(labels == label)
    mask[of_label[HOLD_OUT_EVERY - 1::HOLD_OUT_EVERY]] = True
  return mask


def _png(raw_8x8: np.ndarray) -> bytes:
  grey = images.scale_to_uint8(raw_8x8, _RAW_RANGE)
  buffer = io.BytesIO()
  Image.fromarray(grey, mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


def _load():
  """(images (N, 8, 8) in 0..16, labels (N,)) from scikit-learn's bundled file."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (slow import; build only)

  digits = datasets.load_digits()
  return digits.images, digits.target.astype(np.int64)


class FmjaxDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits with template captions and labels."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,  # needed because this module is not in a tfds dataset folder
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "label": tfds.features.ClassLabel(names=DIGIT_WORDS),
            "id": tfds.features.Scalar(dtype=np.int32),  # index in scikit-learn's array
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    raw, labels = _load()
    validation = held_out(labels)
    return {
        "train": self._generate_examples(raw, labels, np.flatnonzero(~validation)),
        "validation": self._generate_examples(raw, labels, np.flatnonzero(validation)),
    }

  def _generate_examples(self, raw: np.ndarray, labels: np.ndarray, indices: np.ndarray):
    for index in indices:
      label = int(labels[index])
      # The image is passed as PNG bytes: tfds encodes arrays with TensorFlow, bytes as they are.
      yield int(index), {"image": _png(raw[index]), "captions": captions_for(int(index), label),
                         "label": label, "id": int(index)}


def builder(data_dir: str) -> FmjaxDigits:
  return FmjaxDigits(data_dir=data_dir, file_format="array_record")
