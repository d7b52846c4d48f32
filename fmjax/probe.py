"""A linear probe of a text run's frozen encoder: how much of a labelled task its features hold.

    python -m fmjax.probe --workdir DIR --task stdlib-module [--layer -1] [--pool mean] \
        [--random_init] [--modules asyncio,email,...] [--train_per_class 300] [--test_per_class 50] \
        [--snippet_chars 120] [--l2 0.001] [--seed 0] [--batch_size 64] [--json]

prints one line (wrapped here),

    probe stdlib-module: accuracy 0.350 (majority 0.125) on 400 held-out snippets, 8 classes; causal_lm run DIR
    at step 600 (layer 4 of 4, mean pooling)

or, with --json, the same as one JSON object. Works on any text run, causal_lm (GPT) or
masked_lm (BERT): each snippet, encoded `[bos] snippet [eos]`, goes through the frozen model,
its states at --layer (default: the final hidden states, before either output head; see
fmjax.text_features for how layers are counted) are pooled over its tokens, and a multinomial
logistic regression with an L2 penalty (fmjax.linear_probe) is fitted on the training snippets
and scored on the held-out ones, against always answering the commonest training class.
--random_init probes the run's architecture with freshly initialised weights (seeded by the
run's config.seed; step 0) instead of its checkpoint: what the architecture gives untrained.

The task (fmjax.probe_tasks): stdlib-module, which standard-library package a snippet of
source comes from, training and held-out snippets from different files. A workdir of another
paradigm, or any argument out of range, is one `error: ...` line and exit status 2, before a
parameter is read.

Python:
    from fmjax.probe import run_probe
    run_probe(DIR, task="stdlib-module")   # -> {'accuracy': ..., 'majority': ..., 'n_train': ...,
                                           #     'n_test': ..., 'classes': [...], 'objective': ..., 'step': ...}
"""

import json
import sys

import jax
import numpy as np
from absl import flags
from flax import nnx

from fmjax import argument_checks, cli_errors, inference, linear_probe, paths, probe_tasks, run_records, text_features

TEXT_OBJECTIVES = ("causal_lm", "masked_lm")
DEFAULTS = dict(layer=-1, pool="mean", random_init=False, modules=probe_tasks.STDLIB_MODULES, train_per_class=300,
                test_per_class=50, snippet_chars=120, l2=1e-3, seed=0, batch_size=64)
MIN_SNIPPET_CHARS = 8


def check_settings(*, task, pool, train_per_class, test_per_class, snippet_chars, l2, seed, batch_size, **_) -> None:
  """ValueError for a setting out of range; needs no run."""
  if task not in probe_tasks.TASKS:
    raise ValueError(f"task={task!r}: choose one of {probe_tasks.TASKS}")
  if pool not in text_features.POOLS:
    raise ValueError(f"pool={pool!r}: choose one of {text_features.POOLS}")
  argument_checks.integer(train_per_class, "train_per_class", 1)
  argument_checks.integer(test_per_class, "test_per_class", 1)
  argument_checks.integer(snippet_chars, "snippet_chars", MIN_SNIPPET_CHARS)
  argument_checks.number(l2, "l2", 0.0, low_open=True, note=" (the L2 penalty on the probe's weights)")
  argument_checks.seed(seed)
  argument_checks.integer(batch_size, "batch_size", 1)


def open_text_run(workdir: str) -> inference.RunFiles:
  """The run's files, refused (ValueError) unless it is a text run; reads no parameters, and
  the paradigm is checked on config.json alone, before the run's assets are loaded."""
  objective = inference.load_config(workdir).objective
  if objective not in TEXT_OBJECTIVES:
    raise ValueError(f"--workdir {workdir} holds a {objective!r} run; the probe needs a causal_lm or masked_lm run")
  return inference.open_run(workdir)


def check_request(files: inference.RunFiles, *, layer, modules, **_) -> tuple[int, tuple[str, ...]]:
  """(the layer as an index in [0, L], the module names) for this run; ValueError if out of range."""
  index = text_features.resolve_layer(layer, int(files.config.model.num_layers))
  return index, probe_tasks.check_modules(modules)


def _model(files: inference.RunFiles, random_init: bool) -> tuple[nnx.Module, int]:
  if not random_init:
    run = inference.restore(files)
    return run.model, run.step
  with nnx.use_eager_sharding(False):
    model = files.objective.make_model(files.config, files.assets, nnx.Rngs(int(files.config.seed)))
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, jax.devices()[0])), 0


