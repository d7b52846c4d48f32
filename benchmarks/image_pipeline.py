"""Host throughput of CLIP training-image preprocessing, from JPEG bytes, per CPU core.

    .venv/bin/python benchmarks/image_pipeline.py [--images 256] [--seconds 8] [--size 224]
        [--batch 128] [--threads 1,2] [--workers 1,2] [--json-out PATH]

A GPU trains CLIP ViT-B/16 at roughly 1,500-2,500 images/s; this says how many host cores keep
it fed. The work per image is fmjax's own training preprocessing, the code a run executes
(`fmjax.data.image_text._train_example` with the vit-b16 settings of experiments/clip.py):
decode the JPEG (at 1/2, 1/4 scale where it stays large enough), random-resized crop to
`--size` with a flip, one of five captions drawn and tokenized to 77 SentencePiece ids. The
grain stages are those of `image_text.make_train_dataset` (shuffle, repeat, random_map, batch,
prefetch), on an in-memory source instead of ArrayRecord files: synthetic photo-like JPEGs
(ImageNet and COCO sizes, 500x375 to 640x480, quality 90, ~100 KB each), made at start.

Three ways to run the same pipeline, each timed for `--seconds` after a warm-up:
  in_process   one thread: grain MapDataset indexed in the caller (batching included)
  threads      fmjax's pipeline as it runs today: T read threads, batch, prefetch thread
  processes    that pipeline in N grain worker processes (IterDataset.mp_prefetch)

It prints a JSON line for the machine and data, then one per measurement: images/s; the CPU
seconds this process and its workers used over the window, so that images per CPU-second is
the per-core rate, overheads included; and the cores other processes kept busy meanwhile (on a
shared machine they take cores from the threads or workers asked for, which lowers images/s
and cores_busy but not images per CPU-second). Then a markdown table, the cores needed to feed
2,500 images/s, and the throughput ceiling of threads in one process that the threads rows
imply. About 60 s on 2 cores at the defaults (spawned worker processes import fmjax afresh,
which takes a few seconds each time).
"""

import argparse
import functools
import importlib.util
import io
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

from absl import flags
import grain
import numpy as np
import PIL
from PIL import Image
import psutil

from fmjax.data import batching
from fmjax.data import image_text
from fmjax.data import sentencepiece_training
from fmjax.data import tokenizers

ROOT = Path(__file__).resolve().parents[1]
TARGET_IMAGES_PER_S = 2500  # the top of a ViT-B/16 GPU's training rate
# Photo sizes (width, height) as they come: ImageNet's typical 500x375 / 500x333 and COCO's
# 640x480 / 640x427, in both orientations. The decoder's cost depends on them.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (480, 640), (640, 427))
JPEG_QUALITY = 90
CAPTIONS_PER_IMAGE = 5  # as COCO
SEED = 0
OTHERS_TOLERATED = 0.2  # cores other processes may keep busy before thread scaling is not judged

_WORDS = {
    "det": ("a", "an old", "the", "two", "several", "one small"),
    "noun": ("dog", "cat", "man", "woman", "child", "bus", "train", "pizza", "plate", "bicycle", "horse",
             "kite", "surfboard", "giraffe", "elephant", "clock", "laptop", "umbrella", "boat", "sandwich"),
    "verb": ("sitting", "standing", "riding", "holding", "eating", "walking", "parked", "flying", "lying",
             "looking"),
    "prep": ("on", "in", "near", "under", "beside", "next to", "behind", "across"),
    "place": ("the grass", "a busy road", "the beach", "a field", "a wooden table", "the water", "fresh snow",
              "a window", "a city street", "the kitchen counter"),
}


# ---- synthetic data --------------------------------------------------------------------------


