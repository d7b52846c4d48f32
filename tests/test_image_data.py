"""Tests of the image-text data: preprocessing, the digits and user-pair datasets, catalog
datasets, and the contrastive grain pipelines.

Pure numpy: nothing here initialises a jax backend. All data is built in temporary folders;
the digits dataset once per session.
"""

import collections
import io
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from fmjax import config_defaults
from fmjax.config_checks import ConfigError
from fmjax.data import ByteTokenizer
from fmjax.data import digits
from fmjax.data import image_folder
from fmjax.data import image_text
from fmjax.data import images
from fmjax.data import prompts

pytestmark = pytest.mark.smoke

TOKENIZER = ByteTokenizer()
SIZE = 12  # image side the tests preprocess to


def make_config(data_dir, batch_size=8, seed=0, **data):
  data.setdefault("image_size", SIZE)
  data.setdefault("text_len", 24)
  data.setdefault("prefetch", 0)
  return ml_collections.ConfigDict(dict(
      seed=seed,
      data=config_defaults.image_text_data(data_dir=str(data_dir), **data),
      train=config_defaults.train(batch_size=batch_size)))


def png_bytes(image, fmt="PNG") -> bytes:
  """An array or PIL image, encoded."""
  buffer = io.BytesIO()
  (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=fmt)
  return buffer.getvalue()


def colour(i: int) -> tuple[int, int, int]:
  """A colour that identifies image i after resizing (flat images stay flat)."""
  return (10 * i % 256, 255 - 10 * i % 256, 77)


def write_pairs(folder, count=12, captions_per_image=2, fmt="jsonl", sizes=((20, 30), (9, 9), (40, 16))):
  """`count` flat-coloured PNGs of varied sizes and a captions file naming each image
  `captions_per_image` times. Returns (image_dir, captions_file)."""
  image_dir = folder / "images"
  (image_dir / "sub").mkdir(parents=True)
  lines = []
  for i in range(count):
    h, w = sizes[i % len(sizes)]
    rel = f"sub/img{i}.png" if i % 2 else f"img{i}.png"
    (image_dir / rel).write_bytes(png_bytes(np.full((h, w, 3), colour(i), np.uint8)))
    for c in range(captions_per_image):
      caption = f"picture {i} caption {c}"
      lines.append(json.dumps({"image": rel, "caption": caption}) if fmt == "jsonl" else f"{rel}\t{caption}")
  captions = folder / f"captions.{fmt}"
  captions.write_text("\n".join(lines) + "\n")
  return image_dir, captions


def pairs_config(tmp_path, image_dir, captions, **data):
  return make_config(tmp_path / "tfds", image_dir=str(image_dir), captions_file=str(captions), **data)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds_digits")
  image_text.open_pairs(make_config(data_dir).data, "train")
  return data_dir


# ---- images.py -------------------------------------------------------------------------------


def _check_rgb(image, shape):
  assert image.dtype == np.uint8 and image.shape == shape


def test_arrays_of_any_layout_become_rgb():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  for array in (grey, grey[..., None]):
    out = images.to_rgb_uint8(array, source="grey")
    _check_rgb(out, (5, 7, 3))
    assert (out == grey[..., None]).all()
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
  out = images.to_rgb_uint8(rgba, source="rgba")
  assert (out[:2] == (200, 0, 0)).all() and (out[2:] == 255).all()  # transparent -> white
  # Ranges: given explicitly for the digits' 0..16 and floats; uint16 uses its dtype's range.
  _check_rgb(images.to_rgb_uint8(np.array([[0, 8, 16]]), source="d", value_range=(0, 16)), (1, 3, 3))
  assert images.to_rgb_uint8(np.array([[0, 8, 16]]), source="d", value_range=(0, 16))[0, :, 0].tolist() == [0, 128, 255]
  assert images.to_rgb_uint8(np.array([[0.0, 1.0, 2.0]]), source="f", value_range=(0, 1))[0, :, 1].tolist() == [0, 255, 255]
  assert images.to_rgb_uint8(np.array([[65535]], np.uint16), source="u16")[0, 0].tolist() == [255, 255, 255]
  with pytest.raises(ValueError, match="image floats.*value_range"):
    images.to_rgb_uint8(np.zeros((3, 3), np.float32), source="floats")
  with pytest.raises(ValueError, match="image chw.*5 channels"):
    images.to_rgb_uint8(np.zeros((3, 3, 5), np.uint8), source="chw")


