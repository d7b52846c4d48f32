"""Image decoding and preprocessing on the host: anything in, uint8 RGB squares out.

Every image paradigm sees the same contract: `to_rgb_uint8` turns encoded bytes (PNG, JPEG,
GIF, BMP, TIFF, WebP: whatever PIL reads) or an array into a uint8 HxWx3 RGB array, and
`eval_view` / `train_view` turn that into uint8 [size, size, 3]. Normalisation
((x / 255 - mean) / std) happens on the device, so batches cross to it as 1 byte per value.

Pixel values are never guessed from the data: an array's value range comes from its dtype
(uint8 0..255, uint16 0..65535, bool 0..1) or from an explicit `value_range` (e.g. (0, 16) for
scikit-learn's digits, (0, 1) for float images). Transparent pixels are composited onto white.

Random choices take an explicit numpy Generator, so a grain RandomMap (seeded per element)
makes the augmentation reproducible and resumable.
"""

import io
import math
import os

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

# Aspect ratios (width / height) a random training crop may have before it is resized to a
# square: close to 1, so objects are only mildly stretched.
CROP_RATIO_RANGE = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10
_RESAMPLE = Image.Resampling.BICUBIC  # antialiased when shrinking in PIL
_BACKGROUND = 255  # what transparent pixels become: white, as most viewers show them

# PIL modes whose integer values span 16 bits (16-bit PNG / TIFF greyscale).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _default_range(dtype: np.dtype, source: str) -> tuple[float, float]:
  if dtype == np.uint8:
    return (0.0, 255.0)
  if dtype == np.uint16:
    return (0.0, 65535.0)
  if dtype == np.bool_:
    return (0.0, 1.0)
  raise ValueError(
      f"image {source}: an array of dtype {dtype} has no standard pixel range; pass "
      "value_range=(low, high) (e.g. (0, 1) for float images, (0, 16) for scikit-learn's digits)."
  )


def scale_to_uint8(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
  """Maps [low, high] linearly onto 0..255 (values outside are clipped; NaN becomes low)."""
  low, high = float(value_range[0]), float(value_range[1])
  if not high > low:
    raise ValueError(f"value_range={value_range}: high must be greater than low.")
  values = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=low)
  scaled = (values - low) * (255.0 / (high - low))
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _composite_on_white(rgba_HxWx4: np.ndarray) -> np.ndarray:
  alpha_HxWx1 = rgba_HxWx4[..., 3:4].astype(np.float32) / 255.0
  rgb = rgba_HxWx4[..., :3].astype(np.float32) * alpha_HxWx1 + _BACKGROUND * (1.0 - alpha_HxWx1)
  return np.round(rgb).astype(np.uint8)


def _channels_to_rgb(image_HxWxC: np.ndarray, source: str) -> np.ndarray:
  """1 = grey, 2 = grey + alpha, 3 = RGB, 4 = RGBA; anything else cannot be read as colour."""
  channels = image_HxWxC.shape[-1]
  if channels == 1:
    return np.repeat(image_HxWxC, 3, axis=-1)
  if channels == 2:
    grey, alpha = image_HxWxC[..., :1], image_HxWxC[..., 1:]
    return _composite_on_white(np.concatenate([np.repeat(grey, 3, axis=-1), alpha], axis=-1))
  if channels == 3:
    return image_HxWxC
  if channels == 4:
    return _composite_on_white(image_HxWxC)
  raise ValueError(
      f"image {source}: shape {image_HxWxC.shape} has {channels} channels; expected HxW, or HxWxC "
      "with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), channels last."
  )


def array_to_rgb_uint8(array, *, source: str, value_range: tuple[float, float] | None = None) -> np.ndarray:
  """An HxW or HxWxC array of any dtype -> uint8 HxWx3 (see the module notes on ranges)."""
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
    raise ValueError(f"image {source}: shape {array.shape} is not an image (expected HxW or HxWxC, H, W >= 1).")
  if value_range is None:
    value_range = _default_range(array.dtype, source)
  if array.dtype == np.uint8 and tuple(value_range) == (0.0, 255.0):
    as_uint8 = array
  else:
    as_uint8 = scale_to_uint8(array, value_range)
  return np.ascontiguousarray(_channels_to_rgb(as_uint8, source))


def _pil_to_rgb_uint8(image: Image.Image, source: str) -> np.ndarray:
  if image.format == "TIFF" or "exif" in image.info:  # parsing EXIF costs more than a small decode
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
  if image.mode in _SIXTEEN_BIT_MODES:
    return array_to_rgb_uint8(np.asarray(image).astype(np.int64), source=source, value_range=(0, 65535))
  if image.mode == "F":  # 32-bit float greyscale (TIFF): by convention 0..1
    return array_to_rgb_uint8(np.asarray(image), source=source, value_range=(0, 1))
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
  if has_alpha:
    return _composite_on_white(np.asarray(image.convert("RGBA")))
  # Palette, 1-bit, CMYK, YCbCr, LAB, HSV ... all have a well-defined RGB conversion in PIL.
  return np.asarray(image.convert("RGB"))


