"""Compiling the real train step for TPU slices on this CPU host (fmjax.aot).

Every experiment variant that names a `config.topology` must compile for it and fit its chips'
HBM. Compiles need libtpu (pip install -e '.[tpu]'); without it those tests are skipped, while
the FLOP counter, which needs no TPU, always runs.

Compile times on 2 busy shared CPU cores (jax 0.10.2, libtpu 0.0.42.1), hence `slow`:
gpt small 61 s, gpt2 63 s, gpt2-medium 53 s (scan over layers), bert-base 207 s, bert-base-512
261 s (12 unrolled layers), bert-crammed 74 s, clip vit-b16 74 s. The default tests here take
about 25 s in all (tiny models: 3-10 s per compile).
"""

import importlib.util
import json
import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config
from fmjax import tpu  # before any backend starts: readies libtpu's environment
from fmjax import aot, config_checks, jaxpr_flops

requires_libtpu = pytest.mark.skipif(
    not tpu.libtpu_installed(),
    reason="libtpu is not installed; compiling for TPU topologies needs pip install -e '.[tpu]' "
           "(jax[tpu] at the installed jax version)")


def _experiment_targets() -> list:
  """(file stem, variant) of every experiment variant that names a topology."""
  targets = []
  for path in sorted((ROOT / "experiments").glob("*.py")):
    spec = importlib.util.spec_from_file_location(f"experiments_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in module.VARIANTS:
      if module.get_config(variant).get("topology"):
        targets.append((path.stem, variant))
  return targets


TARGETS = _experiment_targets()


def tiny_config(**overrides):
  config = load_config("gpt", "tiny")
  config.model.num_layers = 2
  config.train.batch_size = 16
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  return config


# ---- traced FLOPs: no TPU needed -----------------------------------------------------------------

def test_flops_count_every_trip_of_nested_scans():
  def step(x_BxD, w_LxDxD):
    def layer(h, w):
      return jnp.tanh(h @ w), None

    def once(h, _):
      return jax.lax.scan(layer, h, w_LxDxD)[0], None
    return jax.lax.scan(once, x_BxD, None, length=3)[0].sum()
  jaxpr = jax.make_jaxpr(step)(jax.ShapeDtypeStruct((8, 32), jnp.float32),
                               jax.ShapeDtypeStruct((5, 32, 32), jnp.float32))
  one_matmul = 2 * 8 * 32 * 32
  assert jaxpr_flops.matmul_flops(jaxpr) == 15 * one_matmul
  assert jaxpr_flops.matmul_flops(jaxpr, count_loop_trips=False) == one_matmul  # as XLA counts


def test_flops_include_the_backward_pass_and_the_dearer_branch():
  # Gradient of a 4-step scan: per step 1 forward matmul, 2 backward (input and weight grads).
  def loss(w_LxDxD, x_BxD):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x_BxD, w_LxDxD)[0].sum()
  x = jax.ShapeDtypeStruct((8, 32), jnp.float32)
  jaxpr = jax.make_jaxpr(jax.grad(loss))(jax.ShapeDtypeStruct((4, 32, 32), jnp.float32), x)
  assert jaxpr_flops.matmul_flops(jaxpr) == 4 * 3 * (2 * 8 * 32 * 32)

  def branchy(p, x_BxD, w_DxD):
    return jax.lax.cond(p, lambda: x_BxD @ w_DxD @ w_DxD, lambda: x_BxD @ w_DxD)
  jaxpr = jax.make_jaxpr(branchy)(True, x, jax.ShapeDtypeStruct((32, 32), jnp.float32))
  assert jaxpr_flops.matmul_flops(jaxpr) == 2 * (2 * 8 * 32 * 32)


def test_convolution_flops():
  def conv(x_NxCxHxW, k_OxCxKxK):
    return jax.lax.conv_general_dilated(x_NxCxHxW, k_OxCxKxK, (1, 1), "SAME")
  jaxpr = jax.make_jaxpr(conv)(jax.ShapeDtypeStruct((2, 3, 8, 8), jnp.float32),
                               jax.ShapeDtypeStruct((16, 3, 3, 3), jnp.float32))
  assert jaxpr_flops.matmul_flops(jaxpr) == 2 * (2 * 16 * 8 * 8) * (3 * 3 * 3)


# ---- errors before anything compiles ------------------------------------------------------------

@requires_libtpu
@pytest.mark.parametrize("topology,message", [
    ("", "config.topology is empty"),
    ("v5litepod-16", "GENERATION:DIMS"),
    ("v5e:3x3", "libtpu refused it"),
])
def test_bad_topology_is_named(topology, message):
  with pytest.raises(config_checks.ConfigError, match=message):
    aot.compile_for_topology(tiny_config(), topology)


@requires_libtpu
def test_mesh_must_match_the_slice():
  config = tiny_config(mesh__data=1, mesh__fsdp=8)
  with pytest.raises(config_checks.ConfigError, match="there are 4 devices"):
    aot.compile_for_topology(config, "v5e:2x2")


# ---- tiny compiles (seconds) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_report():
  return aot.compile_for_topology(tiny_config(), "v5e:2x2")


