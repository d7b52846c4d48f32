"""The matmul rates under the tiny GPT's CPU step: XLA:CPU (through jax) and PyTorch, same shapes.

    .venv/bin/python benchmarks/cpu_matmul.py [--torch_python=/work/torchvenv/bin/python] [--cores=1,2]

The tiny GPT's step (`cpu_gpt.sh`) is mostly matmuls, so what each library's kernels reach at
its shapes bounds what either side can do. Rows are the step's own products: 32 sequences of
128 tokens (4096 rows), width 128, MLP 512, the padded byte vocabulary 384; a weight gradient
(the rows contracted away); and attention's batched products for one query block of 64 (32
sequences x 4 heads, head_dim 32, the 128 keys the second block sees). Each framework runs in a
child process pinned to the first `--cores` CPUs before it starts its threads (PyTorch is also
told that many threads), so 1 against 2 cores shows how each library spreads one matmul over
the cores. Without `--torch_python` only jax runs. About a minute on 2 cores.

Prints a JSON line per (framework, cores, matmul), best of 3 rounds, then a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# name: (einsum, lhs shape, rhs shape)
MATMULS = {
    "projection (4096x128 @ 128x128)": ("nk,km->nm", (4096, 128), (128, 128)),
    "MLP in (4096x128 @ 128x512)": ("nk,km->nm", (4096, 128), (128, 512)),
    "MLP out (4096x512 @ 512x128)": ("nk,km->nm", (4096, 512), (512, 128)),
    "output head (4096x128 @ 128x384)": ("nk,km->nm", (4096, 128), (128, 384)),
    "MLP in weight gradient (128x4096 @ 4096x512)": ("nk,nm->km", (4096, 128), (4096, 512)),
    "attention scores, 128 x (64x32 @ 32x128)": ("bqd,bkd->bqk", (128, 64, 32), (128, 128, 32)),
    "attention values, 128 x (64x128 @ 128x32)": ("bqk,bkd->bqd", (128, 64, 128), (128, 128, 32)),
}


def flops(spec: str, lhs_shape, rhs_shape) -> int:
  """2 x the product of every distinct axis size in the einsum (each multiply-add counts 2)."""
  sizes = {}
  for letters, shape in zip(spec.split("->")[0].split(","), (lhs_shape, rhs_shape)):
    sizes.update(zip(letters, shape))
  total = 2
  for size in sizes.values():
    total *= size
  return total


def time_matmuls(framework: str, iters: int, rounds: int = 3) -> list[dict]:
  """Best seconds per call of each matmul, in this process, with `framework`'s default setup."""
  import numpy as np

  rng = np.random.default_rng(0)
  rows = []
  for name, (spec, lhs_shape, rhs_shape) in MATMULS.items():
    lhs = rng.standard_normal(lhs_shape, dtype=np.float32)
    rhs = rng.standard_normal(rhs_shape, dtype=np.float32)
    if framework == "jax":
      import jax
      import jax.numpy as jnp

      fn = jax.jit(lambda a, b, spec=spec: jnp.einsum(spec, a, b))
      args = (jnp.asarray(lhs), jnp.asarray(rhs))
      finish = jax.block_until_ready
    else:
      import torch

      fn = lambda a, b, spec=spec: torch.einsum(spec, a, b)
      args = (torch.from_numpy(lhs), torch.from_numpy(rhs))
      finish = lambda out: out
    finish(fn(*args))
    best = float("inf")
    for _ in range(rounds):
      start = time.perf_counter()
      for _ in range(iters):
        out = fn(*args)
      finish(out)
      best = min(best, (time.perf_counter() - start) / iters)
    rows.append({"matmul": name, "ms": round(best * 1e3, 3),
                 "gflops_per_s": round(flops(spec, lhs_shape, rhs_shape) / best / 1e9, 1)})
  return rows


def child(framework: str, cores: int, iters: int) -> None:
  """Pinned to the first `cores` CPUs before the framework makes its thread pools."""
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
  if framework == "torch":
    import torch

    torch.set_num_threads(cores)
    version = torch.__version__
  else:
    import jax

    version = jax.__version__
  for row in time_matmuls(framework, iters):
    print(json.dumps({"framework": framework, "version": version, "cores": cores, **row}), flush=True)


def run_child(python: str, framework: str, cores: int, iters: int) -> list[dict]:
  cmd = [python, os.path.abspath(__file__), f"--child={framework}:{cores}", f"--iters={iters}"]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or len(rows) != len(MATMULS):
    raise RuntimeError(f"{framework} on {cores} core(s) failed ({done.returncode}):\n{done.stderr[-2000:]}")
  return rows


def table(rows: list[dict]) -> str:
  """Matmuls down, (framework, cores) across, GFLOP/s in the cells."""
  columns = sorted({(r["framework"], r["cores"]) for r in rows})
  cell = {(r["matmul"], r["framework"], r["cores"]): r["gflops_per_s"] for r in rows}
  lines = ["| matmul (float32 GFLOP/s) | " + " | ".join(f"{f}, {c} core{'s' * (c > 1)}" for f, c in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for name in MATMULS:
    lines.append(f"| {name} | " + " | ".join(str(cell.get((name, f, c), "")) for f, c in columns) + " |")
  return "\n".join(lines)


def main(argv=None):
  # argparse, not absl: the child also runs under the PyTorch interpreter, which need not have absl.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--torch_python", default="", help="a Python with torch installed ('' = jax only)")
  parser.add_argument("--cores", default="1,2", help="comma-separated core counts to pin each run to")
  parser.add_argument("--iters", type=int, default=30, help="timed calls per round")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # framework:cores, a pinned child run
  args = parser.parse_args(argv)
  if args.iters < 1:
    parser.error("--iters must be >= 1")
  if args.child:
    framework, cores = args.child.split(":")
    child(framework, int(cores), args.iters)
    return
  available = len(os.sched_getaffinity(0))
  try:
    core_counts = [int(c) for c in args.cores.split(",")]
  except ValueError:
    parser.error(f"--cores must be comma-separated integers, got {args.cores!r}")
  if any(not 1 <= c <= available for c in core_counts):
    parser.error(f"--cores {args.cores!r}: each must be between 1 and the {available} CPUs this process may use")
  if args.torch_python and not os.access(args.torch_python, os.X_OK):
    parser.error(f"--torch_python {args.torch_python!r} is not an executable")
  runs = [(sys.executable, "jax")] + ([(args.torch_python, "torch")] if args.torch_python else [])
  rows = []
  for cores in core_counts:
    for python, framework in runs:
      for row in run_child(python, framework, cores, args.iters):
        print(json.dumps(row), flush=True)
        rows.append(row)
  print()
  print(table(rows))


if __name__ == "__main__":
  main()
