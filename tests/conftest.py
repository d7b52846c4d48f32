"""Every test process sees 8 fake CPU devices, set before JAX initialises its backend."""

import importlib.util
import os
import pathlib
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)
# With libtpu installed (the `tpu` extra, for fmjax.aot) every backend start would also try the
# TPU plugin; tests run on CPU, and fmjax.aot compiles for TPU topologies without a TPU backend.
jax.config.update("jax_platforms", "cpu")
# The command-line tools, run in this process by many tests, would set glibc's malloc to one arena
# for every thread (fmjax/host_memory.py); tests/test_host_memory.py checks that in subprocesses.
os.environ["FMJAX_KEEP_FREED_MEMORY"] = "0"

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_module(relative_path: str, name: str):
  """A Python file of the repository that is not a package module (experiments/, benchmarks/),
  imported under `name` (registered in sys.modules: dataclasses look their module up by name)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_config(name: str = "gpt", variant: str = "tiny"):
  return load_module(f"experiments/{name}.py", f"experiments_{name}").get_config(variant)


def small_config(tmp_path=None, **overrides):
  """The tiny GPT config shrunk further for fast tests, on a per-test copy of the default data
  (under `tmp_path`). Overrides use '__' for dots: small_config(tmp, train__steps=4)."""
  c = load_config()
  c.model.num_layers = 2
  c.model.embed_dim = 64
  c.model.mlp_dim = 128
  c.data.seq_len = 32
  if tmp_path is not None:
    c.data.data_dir = str(tmp_path / "data")
  c.data.eval_batches = 2
  c.train.batch_size = 8
  c.optim.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 0
  return set_fields(c, **overrides)


def set_fields(config, **overrides):
  """Sets config fields named with '__' for dots: set_fields(c, model__image__num_layers=1)."""
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def loss_and_grads(setup, state, batch):
  """The objective's loss and its gradients for one host-local batch, on the setup's mesh."""
  from flax import nnx
  from fmjax import parallel
  with jax.set_mesh(setup.mesh):
    global_batch = parallel.global_batch(batch, setup.mesh)
    fn = jax.jit(jax.value_and_grad(
        lambda p: setup.objective.loss(nnx.merge(setup.graphdef, p), global_batch, None)[0]))
    loss, grads = fn(state["params"])
  return float(loss), jax.device_get(grads)
