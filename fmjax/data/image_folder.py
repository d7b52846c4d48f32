"""The user's image-caption pairs (`config.data.image_dir` + `config.data.captions_file`).

The captions file is JSONL (`{"image": "rel/path.png", "caption": "..."}` per line) or TSV
(`rel/path.png<TAB>caption`), paths relative to image_dir; several lines may name one image
(several captions). It becomes a tfds dataset with one record per image holding the original
file bytes and all its captions, built once and cached under the data dir. Its builder config
is named by a fingerprint of the captions file and of every image named (path, size,
modification time), so editing either gives a new name, hence a rebuild.

Errors come before training: a malformed line is always an error (file:line); a missing or
undecodable image or an empty caption is an error naming file:line and the image under
`bad_images='error'`, and dropped (and counted in the log) under `'skip'`. The validation split
is by image: the `eval_fraction` of images whose path hashes lowest, so no image is in both
splits, and adding images moves few others.

Without a captions file (config.data.captions_file = '', for paradigms that need no text, such
as unconditional diffusion) every image file under image_dir is an example with no captions,
and the fingerprint covers the folder's listing instead.
"""

import concurrent.futures
import dataclasses
import os

from absl import logging
import tensorflow_datasets as tfds

from fmjax.data import hashing
from fmjax.data import images
from fmjax.data import pair_files

BAD_IMAGE_POLICIES = ("error", "skip")
_CHECK_THREADS = 8  # image decoding in PIL releases the GIL
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Line:
  """One pair as written in the captions file."""
  where: str   # "file:line", for messages
  image: str   # path relative to image_dir, normalised
  caption: str


CAPTION_FIELDS = pair_files.Fields(path="image", text="caption", example_path="rel/path.png",
                                  path_headers=("image",), text_headers=("caption",))


def read_lines(captions_file: str) -> list[Line]:
  """Every non-blank line of the captions file as a Line; a malformed line is a ValueError."""
  return [Line(where=row.where, image=os.path.normpath(row.path), caption=row.text)
          for row in pair_files.read_rows(captions_file, CAPTION_FIELDS)]


def _bad(policy: str, message: str, skipped: dict, reason: str) -> None:
  if policy == "error":
    raise ValueError(f"{message} (config.data.bad_images='error'; 'skip' drops such pairs).")
  skipped[reason] = skipped.get(reason, 0) + 1


def group_captions(lines: list[Line], image_dir: str, policy: str) -> tuple[dict[str, list[str]], dict[str, int]]:
  """{image: its captions} in order of first mention, after the cheap checks (empty caption,
  missing image), and the number of pairs dropped for each reason."""
  pairs: dict[str, list[str]] = {}
  skipped: dict[str, int] = {}
  for line in lines:
    path = os.path.join(image_dir, line.image)
    if not line.caption:
      _bad(policy, f"{line.where}: empty caption for image {path!r}", skipped, "empty caption")
    elif not os.path.isfile(path):
      _bad(policy, f"{line.where}: image {path!r} does not exist", skipped, "missing image")
    elif line.caption not in pairs.setdefault(line.image, []):
      pairs[line.image].append(line.caption)
  return {image: captions for image, captions in pairs.items() if captions}, skipped


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  image_dir: str = ""
  captions_file: str = ""
  # (relative image path, its captions, "file:line" of its first mention), in file order.
  pairs: tuple[tuple[str, tuple[str, ...], str], ...] = ()
  eval_fraction: float = 0.1
  bad_images: str = "error"


_absolute = pair_files.absolute


def folder_images(image_dir: str) -> list[str]:
  """Every image file under image_dir (by suffix), as sorted paths relative to it."""
  return pair_files.files_under(image_dir, IMAGE_SUFFIXES)


def _uncaptioned_config(data_config, image_dir: str, fraction: float, policy: str) -> ImageFolderConfig:
  images_found = folder_images(image_dir)
  if not images_found:
    raise ValueError(f"config.data.image_dir={data_config.image_dir!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) "
                     f"under {image_dir}.")
  pairs = tuple((image, (), os.path.join(image_dir, image)) for image in images_found)
  stats = [os.stat(os.path.join(image_dir, image)) for image in images_found]
  identity = (image_dir, tuple((image, s.st_size, s.st_mtime_ns) for image, s in zip(images_found, stats)))
  return ImageFolderConfig(
      name="f" + hashing.fingerprint(identity, fraction, policy), version="1.0.0",
      description=f"{len(pairs)} images under {image_dir} (no captions)", image_dir=image_dir, captions_file="",
      pairs=pairs, eval_fraction=fraction, bad_images=policy)


