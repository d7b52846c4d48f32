"""Run outputs: metrics.jsonl, TensorBoard events, console progress; throughput and MFU.

Only process 0 writes. Values arrive as host floats: the trainer syncs with the device at log
steps only, never inside the step loop.
"""

import io
import json
import math
import os
import sys
import time
from typing import Mapping, Optional

import jax
import numpy as np

from fmjax import paths

# Dense bf16 peak FLOP/s per chip, by `device.device_kind` substring (first match wins).
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12), ("TPU v4", 275e12),
)


def peak_flops_per_device(device=None) -> Optional[float]:
  """Peak for MFU; $FMJAX_PEAK_TFLOPS overrides, None where unknown (CPUs)."""
  if os.environ.get("FMJAX_PEAK_TFLOPS"):
    return float(os.environ["FMJAX_PEAK_TFLOPS"]) * 1e12
  kind = (device or jax.devices()[0]).device_kind
  for name, peak in PEAK_FLOPS:
    if name.lower() in kind.lower():
      return peak
  return None


def mfu(flops_per_second: float, num_devices: int, peak_per_device: Optional[float]) -> Optional[float]:
  if not peak_per_device:
    return None
  return flops_per_second / (peak_per_device * num_devices)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsWriter:
  """Writes `metrics.jsonl` and TensorBoard events into the workdir, and console progress."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, unit: str = "tokens"):
    self.enabled = enabled
    self.total_steps = total_steps
    self.unit_label = {"tokens": "tok", "examples": "ex"}.get(unit, unit)  # throughput in progress lines
    self.interactive = sys.stdout.isatty()
    self._jsonl = None
    self._tb = None
    self.workdir = workdir
    if enabled:
      paths.makedirs(workdir)
      # Appended line by line locally; on gs:// rewritten whole now and then (see paths.Appender).
      self._jsonl = paths.Appender(paths.join(workdir, "metrics.jsonl"))
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it
      self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))  # writes gs:// itself

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _plain(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def forget_after(self, step: int) -> None:
    """Drops the rows of steps after `step` (and any line that does not parse). A run resumed
    from its checkpoint at `step` logs the steps after it again, recomputed; without this a
    killed run's last rows would appear twice and the file would stop being one row per step."""
    if not self.enabled:
      return

    def logged_by_then(line: str) -> bool:
      try:
        return int(json.loads(line).get("step", 0)) <= step
      except (ValueError, TypeError, AttributeError):
        return False
    self._jsonl.keep_lines(logged_by_then)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Each H x W x C uint8 image to `workdir/<name>/step_<step>.png` and to TensorBoard."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tb.add_image(name, image, step, dataformats="HWC")
      folder = paths.join(self.workdir, name)
      paths.makedirs(folder)
      paths.write_atomically(paths.join(folder, f"step_{step}.png"), png_bytes(image))

  def progress(self, step: int, values: Mapping[str, float], eta_seconds: float) -> None:
    if not self.enabled:
      return
    parts = [f"step {step}/{self.total_steps}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("eval/loss", "eval {:.4f}"),
                     ("perf/units_per_s", "{:,.0f} " + self.unit_label + "/s"), ("perf/mfu", "MFU {:.1%}"),
                     ("perf/step_time_s", "{:.3f} s/step")):
      if values.get(key) is not None:
        parts.append(fmt.format(values[key]))
    parts.append(f"ETA {format_duration(eta_seconds)}")
    line = " | ".join(parts)
    if self.interactive:
      done = int(30 * step / max(self.total_steps, 1))
      print(f"\r[{'#' * done}{'.' * (30 - done)}] {line}", end="\n" if step >= self.total_steps else "", flush=True)
    else:
      print(line, flush=True)

  def message(self, text: str) -> None:
    if self.enabled:
      if self.interactive:
        print()
      print(text, flush=True)

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def png_bytes(image_HxWxC) -> bytes:
  """A uint8 H x W x C (C = 1 or 3) image encoded as PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (only runs that write images need it)
  array = np.asarray(image_HxWxC, dtype=np.uint8)
  pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  buffer = io.BytesIO()
  pil.save(buffer, format="PNG")
  return buffer.getvalue()


def _plain(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


class Throughput:
  """Wall time between log points (after a device sync), into units/s and MFU, and the share of
  it the loop spent blocked on the input pipeline."""

  def __init__(self, units_per_step: float, flops_per_step: float, num_devices: int):
    self.units_per_step, self.flops_per_step, self.num_devices = units_per_step, flops_per_step, num_devices
    self.peak = peak_flops_per_device()
    self.last_time, self.last_step, self.excluded, self.data_wait = None, None, 0.0, 0.0

  def start(self, step: int) -> None:
    self.last_time, self.last_step, self.excluded, self.data_wait = time.perf_counter(), step, 0.0, 0.0

  def exclude(self, seconds: float) -> None:
    """Time spent outside training steps (evaluation, checkpoint copies) is not step time."""
    self.excluded += seconds

  def waited_for_data(self, seconds: float) -> None:
    """Time the loop spent getting the next batch. Steps are dispatched asynchronously, so while
    the pipeline keeps ahead this is near zero (the host waits at the log sync instead); when the
    pipeline is the bottleneck it is the time the device sat idle for want of input."""
    self.data_wait += seconds

  def measure(self, step: int) -> dict:
    now = time.perf_counter()
    steps = step - self.last_step
    seconds = now - self.last_time - self.excluded
    data_wait, self.data_wait = self.data_wait, 0.0
    self.last_time, self.last_step, self.excluded = now, step, 0.0
    if steps <= 0 or seconds <= 0:
      return {}
    step_time = seconds / steps
    return {"perf/step_time_s": step_time,
            "perf/data_wait_fraction": min(data_wait / seconds, 1.0),
            "perf/units_per_s": self.units_per_step / step_time,
            "perf/mfu": mfu(self.flops_per_step / step_time, self.num_devices, self.peak),
            "perf/host_rss_mb": host_rss_mb()}


def host_rss_mb() -> Optional[float]:
  """This process's resident host memory now (not its peak), in MiB: a leak shows as growth
  over a long run. None where /proc is missing (macOS)."""
  try:
    with open("/proc/self/statm") as handle:
      resident_pages = int(handle.read().split()[1])
  except (OSError, IndexError, ValueError):
    return None
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