def run_probe(workdir: str, task: str = "stdlib-module", **settings) -> dict:
  """Probes the run in `workdir`; `settings` are DEFAULTS' keys. Returns the score and what was
  probed: accuracy, majority, train_accuracy, n_train, n_test, classes, objective, step, layer
  (as an index in [0, num_layers]), num_layers, pool, random_init, task, workdir."""
  unknown = set(settings) - set(DEFAULTS)
  if unknown:
    raise TypeError(f"run_probe: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
  s = {**DEFAULTS, **settings}
  check_settings(task=task, **s)
  files = open_text_run(workdir)
  layer, modules = check_request(files, **s)
  model, step = _model(files, bool(s["random_init"]))
  data = probe_tasks.stdlib_module_task(modules, train_per_class=s["train_per_class"],
                                        test_per_class=s["test_per_class"], snippet_chars=s["snippet_chars"],
                                        seed=s["seed"])
  features = text_features.TextFeatures(model, files.assets, int(files.config.data.seq_len))
  embed = lambda snippets: features([x.text for x in snippets], layer=layer, how=s["pool"], batch_size=s["batch_size"])
  labels = lambda snippets: np.array([x.label for x in snippets])
  score = linear_probe.fit_and_score(embed(data.train), labels(data.train), embed(data.test), labels(data.test),
                                     l2=s["l2"])
  return {"task": task, "accuracy": score.accuracy, "majority": score.majority,
          "train_accuracy": score.train_accuracy, "n_train": len(data.train), "n_test": len(data.test),
          "classes": list(data.classes), "objective": files.config.objective, "step": int(step),
          "layer": layer, "num_layers": features.layers, "pool": s["pool"], "random_init": bool(s["random_init"]),
          "workdir": workdir}


def metric_name(result: dict) -> str:
  """What the report calls this probe's accuracy: `probe/<task>/accuracy`, with a suffix for each
  setting that differs from the default (random_init, another layer, another pooling)."""
  parts = (["random_init"] if result["random_init"] else []) + \
          ([f"layer{result['layer']}"] if result["layer"] != result["num_layers"] else []) + \
          ([result["pool"]] if result["pool"] != DEFAULTS["pool"] else [])
  return f"probe/{result['task']}/accuracy" + "".join(f"_{p}" for p in parts)


def record(result: dict) -> str:
  """Writes the result into its run's workdir (`probes/<metric>.json`), where `fmjax.report`
  reads it beside the run's curves: one page then shows which objective's encoder probes best.
  Returns the path written."""
  name = metric_name(result)
  folder = paths.join(paths.absolute(result["workdir"]), run_records.PROBES_DIR)
  paths.makedirs(folder)
  path = paths.join(folder, name.replace("/", "__") + ".json")
  paths.write_atomically(path, json.dumps({**result, "metric": name}, indent=2))
  return path


def summary(result: dict) -> str:
  """The one line the command prints."""
  r = result
  where = "randomly initialised (step 0)" if r["random_init"] else f"at step {r['step']}"
  return (f"probe {r['task']}: accuracy {r['accuracy']:.3f} (majority {r['majority']:.3f}) on {r['n_test']} held-out "
          f"snippets, {len(r['classes'])} classes; {r['objective']} run {r['workdir']} {where} "
          f"(layer {r['layer']} of {r['num_layers']}, {r['pool']} pooling)")


FLAGS = flags.FLAGS


def define_flags():
  # Defined when run as a program (cli_errors.run), so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  d = DEFAULTS
  flags.DEFINE_string("workdir", None, "workdir of a causal_lm or masked_lm training run")
  flags.DEFINE_string("task", "stdlib-module", f"the labelled task, one of {probe_tasks.TASKS}")
  flags.DEFINE_integer("layer", d["layer"], "the layer probed: 0 = the embeddings, i = after block i, -1 = the final "
                       "hidden states (negative counts from the end)")
  flags.DEFINE_string("pool", d["pool"], f"pooling over a snippet's tokens, one of {text_features.POOLS}")
  flags.DEFINE_boolean("random_init", d["random_init"], "probe the run's architecture freshly initialised (step 0) "
                       "instead of its checkpoint")
  flags.DEFINE_string("modules", ",".join(d["modules"]), "comma-separated standard-library packages, the classes")
  flags.DEFINE_integer("train_per_class", d["train_per_class"], "training snippets per class, an integer >= 1")
  flags.DEFINE_integer("test_per_class", d["test_per_class"], "held-out snippets per class, an integer >= 1")
  flags.DEFINE_integer("snippet_chars", d["snippet_chars"], "characters per snippet, an integer >= "
                       f"{MIN_SNIPPET_CHARS} (whole lines; cut to the model's context)")
  flags.DEFINE_float("l2", d["l2"], "L2 penalty on the probe's weights, a finite number > 0")
  flags.DEFINE_integer("seed", d["seed"], "which snippets are drawn, an integer in "
                       f"[0, {argument_checks.SEED_LIMIT - 1}]")
  flags.DEFINE_integer("batch_size", d["batch_size"], "snippets per forward pass, an integer >= 1")
  flags.DEFINE_boolean("json", False, "print the result as one JSON object")
  flags.DEFINE_boolean("record", True, "also write the result to WORKDIR/probes/, where fmjax.report shows it")


def main(argv):
  del argv
  cli_errors.require(workdir=FLAGS.workdir)
  modules = tuple(m.strip() for m in FLAGS.modules.split(",") if m.strip())
  result = run_probe(FLAGS.workdir, FLAGS.task, layer=FLAGS.layer, pool=FLAGS.pool, random_init=FLAGS.random_init,
                     modules=modules, train_per_class=FLAGS.train_per_class, test_per_class=FLAGS.test_per_class,
                     snippet_chars=FLAGS.snippet_chars, l2=FLAGS.l2, seed=FLAGS.seed, batch_size=FLAGS.batch_size)
  print(json.dumps(result) if FLAGS.json else summary(result))
  if FLAGS.record:
    try:
      record(result)
    except OSError as e:  # a read-only run: the result is printed all the same
      print(f"note: the result was not recorded in {FLAGS.workdir} ({e})", file=sys.stderr)


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