def builder_config(data_config) -> ImageFolderConfig:
  """Reads and checks the captions file (or lists the folder when there is none); the config is
  named by a fingerprint of the data."""
  image_dir = _absolute(data_config.image_dir)
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"config.data.image_dir={data_config.image_dir!r}: no such directory ({image_dir}).")
  policy = data_config.bad_images
  if policy not in BAD_IMAGE_POLICIES:
    raise ValueError(f"config.data.bad_images={policy!r}: choose one of {BAD_IMAGE_POLICIES}.")
  fraction = float(data_config.eval_fraction)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"config.data.eval_fraction={fraction}: must be in (0, 1) (the share of images held out).")
  if not data_config.captions_file:
    return _uncaptioned_config(data_config, image_dir, fraction, policy)
  captions_file = _absolute(data_config.captions_file)
  if not os.path.isfile(captions_file):
    raise FileNotFoundError(f"config.data.captions_file={data_config.captions_file!r}: no such file ({captions_file}).")
  lines = read_lines(captions_file)
  grouped, skipped = group_captions(lines, image_dir, policy)
  if skipped:
    logging.warning("%s: skipped %s (config.data.bad_images='skip').", captions_file,
                    ", ".join(f"{n} pairs with {reason}" for reason, n in sorted(skipped.items())))
  if not grouped:
    raise ValueError(f"config.data.captions_file={captions_file!r}: no usable image-caption pairs "
                     f"({len(lines)} lines read, {sum(skipped.values())} skipped).")
  first_mention = {}
  for line in lines:
    first_mention.setdefault(line.image, line.where)
  pairs = tuple((image, tuple(captions), first_mention[image]) for image, captions in grouped.items())
  stats = [os.stat(os.path.join(image_dir, image)) for image, _, _ in pairs]
  identity = (
      (captions_file, os.stat(captions_file).st_size, os.stat(captions_file).st_mtime_ns), image_dir,
      tuple((image, s.st_size, s.st_mtime_ns) for (image, _, _), s in zip(pairs, stats)),
  )
  return ImageFolderConfig(
      name="p" + hashing.fingerprint(identity, fraction, policy),
      version="1.0.0",
      description=f"{len(pairs)} images from {captions_file}",
      image_dir=image_dir,
      captions_file=captions_file,
      pairs=pairs,
      eval_fraction=fraction,
      bad_images=policy,
  )


def held_out(paths: list[str], fraction: float) -> set[str]:
  """The round(fraction * n) images (at least one, never all) whose paths hash lowest."""
  count = min(len(paths) - 1, max(1, int(round(fraction * len(paths)))))
  return set(sorted(paths, key=lambda path: (hashing.unit_interval(path), path))[:count])


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as handle:
    return handle.read()


def _decode_problem(config: ImageFolderConfig, image: str, where: str) -> str | None:
  """None if the image decodes, else a message naming it."""
  path = os.path.join(config.image_dir, image)
  try:
    images.decode_image_bytes(_read_bytes(path), source=repr(path))
  except (ValueError, OSError) as e:
    return f"{where}: {e}"
  return None


class FmjaxImageFolder(tfds.core.GeneratorBasedBuilder):
  """The user's images (original bytes) with all their captions."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # The file's bytes as they are (JPEG stays JPEG); fmjax.data.images decodes them.
            "image": tfds.features.Image(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "path": tfds.features.Text(),  # relative to image_dir, to name the image in errors
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    config: ImageFolderConfig = self.builder_config
    with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
      problems = list(pool.map(lambda pair: _decode_problem(config, pair[0], pair[2]), config.pairs))
    usable = []
    for pair, problem in zip(config.pairs, problems):
      if problem is None:
        usable.append(pair)
      elif config.bad_images == "error":
        raise ValueError(f"{problem} (config.data.bad_images='error'; 'skip' drops such pairs).")
    if len(usable) < len(config.pairs):
      logging.warning("%s: skipped %d undecodable images (config.data.bad_images='skip').",
                      config.captions_file or config.image_dir, len(config.pairs) - len(usable))
    if len(usable) < 2:
      source = (f"config.data.captions_file={config.captions_file!r}" if config.captions_file
                else f"config.data.image_dir={config.image_dir!r}")
      raise ValueError(
          f"{source}: {len(usable)} usable image(s); at least 2 "
          "are needed (training images and held-out ones, config.data.eval_fraction).")
    validation = held_out([image for image, _, _ in usable], config.eval_fraction)
    return {
        "train": self._generate_examples([p for p in usable if p[0] not in validation]),
        "validation": self._generate_examples([p for p in usable if p[0] in validation]),
    }

  def _generate_examples(self, pairs):
    for image, captions, _ in pairs:
      data = _read_bytes(os.path.join(self.builder_config.image_dir, image))
      yield image, {"image": data, "captions": list(captions), "path": image}


def builder(data_config, data_dir: str) -> FmjaxImageFolder:
  return FmjaxImageFolder(config=builder_config(data_config), data_dir=data_dir, file_format="array_record")