def test_encoded_images_of_any_mode_become_rgb():
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
  cases = {
      "palette": png_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
      "grey_alpha": png_bytes(Image.fromarray(rgb).convert("LA")),
      "cmyk_jpeg": png_bytes(Image.fromarray(rgb).convert("CMYK"), fmt="JPEG"),
      "sixteen_bit": png_bytes(np.full((30, 20), 65535, np.uint16)),
      "one_bit": png_bytes(rgb[..., 0] > 128),
  }
  for name, data in cases.items():
    out = images.to_rgb_uint8(data, source=name)
    _check_rgb(out, (30, 20, 3))
  assert (images.to_rgb_uint8(cases["sixteen_bit"], source="x") == 255).all()
  palette = Image.open(io.BytesIO(cases["palette"]))
  decoded = images.to_rgb_uint8(cases["palette"], source="p")
  assert (decoded == np.asarray(palette.convert("RGB"))).all() and decoded.max() > 16  # colours, not indices
  # A photo whose EXIF says "rotate 90 degrees" comes out upright.
  upright = Image.fromarray(rgb)
  exif = upright.getexif()
  exif[0x0112] = 6  # Orientation tag
  buffer = io.BytesIO()
  upright.save(buffer, format="JPEG", exif=exif.tobytes())
  _check_rgb(images.to_rgb_uint8(buffer.getvalue(), source="exif"), (20, 30, 3))
  with pytest.raises(ValueError, match=r"image data\.tfds\[3\]: cannot decode"):
    images.to_rgb_uint8(b"not an image", source="data.tfds[3]")
  with pytest.raises(ValueError, match="image 'cut.jpg': cannot decode"):
    images.to_rgb_uint8(png_bytes(rgb, fmt="JPEG")[:300], source="'cut.jpg'")


def test_jpeg_decodes_at_reduced_scale_but_never_below_min_side():
  big = png_bytes(np.random.default_rng(0).integers(0, 256, (400, 640, 3), dtype=np.uint8), fmt="JPEG")
  assert images.decode_image_bytes(big, source="b").shape == (400, 640, 3)
  reduced = images.decode_image_bytes(big, source="b", min_side=90)
  assert min(reduced.shape[:2]) >= 90 and reduced.shape[0] < 400


def test_views_have_the_model_shape_for_tiny_and_large_inputs():
  rng = np.random.default_rng(0)
  for shape in ((1, 1, 3), (8, 8, 3), (37, 300, 3), (500, 33, 3)):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    _check_rgb(images.eval_view(image, SIZE), (SIZE, SIZE, 3))
    _check_rgb(images.train_view(image, SIZE, rng, min_area=0.3, flip=True), (SIZE, SIZE, 3))
  one_pixel = np.full((1, 1, 3), (9, 99, 199), np.uint8)
  assert (images.eval_view(one_pixel, SIZE) == (9, 99, 199)).all()  # upsampled, unchanged colour
  # Eval: the centered square. A wide image with a red middle and blue sides looks all red.
  wide = np.zeros((10, 30, 3), np.uint8)
  wide[:, :, 2] = 255
  wide[:, 10:20] = (255, 0, 0)
  assert (images.eval_view(wide, 10) == (255, 0, 0)).all()


