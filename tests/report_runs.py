"""Small hand-written run directories (config.json + metrics.jsonl, no training) for the tests
of fmjax.report and its browser check.

    write_run(tmp / "a", learning_rate=1e-3)             # a finished causal_lm run of 40 steps
    write_run(tmp / "b", logged_until=20, truncated=True)  # in progress, last line cut short
"""

import json
import math
import pathlib
from typing import Optional

TRAIN_KEYS = ("train/loss", "train/grad_norm", "train/learning_rate", "train/param_norm")


def config(objective: str = "causal_lm", learning_rate: float = 1e-3, steps: int = 40) -> dict:
  return {
      "objective": objective,
      "seed": 0,
      "model": {"num_layers": 2, "embed_dim": 64, "dtype": "float32"},
      "optim": {"learning_rate": learning_rate, "b1": 0.9, "warmup_steps": 2},
      "train": {"steps": steps, "batch_size": 8, "log_every": 2, "eval_every": 10},
      "data": {"seq_len": 32, "tokenizer": "byte"},
  }


def loss_at(step: int, learning_rate: float) -> float:
  """A falling loss with some wobble, faster for a larger learning rate: curves that differ."""
  return 5.0 * math.exp(-step * learning_rate * 40) + 1.0 + 0.15 * math.sin(step * 1.7)


def rows(objective: str, learning_rate: float, steps: int, logged_until: int) -> list[dict]:
  """metrics.jsonl rows as the trainer writes them: a compile-time row at step 0, a train row
  every 2 steps, eval metrics every 10 (in the train row at steps 10, 30, ...; in their own row
  at 20, 40, ...)."""
  out = [{"step": 0, "perf/compile_time_s": 1.9}]
  for step in range(2, min(steps, logged_until) + 1, 2):
    loss = loss_at(step, learning_rate)
    row = {"step": step, "train/loss": loss, "train/grad_norm": 1.0 + 0.1 * (step % 3),
           "train/learning_rate": learning_rate * (1 - step / (2 * steps)), "train/param_norm": 30.0 + step / 10,
           "perf/step_time_s": 0.12, "perf/units_per_s": 2000.0 + 50 * math.sin(step), "perf/mfu": None,
           "perf/host_rss_mb": 600.0}
    if objective == "contrastive":
      row["train/logit_scale"] = 14.0 + step / 10
    out.append(row)
    if step % 10 == 0:
      evaluation = {"eval/loss": loss + 0.1}
      if objective == "causal_lm":
        evaluation["eval/perplexity"] = math.exp(loss + 0.1)
        evaluation["eval/tokens"] = 512.0
      else:
        evaluation["eval/zeroshot_top1"] = min(1.0, step / steps)
      if step % 20 == 0:
        out.append({"step": step, **evaluation})
      else:
        row.update(evaluation)
  return out


def write_run(folder, objective: str = "causal_lm", learning_rate: float = 1e-3, steps: int = 40,
              logged_until: Optional[int] = None, truncated: bool = False, with_config: bool = True) -> pathlib.Path:
  """A run's workdir; `logged_until` < steps leaves it in progress; `truncated` cuts its last
  line in half, as a writer killed mid-line does."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  if with_config:
    (folder / "config.json").write_text(json.dumps(config(objective, learning_rate, steps), indent=2))
  until = steps if logged_until is None else logged_until
  text = "".join(json.dumps(row) + "\n" for row in rows(objective, learning_rate, steps, until))
  if truncated:
    text += json.dumps({"step": 9999, "train/loss": 1.0})[:17]  # no newline: still being written
  (folder / "metrics.jsonl").write_text(text)
  return folder