def decode_image_bytes(data: bytes, *, source: str, min_side: int = 0) -> np.ndarray:
  """Encoded image bytes -> uint8 HxWx3. Anything PIL cannot decode is a ValueError naming
  `source` (a path, or dataset, split and index).

  min_side > 0 lets a JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay >= min_side
  (libjpeg's DCT scaling): several times faster for photos far larger than the model sees.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      if min_side > 0 and image.format == "JPEG":
        image.draft(None, (int(min_side), int(min_side)))  # scale only, mode unchanged
      image.load()
      return _pil_to_rgb_uint8(image, source)
  except UnidentifiedImageError:
    raise ValueError(f"image {source}: cannot decode (not an image format PIL reads; {len(data)} bytes).") from None
  except Exception as e:  # pylint: disable=broad-except
    # PIL's format plugins report corrupt or truncated data as OSError, SyntaxError, EOFError,
    # struct.error, ValueError ...: all mean the same thing here.
    raise ValueError(f"image {source}: cannot decode ({type(e).__name__}: {e}).") from None


def to_rgb_uint8(image, *, source: str, value_range: tuple[float, float] | None = None,
                 min_side: int = 0) -> np.ndarray:
  """Encoded bytes or an array -> uint8 HxWx3 RGB. `source` names the image in errors."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    return decode_image_bytes(bytes(image), source=source, min_side=min_side)
  if isinstance(image, Image.Image):
    return _pil_to_rgb_uint8(image, source)
  if isinstance(image, (np.ndarray, list, tuple)):
    return array_to_rgb_uint8(image, source=source, value_range=value_range)
  raise TypeError(f"image {source}: got {type(image).__name__}; expected encoded bytes or an array.")


def load_image_file(path: str) -> np.ndarray:
  """The image file at `path` as uint8 HxWx3 RGB, for inference tools."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image file {path!r} does not exist (or is not a file).")
  with open(path, "rb") as handle:
    return decode_image_bytes(handle.read(), source=repr(path))


def _resized_box(image_HxWx3: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
  """The region box=(top, left, height, width) resampled to size x size, in one PIL call."""
  top, left, height, width = box
  pil = Image.fromarray(image_HxWx3)
  out = pil.resize((size, size), _RESAMPLE, box=(left, top, left + width, top + height))
  return np.asarray(out)


def _check_rgb(image_HxWx3: np.ndarray) -> np.ndarray:
  if image_HxWx3.dtype != np.uint8 or image_HxWx3.ndim != 3 or image_HxWx3.shape[-1] != 3:
    raise ValueError(
        f"expected a uint8 HxWx3 image (from to_rgb_uint8), got {image_HxWx3.dtype} {image_HxWx3.shape}.")
  return image_HxWx3


def center_square(height: int, width: int) -> tuple[int, int, int, int]:
  """(top, left, side, side) of the largest centered square."""
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side


def eval_view(image_HxWx3: np.ndarray, size: int) -> np.ndarray:
  """Shorter side resized to `size`, then the centered size x size crop: uint8 [size, size, 3].

  Done as one resample of the centered square, which is the same picture without an
  intermediate image. Tiny images (8x8, 1x1) are upsampled.
  """
  image_HxWx3 = _check_rgb(image_HxWx3)
  return _resized_box(image_HxWx3, center_square(*image_HxWx3.shape[:2]), size)


def random_crop_box(height: int, width: int, rng: np.random.Generator, *, min_area: float,
                    ratio_range: tuple[float, float] = CROP_RATIO_RANGE) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random crop covering a fraction in [min_area, 1] of the image, with
  aspect ratio w/h log-uniform in ratio_range.

  A draw that does not fit is drawn again; after a few misses the crop is the centered
  whole image, narrowed to the nearest allowed ratio (so min_area=1 keeps a square image whole).
  """
  if not 0.0 < min_area <= 1.0:
    raise ValueError(f"min_area={min_area} must be in (0, 1] (config.data.min_crop_area).")
  area = height * width
  log_low, log_high = math.log(ratio_range[0]), math.log(ratio_range[1])
  for _ in range(_CROP_ATTEMPTS):
    target = area * rng.uniform(min_area, 1.0)
    ratio = math.exp(rng.uniform(log_low, log_high))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  ratio = width / height
  if ratio < ratio_range[0]:
    w, h = width, max(1, int(round(width / ratio_range[0])))
  elif ratio > ratio_range[1]:
    w, h = max(1, int(round(height * ratio_range[1]))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def train_view(image_HxWx3: np.ndarray, size: int, rng: np.random.Generator, *, min_area: float,
               flip: bool) -> np.ndarray:
  """A random-resized crop (see random_crop_box), optionally mirrored left-right with
  probability 1/2: uint8 [size, size, 3]."""
  image_HxWx3 = _check_rgb(image_HxWx3)
  box = random_crop_box(*image_HxWx3.shape[:2], rng, min_area=min_area)
  view = _resized_box(image_HxWx3, box, size)
  if flip and rng.random() < 0.5:
    view = np.ascontiguousarray(view[:, ::-1])
  return view
