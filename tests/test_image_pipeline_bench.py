"""benchmarks/image_pipeline.py times fmjax's own CLIP training preprocessing; here at 32 px."""

import json

import numpy as np

from conftest import load_module


image_pipeline = load_module("benchmarks/image_pipeline.py", "image_pipeline")


def test_synthetic_photos_compress_like_photos():
  """A 640x480 synthetic photo at quality 90 is a photo-sized JPEG, neither noise nor flat."""
  data = image_pipeline.synthetic_photo(np.random.default_rng(0), 640, 480)
  assert data[:2] == b"\xff\xd8" and 50_000 < len(data) < 200_000


def test_in_process_run_reports_throughput(tmp_path):
  out = tmp_path / "bench.jsonl"
  records = image_pipeline.main(["--images", "8", "--size", "32", "--batch", "4", "--seconds", "0.2",
                                 "--threads", "", "--workers", "", "--json-out", str(out)])
  header, *lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert lines == records and len(records) == 1
  assert {"cpu", "nproc", "python", "grain", "pillow", "numpy"} <= set(header["machine"])
  assert header["data"]["images"] == 8
  record = records[0]
  assert record["mode"] == "in_process" and record["images"] > 0 and record["images_per_s"] > 0
  assert record["images_per_cpu_s"] > 0 and record["cores_for_2500"] > 0
  assert record["batch_shape"] == [4, 32, 32, 3] and record["batch_dtype"] == "uint8"


def test_threads_make_the_same_batches_as_one_thread():
  """Every mode runs the same seeded work: the batches match element for element."""
  pairs = image_pipeline.make_pairs(4, photo_sizes=((80, 60), (60, 80)))
  data_config = image_pipeline.vit_b16_data_config()
  tokenizer = image_pipeline.caption_tokenizer(pairs, int(data_config.vocab_size))
  examples = image_pipeline.train_examples(pairs, tokenizer, size=32, data_config=data_config)
  single = next(image_pipeline.in_process_batches(examples, 4))
  assert single["images"].shape == (4, 32, 32, 3) and single["images"].dtype == np.uint8
  assert single["text_tokens"].shape == (4, int(data_config.text_len))
  iterator = iter(image_pipeline.threaded_batches(examples, 4, threads=2, prefetch=1))
  threaded = next(iterator)
  iterator.close()
  for key in ("images", "text_tokens"):
    np.testing.assert_array_equal(threaded[key], single[key])


def _row(mode, threads, workers, images_per_s, cores_busy, others=0.0):
  per_core = images_per_s / cores_busy
  return {"mode": mode, "threads": threads, "workers": workers, "size": 224, "images_per_s": images_per_s,
          "cores_busy": cores_busy, "images_per_cpu_s": per_core, "others_cores_busy": others,
          "cores_for_2500": image_pipeline.cores_needed(per_core)}


def test_summary_derives_cores_and_the_thread_ceiling():
  records = [_row("in_process", 1, 0, 250.0, 1.0), _row("threads", 1, 0, 250.0, 1.0),
             _row("threads", 2, 0, 400.0, 1.8), _row("processes", 1, 2, 480.0, 2.0)]
  # 2 threads at 1.6x one: a quarter of the work is serial, so 4x one thread at most.
  assert image_pipeline.thread_ceiling(records) == {
      "threads": 2, "speedup": 1.6, "serial_fraction": 0.25, "ceiling_images_per_s": 1000}
  first, fastest, threads = image_pipeline.summary_lines(records)
  assert "10.0 at the single-thread rate" in first
  assert "processes (2 workers)" in fastest and "10.4 cores" in fastest
  assert "1,000 images/s" in threads
  records[2]["others_cores_busy"] = 0.9  # another job on the cores: no verdict on the GIL
  assert image_pipeline.thread_ceiling(records) is None
  assert len(image_pipeline.summary_lines(records)) == 2