def synthetic_photo(rng: np.random.Generator, width: int, height: int, quality: int = JPEG_QUALITY) -> bytes:
  """JPEG bytes of a photo-like image: smooth colour regions, texture, a lighting gradient and
  sensor-like grain. Pure noise would compress far worse than photos, flat colour far better;
  this mix lands at the usual ~50-150 KB for these sizes."""
  bicubic = Image.Resampling.BICUBIC
  coarse = rng.integers(0, 256, (rng.integers(3, 8), rng.integers(3, 8), 3), dtype=np.uint8)
  regions = np.asarray(Image.fromarray(coarse).resize((width, height), bicubic), np.float32)
  fine = rng.normal(128, 40, (max(1, height // 8), max(1, width // 8), 3)).clip(0, 255).astype(np.uint8)
  texture = np.asarray(Image.fromarray(fine).resize((width, height), bicubic), np.float32) - 128
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  light = (x / width * rng.uniform(-60, 60) + y / height * rng.uniform(-60, 60))[..., None]
  grain_noise = rng.normal(0, 8, (height, width, 1)).astype(np.float32)
  pixels = np.clip(0.7 * regions + texture + light + grain_noise, 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, "JPEG", quality=quality)
  return out.getvalue()


def synthetic_caption(rng: np.random.Generator) -> str:
  pick = lambda kind: _WORDS[kind][int(rng.integers(len(_WORDS[kind])))]
  words = [pick(kind) for kind in ("det", "noun", "verb", "prep", "place")]
  return f"{' '.join(words)} with {pick('det')} {pick('noun')}."


def make_pairs(count: int, seed: int = SEED, photo_sizes=PHOTO_SIZES) -> list[dict]:
  """`count` distinct pairs shaped as image_text's sources give them: {'image': JPEG bytes,
  'captions': [str] * 5, 'label': -1, 'source': str}."""
  rng = np.random.default_rng(seed)
  pairs = []
  for index in range(count):
    width, height = photo_sizes[index % len(photo_sizes)]
    pairs.append({"image": synthetic_photo(rng, width, height),
                  "captions": [synthetic_caption(rng) for _ in range(CAPTIONS_PER_IMAGE)],
                  "label": image_text.NO_LABEL, "source": f"synthetic[{index}]"})
  return pairs


def caption_tokenizer(pairs: list[dict], vocab_size: int) -> tokenizers.Tokenizer:
  """A SentencePiece model trained on the pairs' captions (a fraction of a second), sized as the
  run's: encoding costs about the same whatever the vocabulary."""
  texts = [caption for pair in pairs for caption in pair["captions"]]
  return tokenizers.SentencePieceTokenizer(sentencepiece_training.train(texts, 1024), vocab_size=vocab_size)


# ---- the pipeline under test -----------------------------------------------------------------


def vit_b16_data_config():
  """config.data of experiments/clip.py:vit-b16 (crop area, flip, text length, vocabulary)."""
  spec = importlib.util.spec_from_file_location("experiments_clip", ROOT / "experiments/clip.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("vit-b16").data


def train_examples(pairs: list[dict], tokenizer: tokenizers.Tokenizer, *, size: int, data_config,
                   seed: int = SEED) -> grain.MapDataset:
  """The endless example stream of image_text.make_train_dataset over `pairs`: shuffle, repeat,
  and per element (seeded by its index) decode, crop, resize, flip, caption tokens."""
  example = functools.partial(
      image_text._train_example,  # pylint: disable=protected-access
      tokenizer=tokenizer, image_size=int(size), text_len=int(data_config.text_len),
      min_area=float(data_config.min_crop_area), flip=bool(data_config.flip))
  ds = grain.MapDataset.source(pairs).shuffle(seed=seed).repeat()
  return ds.random_map(example, seed=seed + 1)


def in_process_batches(examples: grain.MapDataset, batch: int):
  """Batches made one after another in the calling thread: one core, no grain threads."""
  batches = examples.batch(batch, drop_remainder=True)
  return (batches[index] for index in itertools.count())


def threaded_batches(examples: grain.MapDataset, batch: int, threads: int, prefetch: int) -> grain.IterDataset:
  """fmjax's training tail (batching.training_batches): `threads` read threads, batch, prefetch."""
  return batching.training_batches(examples, batch, prefetch=prefetch, max_threads=threads)


def worker_batches(examples: grain.MapDataset, batch: int, workers: int, threads: int,
                   prefetch: int) -> grain.IterDataset:
  """The threaded pipeline run in `workers` spawned processes, each on its slice of the stream,
  batches coming back through shared memory."""
  options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
  return threaded_batches(examples, batch, threads, prefetch).mp_prefetch(options)


# ---- measuring -------------------------------------------------------------------------------


def _cpu_seconds_by_pid() -> dict[int, float]:
  """User + system CPU seconds of this process (all threads) and of each live descendant."""
  me = psutil.Process()
  seconds = {}
  for process in [me, *me.children(recursive=True)]:
    try:
      times = process.cpu_times()
      seconds[process.pid] = times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return seconds


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
  return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _host_busy_seconds() -> float:
  """CPU seconds every process on the machine has used since boot (all cores together)."""
  times = psutil.cpu_times()
  return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) - getattr(
      times, "guest_nice", 0.0)  # guest time is already counted in user time


def measure(batches, *, seconds: float, warmup_batches: int) -> dict:
  """Takes batches for `seconds` after `warmup_batches`. The window runs from one batch's
  arrival to another's, so the work counted is exactly the whole batches between them."""
  iterator = iter(batches)
  try:
    for _ in range(warmup_batches):
      next(iterator)
    start, cpu_before, host_before = time.perf_counter(), _cpu_seconds_by_pid(), _host_busy_seconds()
    count, elapsed = 0, 0.0
    while elapsed < seconds:
      images = next(iterator)["images"]
      count += len(images)
      shape, dtype = list(images.shape), str(images.dtype)
      del images  # a worker's batch lives in shared memory: hold none past close()
      elapsed = time.perf_counter() - start
    cpu = _cpu_used(cpu_before, _cpu_seconds_by_pid())
    others = max(0.0, _host_busy_seconds() - host_before - cpu)
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()  # stops grain's threads and worker processes now, not at exit
  return {"images": count, "seconds": round(elapsed, 3), "images_per_s": round(count / elapsed, 1),
          "cpu_s": round(cpu, 3), "cores_busy": round(cpu / elapsed, 2),
          "images_per_cpu_s": round(count / cpu, 1) if cpu > 0 else None,
          "others_cores_busy": round(others / elapsed, 2),
          "batch_shape": shape, "batch_dtype": dtype}


def cores_needed(images_per_cpu_s: float | None, target: float = TARGET_IMAGES_PER_S) -> float | None:
  return None if not images_per_cpu_s else round(target / images_per_cpu_s, 1)


def _record(mode: str, threads: int, workers: int, result: dict, args) -> dict:
  return {"mode": mode, "threads": threads, "workers": workers, "size": args.size, "batch": args.batch,
          **result, "cores_for_2500": cores_needed(result["images_per_cpu_s"])}


def run_in_process(examples, args) -> dict:
  result = measure(in_process_batches(examples, args.batch), seconds=args.seconds, warmup_batches=1)
  return _record("in_process", 1, 0, result, args)


def run_threads(examples, threads: int, args, prefetch: int) -> dict:
  result = measure(threaded_batches(examples, args.batch, threads, prefetch), seconds=args.seconds,
                   warmup_batches=2)
  return _record("threads", threads, 0, result, args)


def run_workers(examples, workers: int, args, prefetch: int) -> dict:
  # Two batches per worker: the first ones wait for the spawned workers to import and start.
  result = measure(worker_batches(examples, args.batch, workers, args.worker_threads, prefetch),
                   seconds=args.seconds, warmup_batches=2 * workers)
  return _record("processes", args.worker_threads, workers, result, args)


# ---- reporting -------------------------------------------------------------------------------


def machine() -> dict:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": model, "nproc": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
          "python": platform.python_version(), "grain": grain.__version__, "pillow": PIL.__version__,
          "numpy": np.__version__}


def data_summary(pairs: list[dict]) -> dict:
  sizes_kb = [len(pair["image"]) / 1000 for pair in pairs]
  return {"images": len(pairs), "jpeg_kb_mean": round(float(np.mean(sizes_kb)), 1),
          "jpeg_kb_min": round(min(sizes_kb), 1), "jpeg_kb_max": round(max(sizes_kb), 1),
          "photo_sizes": [f"{w}x{h}" for w, h in PHOTO_SIZES], "quality": JPEG_QUALITY}


_COLUMNS = ("mode", "threads", "workers", "images/s", "cores busy", "images/s per core", "cores for 2,500/s",
            "others' cores")


def markdown_table(records: list[dict]) -> str:
  """One row per measurement; `threads` is per worker in the processes rows."""
  rows = ["| " + " | ".join(_COLUMNS) + " |", "| --- " + "| ---: " * (len(_COLUMNS) - 1) + "|"]
  for r in records:
    cells = (r["mode"], r["threads"], r["workers"] or "-", f"{r['images_per_s']:,.0f}", f"{r['cores_busy']:.2f}",
             f"{r['images_per_cpu_s'] or 0:,.0f}", r["cores_for_2500"], f"{r['others_cores_busy']:.2f}")
    rows.append("| " + " | ".join(str(cell) for cell in cells) + " |")
  return "\n".join(rows)


def thread_ceiling(records: list[dict]) -> dict | None:
  """What the threads rows say about the GIL. With T threads giving S times one thread's rate,
  the part of the work that runs one thread at a time (Amdahl) is s = (T/S - 1) / (T - 1), and
  one process then tops out at one thread's rate / s whatever its thread count. None without
  two thread counts, with no shortfall to explain, or when other processes took cores meanwhile
  (then they, not the GIL, may explain it)."""
  rows = {r["threads"]: r for r in records if r["mode"] == "threads"}
  if len(rows) < 2 or any(r["others_cores_busy"] > OTHERS_TOLERATED for r in rows.values()):
    return None
  one, most = rows[min(rows)], rows[max(rows)]
  threads = most["threads"] / one["threads"]
  speedup = most["images_per_s"] / one["images_per_s"]
  if speedup >= threads:
    return None
  serial = (threads / speedup - 1) / (threads - 1)
  return {"threads": most["threads"], "speedup": round(speedup, 2), "serial_fraction": round(serial, 2),
          "ceiling_images_per_s": round(one["images_per_s"] / serial)}


def summary_lines(records: list[dict]) -> list[str]:
  """The derived figures: cores to feed the target at the single-thread rate (the bare cost of
  the work) and at the per-core rate of the fastest layout measured (overheads included), and
  the thread ceiling."""
  single = next(r for r in records if r["mode"] == "in_process")
  lines = [f"Cores to feed {TARGET_IMAGES_PER_S:,} images/s at {single['size']} px: "
           f"{single['cores_for_2500']} at the single-thread rate "
           f"({single['images_per_cpu_s']:,.0f} images/s per core)."]
  parallel = [r for r in records if r["mode"] != "in_process" and r["images_per_cpu_s"]]
  if parallel:
    fastest = max(parallel, key=lambda r: r["images_per_s"])
    count = f"{fastest['workers']} workers" if fastest["mode"] == "processes" else f"{fastest['threads']} threads"
    lines.append(f"Fastest layout: {fastest['mode']} ({count}), {fastest['images_per_s']:,.0f} images/s on "
                 f"{fastest['cores_busy']:.2f} busy cores = {fastest['images_per_cpu_s']:,.0f} per core: "
                 f"{fastest['cores_for_2500']} cores for {TARGET_IMAGES_PER_S:,} images/s.")
  ceiling = thread_ceiling(records)
  if ceiling:
    lines.append(f"Threads: {ceiling['threads']} gave {ceiling['speedup']}x one thread; if the shortfall is work that "
                 f"holds the GIL, that is {ceiling['serial_fraction']:.0%} of it and one process tops out near "
                 f"{ceiling['ceiling_images_per_s']:,} images/s however many threads it runs.")
  return lines


def _int_list(text: str) -> list[int]:
  return [int(item) for item in text.split(",") if item.strip()]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=256, help="distinct synthetic JPEGs")
  parser.add_argument("--seconds", type=float, default=8.0, help="measured time per configuration")
  parser.add_argument("--size", type=int, default=224, help="square side the model sees")
  parser.add_argument("--batch", type=int, default=128, help="images per batch")
  parser.add_argument("--threads", type=_int_list, default=[1, 2],
                      help="read-thread counts to try (capped at the core count, as fmjax caps them)")
  parser.add_argument("--workers", type=_int_list, default=[1, 2], help="worker-process counts (empty: none)")
  parser.add_argument("--worker-threads", type=int, default=1, help="read threads in each worker process")
  parser.add_argument("--json-out", default="", help="also write the JSON lines to this file")
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  # grain's worker processes read absl flags (its own are defined on import); this script
  # parses its flags with argparse, so absl's must be marked parsed before workers start.
  # Only then: a test calling main() keeps its process's flags as they were.
  if args.workers and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  data_config = vit_b16_data_config()
  pairs = make_pairs(args.images)
  tokenizer = caption_tokenizer(pairs, int(data_config.vocab_size))
  examples = train_examples(pairs, tokenizer, size=args.size, data_config=data_config)
  prefetch = int(data_config.prefetch)
  header = {"machine": machine(), "data": data_summary(pairs)}
  print(json.dumps(header), flush=True)
  runs = [functools.partial(run_in_process, examples, args)]
  runs += [functools.partial(run_threads, examples, threads, args, prefetch) for threads in args.threads]
  runs += [functools.partial(run_workers, examples, workers, args, prefetch) for workers in args.workers]
  records = []
  for run in runs:
    records.append(run())
    print(json.dumps(records[-1]), flush=True)
  print()
  print(markdown_table(records))
  print()
  print("\n".join(summary_lines(records)))
  if args.json_out:
    Path(args.json_out).write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
  return records


if __name__ == "__main__":  # required: grain's worker processes are spawned and import this file
  main(sys.argv[1:])