def test_random_crops_are_deterministic_for_a_seed_and_respect_min_area():
  image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  views = [images.train_view(image, SIZE, np.random.default_rng(s), min_area=0.2, flip=True) for s in (7, 7, 8)]
  assert np.array_equal(views[0], views[1]) and not np.array_equal(views[0], views[2])
  rng = np.random.default_rng(3)
  for _ in range(200):
    top, left, h, w = images.random_crop_box(40, 50, rng, min_area=0.5)
    assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50
    assert h * w >= 0.5 * 40 * 50 * 0.95  # rounding of the sides aside
  # min_area=1 keeps a square image whole; flipping mirrors it.
  square = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  assert images.random_crop_box(SIZE, SIZE, rng, min_area=1.0) == (0, 0, SIZE, SIZE)
  flips = {images.train_view(square, SIZE, np.random.default_rng(s), min_area=1.0, flip=True).tobytes() for s in range(20)}
  assert flips == {square.tobytes(), square[:, ::-1].tobytes()}


def test_load_image_file(tmp_path):
  path = tmp_path / "a.png"
  path.write_bytes(png_bytes(np.full((3, 4), 7, np.uint8)))
  _check_rgb(images.load_image_file(str(path)), (3, 4, 3))
  with pytest.raises(FileNotFoundError, match="missing.png"):
    images.load_image_file(str(tmp_path / "missing.png"))
  (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
  with pytest.raises(ValueError, match="bad.png.*cannot decode"):
    images.load_image_file(str(tmp_path / "bad.png"))


# ---- digits ----------------------------------------------------------------------------------


def test_digits_split_by_image_with_all_classes(digits_dir):
  data = make_config(digits_dir).data
  splits = {s: image_text.open_pairs(data, s) for s in ("train", "validation")}
  builder = digits.builder(str(digits_dir))
  ids = {s: [r["id"] for r in builder.as_data_source(split=s)] for s in splits}
  assert not set(ids["train"]) & set(ids["validation"])
  assert sorted(ids["train"] + ids["validation"]) == list(range(1797))
  assert 0.18 < len(ids["validation"]) / 1797 < 0.22
  for split, pairs in splits.items():
    labels = [pairs[i]["label"] for i in range(len(pairs))]
    assert sorted(set(labels)) == list(range(10)), split
  pair = splits["validation"][0]
  word, numeral = digits.DIGIT_WORDS[pair["label"]], str(pair["label"])
  assert len(set(pair["captions"])) == digits.CAPTIONS_PER_IMAGE
  assert all(word in c or numeral in c for c in pair["captions"])
  all_captions = {c for i in range(50) for c in splits["train"][i]["captions"]}
  assert len(all_captions) > 50  # varied phrasings, not one per class
  assert builder.info.features["label"].names == list(digits.DIGIT_WORDS)
  image = images.to_rgb_uint8(pair["image"], source=pair["source"])
  _check_rgb(image, (8, 8, 3))
  assert image.max() > 100 and image.min() < 50  # ink on background, full range


# ---- captions and prompts --------------------------------------------------------------------


def test_encode_caption_bos_eos_pad_and_cut():
  tokens = image_text.encode_caption(TOKENIZER, "hi", 6)
  assert tokens.dtype == np.int32 and tokens.tolist() == [1, *TOKENIZER.encode("hi").tolist(), 2, 0, 0]
  long = image_text.encode_caption(TOKENIZER, "a much longer caption", 6)
  assert long.tolist() == [1, *TOKENIZER.encode("a mu").tolist(), 2]
  assert image_text.encode_caption(TOKENIZER, "", 4).tolist() == [1, 2, 0, 0]


def test_prompt_tokens_and_class_names(tmp_path):
  config = make_config(tmp_path, templates="digits", text_len=40)
  names = ["zero", "sea turtle"]
  tokens, classes = image_text.class_prompt_tokens(config, TOKENIZER, names)
  count = len(prompts.TEMPLATE_SETS["digits"])
  assert tokens.shape == (2 * count, 40) and tokens.dtype == np.int32
  assert classes.tolist() == [0] * count + [1] * count
  assert TOKENIZER.decode(tokens[count]) == prompts.TEMPLATE_SETS["digits"][0].format("sea turtle")
  assert prompts.templates("plain") == ("{}",)
  with pytest.raises(ValueError, match="config.data.templates='nope'"):
    prompts.templates("nope")


# ---- training pipeline -----------------------------------------------------------------------


def test_train_batches_from_digits(digits_dir):
  config = make_config(digits_dir, batch_size=16, min_crop_area=0.5)
  iterator = iter(image_text.make_train_dataset(config, TOKENIZER, process_index=0, process_count=2))
  batch = next(iterator)
  iterator.close()
  assert sorted(batch) == ["images", "text_tokens"]
  assert batch["images"].shape == (8, SIZE, SIZE, 3) and batch["images"].dtype == np.uint8
  assert batch["text_tokens"].shape == (8, 24) and batch["text_tokens"].dtype == np.int32
  assert (batch["text_tokens"][:, 0] == 1).all() and ((batch["text_tokens"] == 2).sum(1) == 1).all()
  texts = [TOKENIZER.decode(t) for t in batch["text_tokens"]]
  assert any(w in t for t in texts for w in digits.DIGIT_WORDS + tuple("0123456789"))


def _epoch_colours(config, process_index, process_count, batches):
  """Image identities (their flat colour) seen in `batches` training batches of a process."""
  iterator = iter(image_text.make_train_dataset(config, TOKENIZER, process_index=process_index, process_count=process_count))
  seen = []
  for _ in range(batches):
    batch = next(iterator)
    seen.extend(tuple(int(v) for v in image[SIZE // 2, SIZE // 2]) for image in batch["images"])
  iterator.close()
  return seen


def test_process_shards_are_disjoint_and_cover_the_split(tmp_path):
  image_dir, captions = write_pairs(tmp_path, count=12)
  config = pairs_config(tmp_path, image_dir, captions, eval_fraction=0.2, min_crop_area=0.5, batch_size=2)
  train = image_text.open_pairs(config.data, "train")
  expected = collections.Counter(
      tuple(int(v) for v in images.to_rgb_uint8(train[i]["image"], source="t")[0, 0]) for i in range(len(train)))
  assert len(train) == 10 and len(expected) == 10
  shards = [_epoch_colours(config, p, 2, batches=5) for p in range(2)]  # 5 per process = one epoch
  assert not set(shards[0]) & set(shards[1])
  assert collections.Counter(shards[0] + shards[1]) == expected
  # The next epoch visits the same images again, in another order.
  two_epochs = _epoch_colours(config, 0, 2, batches=10)
  assert sorted(two_epochs[:5]) == sorted(two_epochs[5:]) and two_epochs[:5] != two_epochs[5:]


def test_train_iterator_resumes_exactly_through_json(digits_dir):
  config = make_config(digits_dir, batch_size=8, seed=5, prefetch=2, flip=True, min_crop_area=0.3)

  def make():
    return iter(image_text.make_train_dataset(config, TOKENIZER, process_index=1, process_count=2))

  iterator = make()
  for _ in range(3):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))  # as grain.checkpoint stores it
  expected = [next(iterator) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in ("images", "text_tokens"):
      np.testing.assert_array_equal(got[key], want[key])
  fresh = make()
  assert not np.array_equal(next(fresh)["images"], expected[0]["images"])
  for it in (iterator, resumed, fresh):
    it.close()


# ---- evaluation sets -------------------------------------------------------------------------


def test_retrieval_eval_batches_fixed_padded_and_split_over_processes(digits_dir):
  config = make_config(digits_dir, batch_size=8, eval_examples=21)
  one = image_text.retrieval_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  again = image_text.retrieval_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  assert len(one) == 3 and [b["valid"].sum() for b in one] == [8, 8, 5]
  for a, b in zip(one, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  last = one[-1]
  assert last["valid"].dtype == np.float32 and (last["images"][5:] == 0).all() and (last["text_tokens"][5:] == 0).all()
  assert (last["text_tokens"][:5, 0] == 1).all()
  # Another seed sees the same set; two processes split it (batches of 4) and together hold it.
  assert np.array_equal(image_text.retrieval_eval_batches(make_config(digits_dir, 8, seed=9, eval_examples=21),
                                                          TOKENIZER, process_index=0, process_count=1)[0]["images"], one[0]["images"])

  def rows(batches):
    return [(b["images"][i].tobytes(), b["text_tokens"][i].tobytes()) for b in batches for i in range(len(b["valid"])) if b["valid"][i]]

  halves = [image_text.retrieval_eval_batches(config, TOKENIZER, process_index=p, process_count=2) for p in range(2)]
  assert len(halves[0]) == len(halves[1]) == 3  # same count on every host, though host 1 has fewer rows
  assert all(b["images"].shape == (4, SIZE, SIZE, 3) for h in halves for b in h)
  assert collections.Counter(rows(halves[0]) + rows(halves[1])) == collections.Counter(rows(one))
  for whole, first, second in zip(one, *halves):  # hosts' rows in process order = the 1-process batch
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
  everything = image_text.retrieval_eval_batches(make_config(digits_dir, 8, eval_examples=0), TOKENIZER,
                                                 process_index=0, process_count=1)
  assert sum(b["valid"].sum() for b in everything) == len(image_text.open_pairs(config.data, "validation"))


def test_zeroshot_batches_and_class_names(digits_dir, tmp_path):
  config = make_config(digits_dir, batch_size=8, eval_examples=13)
  batches, names = image_text.zeroshot_eval_batches(config, process_index=0, process_count=1)
  assert names == list(digits.DIGIT_WORDS)
  assert [b["valid"].sum() for b in batches] == [8, 5]
  labels = np.concatenate([b["labels"][b["valid"] > 0] for b in batches])
  assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() <= 9 and len(set(labels)) > 3
  assert (batches[-1]["labels"][5:] == 0).all() and (batches[-1]["images"][5:] == 0).all()
  assert batches[0]["images"].shape == (8, SIZE, SIZE, 3)
  named = make_config(digits_dir, class_names="nil, uno, dos, tres, cuatro, cinco, seis, siete, ocho, nueve")
  assert image_text.zeroshot_eval_batches(named, process_index=0, process_count=1)[1][:2] == ["nil", "uno"]
  with pytest.raises(ValueError, match="class_names names 2 classes.*has 10"):
    image_text.zeroshot_eval_batches(make_config(digits_dir, class_names="a,b"), process_index=0, process_count=1)
  # The user's pairs have no labels: no zero-shot, unless a labelled dataset is named for it.
  image_dir, captions = write_pairs(tmp_path, count=6)
  pairs = pairs_config(tmp_path, image_dir, captions)
  assert image_text.zeroshot_eval_batches(pairs, process_index=0, process_count=1) == ([], [])
  pairs.data.data_dir = str(digits_dir)
  pairs.data.zeroshot_dataset = "digits"
  batches, names = image_text.zeroshot_eval_batches(pairs, process_index=0, process_count=1)
  assert names == list(digits.DIGIT_WORDS) and batches


# ---- the user's pairs ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_user_pairs_grouped_by_image_and_split_by_image(tmp_path, fmt):
  image_dir, captions = write_pairs(tmp_path, count=10, captions_per_image=3, fmt=fmt)
  config = pairs_config(tmp_path, image_dir, captions, eval_fraction=0.3)
  splits = {s: image_text.open_pairs(config.data, s) for s in ("train", "validation")}
  assert (len(splits["train"]), len(splits["validation"])) == (7, 3)
  names = {s: [p["source"] for p in ds] for s, ds in splits.items()}
  assert not set(names["train"]) & set(names["validation"])
  for pair in splits["train"]:
    i = int(pair["source"].split("img")[1].split(".")[0])
    assert pair["captions"] == [f"picture {i} caption {c}" for c in range(3)]
    assert (images.to_rgb_uint8(pair["image"], source=pair["source"]) == colour(i)).all()
  # Captions drawn per visit vary across the image's captions.
  config.train.batch_size = 7
  iterator = iter(image_text.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1))
  texts = {TOKENIZER.decode(t) for _ in range(6) for t in next(iterator)["text_tokens"]}
  iterator.close()
  assert len(texts) > 7
  retrieval = image_text.retrieval_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  first = {TOKENIZER.decode(t) for b in retrieval for t, v in zip(b["text_tokens"], b["valid"]) if v}
  assert len(first) == 3 and all(t.endswith("caption 0") for t in first)
  assert "fmjax_image_folder/p" in image_text.describe_dataset(config.data)
  assert sorted(image_text.caption_texts(config.data, 10**6)) == sorted(
      c for p in splits["train"] for c in p["captions"])


def test_user_pairs_rebuild_when_files_change(tmp_path):
  image_dir, captions = write_pairs(tmp_path, count=4)
  config = pairs_config(tmp_path, image_dir, captions)
  before = image_text.describe_dataset(config.data)
  assert image_text.describe_dataset(config.data) == before
  with open(captions, "a") as handle:
    handle.write(json.dumps({"image": "img0.png", "caption": "one more"}) + "\n")
  assert image_text.describe_dataset(config.data) != before
  train, validation = (image_text.open_pairs(config.data, s) for s in ("train", "validation"))
  assert any("one more" in p["captions"] for p in list(train) + list(validation))


def _open_train(config):
  return image_text.open_pairs(config.data, "train")


def test_user_pairs_missing_paths_and_malformed_lines(tmp_path):
  image_dir, captions = write_pairs(tmp_path, count=4)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.captions_file='.*nope.jsonl'"):
    _open_train(pairs_config(tmp_path, image_dir, tmp_path / "nope.jsonl"))
  with pytest.raises(FileNotFoundError, match=r"config\.data\.image_dir='.*no_dir'"):
    _open_train(pairs_config(tmp_path, tmp_path / "no_dir", captions))
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"image": "img0.png", "caption": "ok"}\n\n{"image": "img2.png", "caption": \n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
    _open_train(pairs_config(tmp_path, image_dir, bad_json))
  no_key = tmp_path / "nokey.jsonl"
  no_key.write_text('{"image": "img0.png", "text": "ok"}\n')
  with pytest.raises(ValueError, match=r"nokey\.jsonl:1: expected an object"):
    _open_train(pairs_config(tmp_path, image_dir, no_key))
  bad_tsv = tmp_path / "bad.tsv"
  bad_tsv.write_text("image\tcaption\nimg0.png\tfine\nimg2.png no tab here\n")
  with pytest.raises(ValueError, match=r"bad\.tsv:3: expected 'rel/path.png<TAB>caption'"):
    _open_train(pairs_config(tmp_path, image_dir, bad_tsv))


@pytest.mark.parametrize("problem", ["missing", "undecodable", "empty caption"])
def test_user_pairs_bad_pairs_error_or_skip(tmp_path, problem):
  image_dir, _ = write_pairs(tmp_path, count=4)
  (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  image, caption = {"missing": ("gone.png", "a cat"), "undecodable": ("broken.png", "a dog"),
                    "empty caption": ("img2.png", "   ")}[problem]
  captions = tmp_path / "pairs.tsv"
  captions.write_text(f"img0.png\tzero\nsub/img1.png\tone\n{image}\t{caption}\nsub/img3.png\tthree\n")
  with pytest.raises(ValueError, match=rf"pairs\.tsv:3: .*{image}.*bad_images='error'"):
    _open_train(pairs_config(tmp_path, image_dir, captions))
  config = pairs_config(tmp_path, image_dir, captions, bad_images="skip")
  kept = [p for s in ("train", "validation") for p in image_text.open_pairs(config.data, s)]
  assert sorted(c for p in kept for c in p["captions"]) == ["one", "three", "zero"]


def test_user_pairs_with_nothing_usable(tmp_path):
  image_dir, _ = write_pairs(tmp_path, count=2)
  captions = tmp_path / "pairs.jsonl"
  captions.write_text(json.dumps({"image": "gone.png", "caption": "x"}) + "\n")
  with pytest.raises(ValueError, match="no usable image-caption pairs"):
    _open_train(pairs_config(tmp_path, image_dir, captions, bad_images="skip"))
  captions.write_text(json.dumps({"image": "img0.png", "caption": "x"}) + "\n")
  with pytest.raises(ValueError, match="1 usable image.*at least 2"):
    _open_train(pairs_config(tmp_path, image_dir, captions))


def test_held_out_images_by_hash_rank():
  paths = [f"img{i}.png" for i in range(40)]
  held = image_folder.held_out(paths, 0.25)
  assert len(held) == 10 and held == image_folder.held_out(list(reversed(paths)), 0.25)
  assert image_folder.held_out(paths + ["new.png"], 0.25) - held <= {"new.png"}  # the others stay put
  assert len(image_folder.held_out(paths[:2], 0.01)) == 1 and len(image_folder.held_out(paths[:2], 0.99)) == 1


# ---- catalog datasets ------------------------------------------------------------------------


class FmjaxTestCaptioned(tfds.core.GeneratorBasedBuilder):
  """A stand-in for coco_captions: a sequence of caption dicts per image."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(),
        "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(6)), "val": self._generate_examples(range(6, 9))}

  def _generate_examples(self, indices):
    for i in indices:
      yield i, {"image": png_bytes(np.full((6, 10, 3), colour(i), np.uint8)),
                "captions": [{"id": 2 * i, "text": f"scene {i}"}, {"id": 2 * i + 1, "text": f"view {i}"}]}


class FmjaxTestLabelled(tfds.core.GeneratorBasedBuilder):
  """A stand-in for cifar10: images with a ClassLabel whose names hold underscores."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "picture": tfds.features.Image(shape=(5, 5, 3)),
        "label": tfds.features.ClassLabel(names=["sea_turtle", "red_fox", "owl"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

  def _generate_examples(self, count):
    for i in range(count):
      yield i, {"picture": png_bytes(np.full((5, 5, 3), colour(i), np.uint8)), "label": i % 3}


def test_catalog_dataset_with_caption_sequences(tmp_path):
  FmjaxTestCaptioned(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config = make_config(tmp_path, dataset="fmjax_test_captioned", caption_key="captions/text", eval_split="val")
  pairs = image_text.open_pairs(config.data, "train")
  by_scene = {p["captions"][0]: p for p in pairs}
  assert sorted(by_scene) == [f"scene {i}" for i in range(6)]
  assert by_scene["scene 3"]["captions"] == ["scene 3", "view 3"] and by_scene["scene 3"]["label"] == image_text.NO_LABEL
  assert by_scene["scene 3"]["source"].startswith("fmjax_test_captioned/1.0.0 train[")
  assert image_text.zeroshot_eval_batches(config, process_index=0, process_count=1) == ([], [])
  config.data.label_key = ""  # as a coco config says; zero-shot on another dataset still finds labels
  config.data.zeroshot_dataset = "fmjax_test_labelled"
  config.data.zeroshot_split = "test"
  FmjaxTestLabelled(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  with pytest.raises(ValueError, match=r"config\.data\.image_key='image'.*'picture'"):
    image_text.zeroshot_eval_batches(config, process_index=0, process_count=1)
  config.data.image_key = "picture"  # (a real pair such as coco + cifar10 both call it 'image')
  batches, names = image_text.zeroshot_eval_batches(config, process_index=0, process_count=1)
  assert names == ["sea turtle", "red fox", "owl"] and [b["valid"].sum() for b in batches] == [5]
  config.data.update(image_key="image", label_key="", zeroshot_dataset="")
  batches = image_text.retrieval_eval_batches(config, TOKENIZER, process_index=0, process_count=1)
  assert [b["valid"].sum() for b in batches] == [3]
  assert image_text.caption_strings({"c": "one"}, "c") == ["one"]
  assert image_text.caption_strings({"c": [b"a", b" ", "b"]}, "c") == ["a", "b"]
  assert image_text.caption_strings({"c": [{"t": "x"}, {"t": "y"}]}, "c/t") == ["x", "y"]
  with pytest.raises(ValueError, match=r"config\.data\.caption_key='text'.*'captions'"):
    image_text.open_pairs(make_config(tmp_path, dataset="fmjax_test_captioned", caption_key="text").data, "train")
  with pytest.raises(ValueError, match=r"split 'validation'.*'val'"):
    image_text.open_pairs(make_config(tmp_path, dataset="fmjax_test_captioned", caption_key="captions/text").data, "validation")


def test_catalog_dataset_with_labels_as_captions(tmp_path):
  FmjaxTestLabelled(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config = make_config(tmp_path, dataset="fmjax_test_labelled", image_key="picture",
                       eval_split="test", templates="default", text_len=48)
  pairs = image_text.open_pairs(config.data, "train")
  turtle = next(p for p in pairs if p["label"] == 0)
  assert turtle["captions"] == prompts.fill(prompts.TEMPLATE_SETS["default"], "sea turtle")
  iterator = iter(image_text.make_train_dataset(config, TOKENIZER, process_index=0, process_count=1))
  texts = {TOKENIZER.decode(t) for _ in range(3) for t in next(iterator)["text_tokens"]}
  iterator.close()
  assert len(texts) > 3 and all(any(n in t for n in ("sea turtle", "red fox", "owl")) for t in texts)
  batches, names = image_text.zeroshot_eval_batches(config, process_index=0, process_count=1)
  assert names == ["sea turtle", "red fox", "owl"] and [b["valid"].sum() for b in batches] == [5]
  assert sorted(batches[0]["labels"][:5].tolist()) == [0, 0, 1, 1, 2]
  assert "templates=default" in image_text.describe_dataset(config.data)
  assert set(image_text.caption_texts(config.data, 10**6)) == {
      c for n in names for c in prompts.fill(prompts.TEMPLATE_SETS["default"], n)}
  with pytest.raises(FileNotFoundError, match="tfds build fmjax_test_nothing"):
    image_text.open_pairs(make_config(tmp_path, dataset="fmjax_test_nothing").data, "train")


# ---- config checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("image_size", 0, "integer >= 1"),
    ("text_len", 2, ">= 3"),
    ("min_crop_area", 0.0, r"\(0, 1\]"),
    ("min_crop_area", 1.5, r"\(0, 1\]"),
    ("bad_images", "ignore", "choose one of"),
    ("templates", "fancy", "choose one of"),
    ("eval_fraction", 1.0, r"\(0, 1\)"),
    ("pixel_mean", (0.5, 0.5), "3 numbers"),
    ("pixel_std", (0.5, 0.0, 0.5), "> 0"),
    ("eval_examples", -1, ">= 0"),
    ("tokenizer", "words", "choose one of"),
    ("image_dir", "/some/dir", "must be set with"),
    ("dataset", "", "digits"),
])
def test_validate_names_the_field(tmp_path, field, value, message):
  config = make_config(tmp_path)
  image_text.validate(config)  # the defaults pass
  config.data[field] = value
  with pytest.raises(ConfigError, match=rf"config\.data\.\w+=.*{message}"):
    image_text.validate(config)
