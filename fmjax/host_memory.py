"""Host memory: keep XLA:CPU's per-step scratch memory mapped between steps.

XLA:CPU gives each run of a compiled step one scratch buffer for its intermediates (326 MB for
the tiny GPT's train step) and allocates it on a runtime worker thread. glibc serves a request
that large outside the thread's arena, straight from mmap, and unmaps it when it is freed; the
next step then faults in ~80k fresh zeroed pages again. On 2 CPU cores that cost about a quarter
of the CPU time (kernel time 0.22 of 0.8 CPU-seconds per step). Serving every thread from the
main heap, with mmap and trimming off, lets the next step reuse the same pages: the tiny GPT's
step took 290 instead of 430 ms, 1.45x faster (benchmarks/README.md).

The price: memory the process frees stays with it, so its resident size stays near its peak
(2.1 GB for the tiny GPT's training run, evaluation included).

This tunes the whole process's malloc, so it applies only where jax will run on the CPU (no
accelerator plugin installed, or JAX_PLATFORMS=cpu), only with glibc, and only when nothing has
turned it off (FMJAX_KEEP_FREED_MEMORY=0). It must run before jax creates its CPU client: a
thread keeps the arena it first allocated from. The command-line tools call it first thing.
The test processes turn it off (tests/conftest.py): with 8 fake devices' threads sharing one
arena, the one file compared ran slower (tests/test_contrastive_model.py, 82 against 73 s);
test_host_memory.py runs it in subprocesses.
"""

import ctypes
import importlib.metadata
import os
import sys

# mallopt() parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# Distributions that give jax a non-CPU backend.
_ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")
ENV_SWITCH = "FMJAX_KEEP_FREED_MEMORY"

_applied = None


def runs_on_cpu() -> bool:
  """Whether jax will pick its CPU backend, judged without creating any backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if not platforms and "jax" in sys.modules:
    platforms = sys.modules["jax"].config.jax_platforms or ""  # jax.config.update("jax_platforms", ...)
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(_ACCELERATOR_DISTRIBUTIONS):
      return False
  return True


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to one arena, no mmap and no trimming when this process runs jax on the
  CPU; returns whether it did. Calling it again does nothing more."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux") or not runs_on_cpu():
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt means something else or nothing
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  # Trimming first: with it on, a freed scratch buffer at the top of the heap goes back to the OS.
  settings = ((M_TRIM_THRESHOLD, 2**31 - 1), (M_MMAP_MAX, 0), (M_ARENA_MAX, 1))
  _applied = all(mallopt(param, value) == 1 for param, value in settings)
  return _applied
