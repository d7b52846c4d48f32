"""fmjax.host_memory: a jitted step's large buffers reuse their pages from one call to the next."""

import os
import subprocess
import sys

import pytest

from fmjax import host_memory

# Page faults in the median call of a jitted function whose 48 MB result is freed before the
# next call: without the setting glibc maps and unmaps it every time (12k fresh pages a call);
# with it most calls fault in no page at all (a few still do, hence the median).
_FAULTS_PER_CALL = """
import resource, sys
import jax, jax.numpy as jnp
from fmjax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
add_one = jax.jit(lambda x: x + 1)
x = jnp.zeros((12 * 2**20,), jnp.float32)
for _ in range(3):
  add_one(x).block_until_ready()
faults = []
for _ in range(21):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  add_one(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sorted(faults)[10])
"""


def faults_per_call(mode: str, **env) -> tuple[bool, float]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "FMJAX_KEEP_FREED_MEMORY": "1", **env}
  out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout.split()
  return out[-2] == "True", float(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
  applied_default, default = faults_per_call("default")
  applied, kept = faults_per_call("keep")
  assert not applied_default and applied
  assert default > 5_000, default  # the 48 MB result's pages, mapped afresh each call
  assert kept < default / 10, (kept, default)  # 12k against 0 measured


def test_switched_off_by_the_environment():
  applied, _ = faults_per_call("keep", FMJAX_KEEP_FREED_MEMORY="0")
  assert not applied


def test_only_where_jax_runs_on_the_cpu(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.runs_on_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
  assert not host_memory.runs_on_cpu()
