"""One training process per workdir: a second run on the same workdir refuses to start.

The lock is an fcntl lock on `WORKDIR/.lock`, which the kernel drops when its process dies
(kill -9 included), so a killed run never leaves the workdir stuck; the file itself stays, holding
the last owner's pid and host for the message. A gs:// workdir has no file locks: the lock is a
local file named after it (`paths.local_lock_file`), which stops a second run on this machine
only. Multi-host runs take it on process 0, whose workdir the others share.
"""

import fcntl
import json
import os
import socket
import time

from fmjax import paths, run_errors

LOCK_FILE = ".lock"


class WorkdirLock:
  """Held from `acquire()` (or `with`) to `release()`; refuses with WorkdirInUse when taken."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = paths.local_lock_file(paths.join(workdir, LOCK_FILE))
    self._handle = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    handle = open(self.path, "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      owner = _describe_owner(handle.read())
      handle.close()
      raise run_errors.WorkdirInUse(
          f"workdir {self.workdir} is in use by another run ({owner}); wait for it to finish, stop it, "
          f"or pass another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
    handle.flush()
    self._handle = handle
    return self

  def release(self) -> None:
    if self._handle is not None:
      fcntl.flock(self._handle, fcntl.LOCK_UN)
      self._handle.close()
      self._handle = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _describe_owner(text: str) -> str:
  try:
    owner = json.loads(text)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"]))
    return f"pid {owner['pid']} on {owner['host']}, since {since}"
  except (ValueError, KeyError, TypeError):
    return "owner unknown"
