"""Training entry point.

    python -m fmjax.main --config experiments/gpt.py:tiny --workdir /tmp/run [--config.a.b=value ...]

Multi-host: on TPU pods (and SLURM clusters) pass --distributed and JAX finds its peers; elsewhere
add --coordinator=HOST:PORT --num_processes=N --process_id=I on every host.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags():
  # Flags are defined only when run as a program, so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  config_flags.DEFINE_config_file("config", None, "experiment config: path/to/file.py:variant", lock_config=True)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the tokenizer of the run go")
  flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (TPU pods, SLURM)")
  flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, for multi-process runs elsewhere")
  flags.DEFINE_integer("num_processes", 1, "processes in a multi-process run (with --coordinator)")
  flags.DEFINE_integer("process_id", 0, "this process's id (with --coordinator)")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, tfds) drown the progress lines
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fmjax import config_checks, parallel, run_errors, train  # after flag parsing: jax reads its flags then
  if FLAGS.coordinator or FLAGS.distributed:
    parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, FileNotFoundError, ValueError, run_errors.RunError) as e:
    # Bad input (config, data, paths) and faults the run survived (NaN, a failed save, a busy
    # workdir) are reported in one line; --verbosity=1 shows the traceback.
    if FLAGS.verbosity > 0:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_status", 2))
  summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.items())
                      if k.startswith(("train/loss", "eval/")) and isinstance(v, float))
  print(f"done at step {result['step']}: {summary}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
