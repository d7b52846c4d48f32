"""Every paradigm's pod config compiled for its TPU slice on this host: the roofline table.

    pip install -e '.[tpu]'
    .venv/bin/python benchmarks/tpu_roofline.py [--configs experiments/gpt.py:gpt2,...] [--json_out PATH]

No TPU needed. Each config goes through `python -m fmjax.aot --json` in a child process (the
step training runs, compiled by libtpu for the config's own `topology`), and the reports become
one markdown table: memory per chip against the chip's HBM, FLOPs and bytes per chip per step,
the roofline's compute and memory times, which one bounds the step, and the MFU that bound
allows. Where no device is lent, this is what can be said about a config's speed on its target
hardware; `fmjax/aot.py` says where each figure comes from and why the memory side is an upper
bound. About 1-3 minutes a config on 2 CPU cores.
"""

import argparse
import json
import subprocess
import sys

# Each paradigm's configs that name a TPU slice (the tiny ones run on a laptop instead).
CONFIGS = (
    "experiments/gpt.py:small", "experiments/gpt.py:gpt2", "experiments/gpt.py:gpt2-medium",
    "experiments/bert.py:bert-base", "experiments/bert.py:bert-crammed",
    "experiments/clip.py:vit-b16", "experiments/clip.py:siglip-b16",
    "experiments/diffusion.py:ddpm-cifar10", "experiments/diffusion.py:dit-b2",
    "experiments/speech.py:whisper-base", "experiments/speech.py:best-rq-base",
)


def compile_report(config: str) -> dict:
  """fmjax.aot's JSON report for `config`; a config that does not fit still reports (status 2)."""
  done = subprocess.run([sys.executable, "-m", "fmjax.aot", "--config", config, "--json"],
                        capture_output=True, text=True, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode not in (0, 2) or not lines:
    raise RuntimeError(f"python -m fmjax.aot --config {config} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  return {"config": config, **json.loads(lines[-1])}


def _si(value: float, unit: str) -> str:
  for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if abs(value) >= scale:
      return f"{value / scale:.3g} {prefix}{unit}"
  return f"{value:.3g} {unit}"


def _time(seconds: float) -> str:
  return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def table(reports: list[dict]) -> str:
  lines = ["| config | slice | params | memory per chip | FLOPs per chip | bytes per chip | compute | memory | "
           "bound | MFU <= |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
  for r in reports:
    memory = f"{r['memory_needed_bytes'] / 2**30:.1f} of {r['hbm_bytes'] / 2**30:.0f} GiB"
    if not r["fits"]:
      memory += " (does not fit)"
    lines.append(
        f"| `{r['config'].removeprefix('experiments/')}` | {r['topology']} | {(r['params'] or 0) / 1e6:.1f}M | {memory} | "
        f"{_si(r['flops_per_chip'], 'FLOP')} | {_si(r['bytes_accessed_per_chip'], 'B')} | "
        f"{_time(r['compute_time_s'])} | {_time(r['memory_time_s'])} | {r['bound']} | "
        f"{r['mfu_bound']:.0%} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated path.py:variant")
  parser.add_argument("--json_out", default="", help="also write one JSON line per config here")
  args = parser.parse_args(argv)
  configs = [c for c in args.configs.split(",") if c]
  malformed = [c for c in configs if ":" not in c or not c.split(":")[0].endswith(".py")]
  if not configs or malformed:
    parser.error(f"--configs: give path/to/file.py:variant entries, comma-separated (got {args.configs!r})")
  reports = []
  for config in configs:
    reports.append(compile_report(config))
    print(json.dumps(reports[-1]), flush=True)
  if args.json_out:
    with open(args.json_out, "w") as handle:
      handle.write("".join(json.dumps(r) + "\n" for r in reports))
  print()
  print(table(reports))


if __name__ == "__main__":
  main()