def _check_sane(report, chips: int):
  assert report["chips"] == chips and report["fits"]
  assert 0 < report["memory_needed_bytes"] <= report["hbm_bytes"]
  assert report["memory_temp_bytes"] > 0 and report["memory_arguments_bytes"] > 0
  assert report["flops_per_chip"] > 0 and report["bytes_accessed_per_chip"] > 0
  # XLA's count (remat recompute, masked attention, elementwise work) against the estimate.
  assert 0.5 < report["flops_vs_model"] < 2.0, report["flops_vs_model"]
  assert report["step_time_bound_s"] == max(report["compute_time_s"], report["memory_time_s"])
  assert 0 < report["mfu_bound"] <= 1.0
  assert report["compile_time_s"] > 0


@requires_libtpu
@pytest.mark.smoke
def test_tiny_step_compiles_for_v5e(tiny_report):
  _check_sane(tiny_report, chips=4)
  assert tiny_report["chip"] == "v5e" and tiny_report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert tiny_report["xla_undercount"] == 1  # no loops: XLA's count is whole
  assert "memory per chip" in aot.format_report(tiny_report)
  # The TPU compile left this process's runtime alone: still 8 CPU devices that compute.
  assert jax.default_backend() == "cpu" and jax.device_count() == 8
  assert float(jax.jit(lambda x: x.sum())(jnp.arange(8.0))) == 28.0


@requires_libtpu
def test_loops_are_counted_at_their_trip_counts(tiny_report):
  # The tiny step's work as 2 micro-batches through a scan over layers: XLA's count covers a
  # quarter of it (each loop body once); the report still gives the loop-free step's FLOPs.
  report = aot.compile_for_topology(tiny_config(model__scan_layers=True, train__grad_accum_steps=2),
                                    "v5e:2x2")
  assert report["xla_flops_per_chip"] < 0.4 * tiny_report["xla_flops_per_chip"]
  assert report["xla_undercount"] > 2.5
  assert report["flops_total"] == pytest.approx(tiny_report["flops_total"], rel=0.1)


@requires_libtpu
def test_fit_error_names_need_and_capacity(tiny_report):
  assert aot.fit_error(tiny_report) is None
  over = dict(tiny_report, memory_needed_bytes=20 * tpu.GiB, fits=False)
  message = aot.fit_error(over)
  assert "needs 20.00 GiB per chip" in message and "16.0 GiB of HBM" in message
  assert "config.mesh.fsdp=-1" in message and "remat" in message and "grad_accum_steps" in message
  sharded = dict(over, mesh={"data": 1, "fsdp": 4, "tensor": 1})
  assert "config.mesh.fsdp" not in aot.fit_error(sharded)  # no advice it already follows


@requires_libtpu
def test_a_step_far_too_big_does_not_fit():
  # GPT-2 medium, 256 sequences of 1024 per chip, no remat: libtpu 0.0.42 refuses to compile it
  # (temporaries of 1.13 TB); a compiler that went ahead would meet fmjax's own check instead.
  config = load_config("gpt", "gpt2-medium")
  config.train.batch_size = 1024
  config.train.grad_accum_steps = 1
  config.model.remat = "none"
  with pytest.raises(aot.DoesNotFit, match=r"does not fit on v5e:2x2") as info:
    aot.compile_for_topology(config, "v5e:2x2")
  message = str(info.value)
  assert re.search(r"\d(\.\d+)? ?[GT]i?B?\b", message), message  # the memory it would need
  assert "HBM" in message and "remat" in message


@requires_libtpu
def test_command_line(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "fmjax.aot", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  config = f"{ROOT}/experiments/gpt.py:tiny"
  proc = run("--config", config)
  assert proc.returncode == 2 and "error: no TPU topology" in proc.stderr
  proc = run("--config", config, "--topology", "v6e:2x2", "--config.model.num_layers=1", "--json")
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["chip"] == "v6e" and report["fits"] and report["hbm_bytes"] == 32 * tpu.GiB
  assert "TPU_WORKER_HOSTNAMES" not in proc.stderr  # libtpu's load-time noise is kept quiet


# ---- every experiment variant with a topology (minutes each on 2 CPU cores) ---------------------

@requires_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("name,variant", TARGETS, ids=[f"{n}:{v}" for n, v in TARGETS])
def test_experiment_compiles_and_fits_its_topology(name, variant):
  config = load_config(name, variant)
  report = aot.compile_for_topology(config)
  _check_sane(report, chips=math.prod(tpu.parse_topology(config.topology)[1]))
  assert report["topology"] == config.topology


def test_every_sized_experiment_names_a_topology():
  for name, variant in [("gpt", "small"), ("gpt", "gpt2"), ("gpt", "gpt2-medium"), ("bert", "bert-base"),
                        ("bert", "bert-base-512"), ("bert", "bert-crammed"), ("diffusion", "ddpm-cifar10"),
                        ("diffusion", "dit-b2"), ("speech", "whisper-base"), ("speech", "best-rq-base")]:
    assert (name, variant) in TARGETS, f"experiments/{name}.py:{variant} names no config.topology"
