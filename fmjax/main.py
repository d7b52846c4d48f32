"""Training entry point.

    python -m fmjax.main --config experiments/gpt.py:tiny --workdir /tmp/run [--config.a.b=value ...]

Multi-host: on TPU pods (and SLURM clusters) pass --distributed and JAX finds its peers; elsewhere
add --coordinator=HOST:PORT --num_processes=N --process_id=I on every host.
"""

import sys

from absl import flags
from ml_collections import config_flags

from fmjax import cli_errors

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
  del argv  # cli_errors.run refuses stray arguments
  from fmjax import parallel, run_errors, train  # after flag parsing: jax reads its flags then
  if FLAGS.coordinator or FLAGS.distributed:
    parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except run_errors.RunError as e:
    # Faults the run survived (NaN, a failed save, a busy workdir) are one line too, with their
    # own exit status; bad input (ConfigError and other ValueErrors, missing files) is
    # cli_errors' (status 2). --verbosity=1 shows the traceback.
    if FLAGS.verbosity > 0:
      raise
    print(f"error: {cli_errors.one_line(e)}", file=sys.stderr)
    sys.exit(e.exit_status)
  summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.items())
                      if k.startswith(("train/loss", "eval/")) and isinstance(v, float))
  if result["step"] < FLAGS.config.train.steps:
    print(f"stopped at step {result['step']} of {FLAGS.config.train.steps} (preempted): run the same command "
          f"to resume; {summary}")
  else:
    print(f"done at step {result['step']}: {summary}")


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
