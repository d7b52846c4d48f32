"""What attention costs on this CPU: one layer in isolation, and inside the real train step.

    .venv/bin/python benchmarks/cpu_attention.py                 # both parts, ~2 minutes on 2 cores
    .venv/bin/python benchmarks/cpu_attention.py --part=layer    # the isolated layer only

`layer`: forward + backward of one attention call at the tiny GPT's sizes (batch 32, 128 tokens,
4 heads of 32, causal, float32), for `attend_einsum` at several query-block sizes and for jax's
own `jax.nn.dot_product_attention` (XLA path). Rounds are interleaved; each line is one round.

`step`: the tiny GPT's whole train step (`fmjax.bench`, segment ids off as in `cpu_gpt.sh`), run
in a child process as shipped and again with the attention core swapped for a stand-in that still
uses q, k and v (`v + q * k`, so the projections stay). The difference is what attention costs
inside the step, where it shares caches and the two cores with everything else. Interleaved.

Prints one JSON line per measurement.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "both", ["layer", "step", "both"], "what to measure")
flags.DEFINE_integer("rounds", 3, "interleaved rounds")
flags.DEFINE_integer("steps", 30, "timed train steps per run (part=step)")
_STEP_CHILD = "FMJAX_ATTENTION_STAND_IN"


def time_layer(rounds: int) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from fmjax.models import attention

  batch, length, heads, head_dim = 32, 128, 4, 32
  rng = np.random.default_rng(0)
  q, k, v, weights = (jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), jnp.float32)
                      for _ in range(4))

  def forward_backward(attend):
    loss = lambda q, k, v: jnp.sum(attend(q, k, v) * weights)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

  variants = {f"einsum, query blocks of {block}": forward_backward(
      lambda q, k, v, block=block: attention.attend_einsum(q, k, v, mask=None, is_causal=True, query_block=block))
      for block in (32, 64, 128)}
  variants["jax.nn.dot_product_attention (xla)"] = forward_backward(
      lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))
  for fn in variants.values():
    jax.block_until_ready(fn(q, k, v))
  for round_ in range(rounds):
    for name, fn in variants.items():
      start = time.perf_counter()
      for _ in range(40):
        out = fn(q, k, v)
      jax.block_until_ready(out)
      ms = (time.perf_counter() - start) / 40 * 1e3
      print(json.dumps({"part": "layer", "round": round_, "variant": name, "fwd_bwd_ms": round(ms, 2)}), flush=True)


def run_step(stand_in: bool, steps: int) -> dict:
  env = dict(os.environ, **{_STEP_CHILD: "1" if stand_in else "0"})
  cmd = [sys.executable, os.path.abspath(__file__), "--part=step_child", "--",
         "--config", "experiments/gpt.py:tiny", "--config.model.dtype=float32", "--config.data.segment_ids=False",
         f"--config.bench.steps={steps}", "--config.bench.warmup_steps=5"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    raise RuntimeError(f"the benchmark child failed ({done.returncode}):\n{done.stderr[-2000:]}")
  return json.loads(lines[-1])


def time_step(rounds: int, steps: int) -> None:
  for round_ in range(rounds):
    shipped = run_step(False, steps)["step_time_s"]
    stand_in = run_step(True, steps)["step_time_s"]
    print(json.dumps({"part": "step", "round": round_, "step_ms": round(shipped * 1e3, 1),
                      "step_ms_attention_stood_in": round(stand_in * 1e3, 1),
                      "attention_ms_in_step": round((shipped - stand_in) * 1e3, 1)}), flush=True)


def step_child(argv) -> None:
  """`fmjax.bench` with, when asked, the attention core replaced (this process only)."""
  from fmjax import bench
  from fmjax.models import attention
  if os.environ.get(_STEP_CHILD) == "1":
    attention.attend_einsum = lambda q, k, v, **unused: v + q * k
  sys.argv = [sys.argv[0]] + argv
  bench.define_flags()
  app.run(bench.main)


def main(argv):
  del argv
  if FLAGS.part in ("layer", "both"):
    time_layer(FLAGS.rounds)
  if FLAGS.part in ("step", "both"):
    time_step(FLAGS.rounds, FLAGS.steps)


if __name__ == "__main__":
  if "--part=step_child" in sys.argv:
    step_child(sys.argv[sys.argv.index("--") + 1:])
  else:
    from fmjax import host_memory
    host_memory.keep_freed_memory()
    app.run(main)
