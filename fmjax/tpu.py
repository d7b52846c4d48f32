"""TPU chips and slices as seen from any host: the figures a config is sized against, and
abstract devices of a slice to compile for (`jax.experimental.topologies`).

Compiling for a topology needs the TPU compiler, libtpu (`pip install 'jax[tpu]==<jax version>'`),
but no TPU: the devices are descriptions only, nothing runs on them.
"""

import contextlib
import dataclasses
import importlib.util
import os
import re
import sys
import tempfile

# libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) when it first loads in a process, and
# refuses to load in a second process while the first lives (`JaxRuntimeError: ... libtpu
# multi-process lockfile`). Compiling needs no exclusive use of any chip, so let it load beside
# other JAX processes (tests, a second compile). Read once, when libtpu first loads: set on
# import, before anything can initialise it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str          # as in topology names: 'v5e'
  peak_flops: float        # dense bf16 FLOP/s
  hbm_bytes: int
  hbm_bandwidth: float     # bytes/s


# Per chip, from the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e,
# /v5p, /v6e), keyed by `device.device_kind`. JAX's own Pallas table (tpu_info.py) agrees on
# peaks and capacities.
CHIPS = {
    "TPU v4": Chip("v4", 275e12, 32 * GiB, 1200e9),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GiB, 819e9),
    "TPU v5": Chip("v5p", 459e12, 95 * GiB, 2765e9),
    "TPU v6 lite": Chip("v6e", 918e12, 32 * GiB, 1638e9),
}

_TOPOLOGY_NAME = re.compile(r"^(?P<generation>v\d+[a-z]*):(?P<dims>\d+(x\d+){1,2})$")


class TopologyError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                # 'v5e:4x4'
  devices: tuple           # abstract devices, one per chip, in `jax.devices()` order
  chip: Chip

  @property
  def num_chips(self) -> int:
    return len(self.devices)

  @property
  def num_hosts(self) -> int:
    return len({d.process_index for d in self.devices})


def libtpu_installed() -> bool:
  return bool(os.environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """'v5e:4x4' -> ('v5e', (4, 4)); a TopologyError for anything else."""
  match = _TOPOLOGY_NAME.match(name)
  if not match:
    raise TopologyError(f"topology {name!r}: expected GENERATION:DIMS such as v5e:4x4, v6e:2x2, "
                        f"v4:2x2x2 or v5p:2x2x1 (chips per dimension; 'v5litepod-16' style names are "
                        f"accelerator types, not topologies)")
  return match["generation"], tuple(int(d) for d in match["dims"].split("x"))


def _topology_options(generation: str, dims: tuple[int, ...]) -> dict:
  options = {}
  if generation == "v4":
    # v4 runs as one device per chip (megacore), as `jax.devices()` shows on a v4 slice; the
    # default description would expose each chip's two cores as separate devices.
    options["chip_config_name"] = "megacore"
  if len(dims) == 2 and min(dims) < 2:
    # Smaller than a host's 2x2 chips (v5e:1x1, v6e:2x1): the slice is one host of that shape.
    options["chips_per_host_bounds"] = dims + (1,)
  return options


@contextlib.contextmanager
def _native_stderr_captured():
  """Catch what native code writes to fd 2 (libtpu complains on load that it finds no TPU
  worker hostnames: harmless on a host without TPUs); handed back to the caller as a string
  list, which the caller shows only if loading failed."""
  captured: list[str] = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield captured
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      captured.append(sink.read().decode(errors="replace"))


def load_slice(name: str) -> Slice:
  """The abstract devices of TPU slice `name` and its chip's figures."""
  generation, dims = parse_topology(name)
  if not libtpu_installed():
    import jax
    raise TopologyError(f"compiling for TPU topology {name!r} needs the TPU compiler: "
                        f"pip install 'jax[tpu]=={jax.__version__}'")
  from jax.experimental import topologies
  with _native_stderr_captured() as native_log:
    try:
      description = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                                 **_topology_options(generation, dims))
      error = None
    except Exception as e:  # libtpu reports bad names and lock trouble as runtime errors
      error = e
  if error is not None:
    detail = "\n".join(s.strip() for s in native_log if s.strip())
    raise TopologyError(f"topology {name!r}: libtpu refused it: {error}"
                        + (f"\nlibtpu said:\n{detail}" if detail else "")) from error
  devices = tuple(description.devices)
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise TopologyError(f"topology {name!r}: no chip figures for device kind {kind!r}; "
                        f"fmjax.tpu.CHIPS knows {sorted(c.generation for c in CHIPS.values())}")
  return Slice(name, devices, CHIPS[kind])
