"""A training run as a child process of a sweep: its output passed through line by line, its
last error line kept for the sweep's summary, and its life tied to the sweep's.

- A signal the sweep can catch (SIGTERM from a scheduler, SIGINT from Ctrl-C) is passed on as
  SIGTERM, which `fmjax.main` answers by saving a checkpoint and exiting; a second one kills
  the run. The sweep then stops instead of starting the next run. The child ignores SIGINT
  itself: Ctrl-C reaches every process of the terminal's group, and a KeyboardInterrupt in the
  run would stop it without the save.
- SIGKILL of the sweep cannot be caught, so on Linux the child asks the kernel
  (prctl PR_SET_PDEATHSIG) to be killed when the sweep dies: no run is left training
  unwatched, holding its workdir's lock against the relaunched sweep. Elsewhere, kill the
  sweep's process group (`kill -9 -PGID`; the run is in it) to stop both.
"""

import collections
import ctypes
import dataclasses
import os
import re
import signal
import subprocess
import sys
from typing import Callable, Optional, Sequence

PR_SET_PDEATHSIG = 1  # linux/prctl.h
KEPT_LINES = 200      # of the child's output, enough to find its error line
# The last line of a Python traceback: `ValueError: ...`, `jax.errors.JaxRuntimeError: ...`.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


@dataclasses.dataclass(frozen=True)
class Outcome:
  returncode: int
  error_line: str               # what went wrong, in one line ('' when nothing did)
  interrupted_by: Optional[int]  # the signal the sweep received while the run ran


def run(command: Sequence[str], *, echo: Callable[[str], None], env: Optional[dict] = None) -> Outcome:
  """Runs `command` to its end, echoing each line of its stdout and stderr (merged)."""
  env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")  # lines as they happen
  process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", env=env, preexec_fn=_child_setup())
  tail: collections.deque = collections.deque(maxlen=KEPT_LINES)
  with _Forwarding(process) as forwarding:
    for line in process.stdout:
      line = line.rstrip("\n")
      tail.append(line)
      echo(line)
    returncode = process.wait()
  return Outcome(returncode, error_line(list(tail), returncode), forwarding.received)


def error_line(lines: Sequence[str], returncode: int) -> str:
  """The child's own `error: ...` line, else the last line of a traceback, else how it ended."""
  if returncode == 0:
    return ""
  for line in reversed(lines):
    if line.startswith("error:"):
      return line.removeprefix("error:").strip()
  for line in reversed(lines):
    if EXCEPTION_LINE.match(line):
      return line.strip()
  if returncode < 0:
    return f"killed by {signal.Signals(-returncode).name}"
  return f"exit status {returncode}"


class _Forwarding:
  """While the child runs, SIGTERM and SIGINT to this process become SIGTERM to the child (the
  second one SIGKILL)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, process: subprocess.Popen):
    self.process = process
    self.received: Optional[int] = None
    self._count = 0
    self._previous: dict = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: signals stay as they are
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = self.received or signum
    self._count += 1
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM if self._count == 1 else signal.SIGKILL)

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _child_setup() -> Callable[[], None]:
  """What the child runs between fork and exec: ignore SIGINT (an ignored signal stays ignored
  across exec, and Python then installs no KeyboardInterrupt handler), and on Linux ask to be
  killed when this process dies."""
  prctl = None
  if sys.platform.startswith("linux"):
    try:
      prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    except (OSError, AttributeError):
      prctl = None
  parent = os.getpid()

  def setup():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if prctl is not None:
      prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
      if os.getppid() != parent:  # the sweep died before the request took effect
        os._exit(1)
  return setup
