"""Every test process sees 8 fake CPU devices, set before JAX initialises its backend."""

import importlib.util
import os
import pathlib

import jax

jax.config.update("jax_num_cpu_devices", 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = "gpt", variant: str = "tiny"):
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)
