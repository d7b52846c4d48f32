"""How the inference tools end on bad input: one line on stderr, `error: <what is wrong and what
is allowed>`, exit status 2, no traceback (with --verbosity=1 the error is raised instead, for
its traceback).

    if __name__ == "__main__":
      cli_errors.run(main, define_flags)

Bad input is what the tools' checks raise (ValueError, which JSON and UTF-8 decoding errors are
too), a file that cannot be read (OSError), and a flag that absl cannot parse (`--seed=abc`, an
unknown flag, a --flagfile that is missing or not UTF-8), which absl alone would report over
several lines with exit status 1.
"""

import re
import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags, logging

from fmjax import host_memory

EXIT_BAD_INPUT = 2
BAD_INPUT = (ValueError, OSError)

FLAGS = flags.FLAGS


def fail(message) -> NoReturn:
  """Prints `error: <message>` on one line and exits with status 2."""
  print(f"error: {one_line(message)}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def one_line(message) -> str:
  # Some messages (absl's, libraries') carry line breaks; scripts read the first line only.
  return re.sub(r"\s*\n\s*", " ", str(message).strip())


def require(**values) -> None:
  """ValueError for the first of these flags that is unset or empty, with the flag's help."""
  for name, value in values.items():
    if not value:
      raise ValueError(f"--{name} is required: {_help(name)}")


def _help(name: str) -> str:
  # absl appends '; repeat this option to specify a list of values' to a multi flag's help, which
  # says so already.
  return re.sub(r";\s*repeat this option to specify a list of values$", "", FLAGS[name].help)


def run(main: Callable[[Sequence[str]], None], define_flags: Callable[[], None],
        argv: Optional[Sequence[str]] = None) -> None:
  """Defines the tool's flags, parses `argv` (sys.argv when None) and calls main(argv), through
  absl's app.run, ending on bad input as this module says.

  The flags exist for the call only, so that several tools can run one after another in one
  process (as the tests do) although their flags share names (--workdir, --top_k, --seed)."""
  host_memory.keep_freed_memory()  # before jax makes its CPU client
  known = set(FLAGS)
  define_flags()
  try:
    app.run(_reporting(main), list(argv) if argv is not None else None, flags_parser=_parse)
  finally:
    # Also the flags parsing defined (config_flags' --config.a.b overrides).
    for name in set(FLAGS) - known:
      delattr(FLAGS, name)


def _parse(argv: list[str]) -> list[str]:
  if FLAGS.is_parsed():
    FLAGS.unparse_flags()  # a later run in the same process starts from the defaults as well
  try:
    return FLAGS(argv)
  except flags.CantOpenFlagFileError as e:
    fail(f"--flagfile: {str(e).removeprefix('ERROR:: ')}")
  except flags.Error as e:
    fail(_with_help(_without_traceback(str(e))))
  except UnicodeDecodeError as e:
    fail(f"--flagfile: a flag file is not UTF-8 text ({e})")
  except (AttributeError, KeyError) as e:
    # config_flags looks an override's field up while parsing: --config.train.stepz=3.
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    detail = one_line(re.sub(r"\\n|[\\'\"]", " ", str(e))).strip()
    fail(f"a config override names no field of the config ({detail}); overrides given: {', '.join(overrides)}")


def _without_traceback(message: str) -> str:
  """config_flags puts the traceback of a config file that failed to load into its message:
  keep what it says before it and the exception's own line at its end."""
  marker = "Traceback (most recent call last)"
  if marker not in message:
    return message
  head = message.split(marker)[0].rstrip(": \n")
  last = [line for line in message.strip().splitlines() if line.strip()][-1].strip()
  return f"{head}: {last}"


def _with_help(message: str) -> str:
  """absl's `flag --seed=abc: invalid literal for int() ...`, and what the flag takes."""
  match = re.match(r"flag --([\w.-]+)=", message)
  if not match:
    return message
  message, name = message[len("flag "):], match.group(1)
  return f"{message} (--{name}: {_help(name)})" if name in FLAGS else message


def _reporting(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
  def reporting_main(argv: Sequence[str]) -> None:
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, tfds) drown the output
    try:
      if len(argv) > 1:
        raise ValueError(f"unexpected arguments {list(argv[1:])}: every input is a flag, e.g. --workdir DIR")
      main(argv)
    except BAD_INPUT as e:
      if FLAGS.verbosity > 0:
        raise
      fail(e)
  return reporting_main
