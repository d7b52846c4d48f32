"""Paths that are local files or URLs of object stores (`gs://bucket/runs/x`).

On a pod every host reads the data and writes the run to one shared place, usually a Cloud
Storage bucket. os.path and open() do not know URLs: `os.path.abspath('gs://b/runs')` is the
local folder `<cwd>/gs:/b/runs`, so a run would silently write to the wrong disk. Code that
touches a workdir or a data dir therefore goes through these helpers. They take plain strings
and keep URLs as they are; file I/O goes through etils.epath, the layer tfds and Orbax use
too (gs:// needs gcsfs; Orbax and TensorBoard on gs:// also need google-cloud-storage).
"""

import hashlib
import importlib.util
import os
import posixpath
import re
import tempfile
import time

from etils import epath

# URL schemes a whole run works with, and the (module, package) each needs beyond fmjax's own:
# etils.epath (tfds, Orbax's metadata) reads gs:// through gcsfs; Orbax's bucket checks and
# TensorBoard's writer use google-cloud-storage. (Orbax writes arrays to gs:// only, so no s3.)
REMOTE_PACKAGES = {
    "gs": (("gcsfs", "gcsfs"), ("google.cloud.storage", "google-cloud-storage")),
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path) -> str | None:
  """'gs' for 'gs://b/x'; None for a local path."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_remote(path) -> bool:
  return scheme(path) is not None


def absolute(path) -> str:
  """A URL as it is (less a trailing '/'); a local path with '~' expanded, made absolute.

  Fails here, before anything expensive, for a scheme that cannot be read or whose filesystem
  package is not installed (it would otherwise fail deep inside tfds or Orbax)."""
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.abspath(os.path.expanduser(path))
  name = scheme(path)
  if name not in REMOTE_PACKAGES:
    allowed = ", ".join(f"{s}://" for s in REMOTE_PACKAGES)
    raise ValueError(f"{path!r}: URLs must start with one of {allowed}; anything else is a local path.")
  missing = [package for module, package in REMOTE_PACKAGES[name] if not _importable(module)]
  if missing:
    raise ValueError(f"{path!r}: {name}:// paths need {' and '.join(missing)}: pip install "
                     f"{' '.join(missing)} (fmjax[tpu] brings them).")
  return path.rstrip("/") if len(path) > len(name) + 3 else path


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # a parent package (google.cloud) is missing
    return False


def join(base, *parts: str) -> str:
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def exists(path) -> bool:
  return epath.Path(path).exists()


def isdir(path) -> bool:
  return epath.Path(path).is_dir()


def makedirs(path) -> None:
  """A local folder and its parents. Nothing for a URL: object stores have no folders (a name
  with '/' in it is enough), and on gs:// making one for a bucket's root would try to create
  the bucket."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def read_text(path) -> str:
  return epath.Path(path).read_text()


def write_atomically(path, data: bytes | str) -> None:
  """Writes `data` so that a reader (another process, or a crash mid-write) never sees a
  half-written file."""
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    # An object store publishes an object only once its upload completes: one write is atomic.
    epath.Path(path).write_bytes(data)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as handle:
    handle.write(data)
  os.replace(tmp, path)


def local_lock_file(path) -> str:
  """Where to take a file lock for `path`: `path` itself when local; for a URL, a file in the
  machine's temp dir named after it, since object stores have no locks. Such a lock orders the
  processes of one machine, as a local lock does; ordering hosts is the caller's job."""
  path = os.fspath(path)
  if not is_remote(path):
    return path
  digest = hashlib.sha256(path.encode()).hexdigest()[:16]
  readable = re.sub(r"[^A-Za-z0-9._-]+", "_", path.split("://", 1)[1])[-80:]
  return os.path.join(tempfile.gettempdir(), "fmjax-locks", f"{readable}-{digest}")


def _drop_partial_last_line(path: str) -> None:
  """A process killed mid-write (kill -9, power loss) can leave a last line without its newline;
  appending after it would glue the next row onto the fragment. Cut the fragment off."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as handle:
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
      return
    handle.seek(max(size - 65536, 0))
    tail = handle.read()
    if tail.endswith(b"\n"):
      return
    cut = tail.rfind(b"\n")
    if cut < 0 and size > len(tail):
      return  # one line longer than the window: not a row this writer wrote
    handle.truncate(size - len(tail) + cut + 1)


class Appender:
  """Appends text to a file: line by line to a local file; to a URL, by rewriting the whole
  object at most every `flush_seconds` (and at flush/close).

  Object stores cannot append. Rewriting keeps one file that `gcloud storage cat` shows whole
  (part files would not); the file is small (a row per log step), and the interval keeps the
  upload out of most log steps of the training loop. The cost: a crash (not a preemption,
  which closes the writer) loses at most the last interval's rows. The first write is uploaded
  at once, so a new run shows up quickly. What the file held before (a resumed run) is kept."""

  def __init__(self, path, flush_seconds: float = 30.0):
    self.path = os.fspath(path)
    self.remote = is_remote(self.path)
    self.flush_seconds = flush_seconds
    if self.remote:
      self._text = read_text(self.path) if exists(self.path) else ""
      self._dirty = False
      self._last_upload = -float("inf")
    else:
      _drop_partial_last_line(self.path)
      self._handle = open(self.path, "a", buffering=1)

  def write(self, text: str) -> None:
    if not self.remote:
      self._handle.write(text)
      return
    self._text += text
    self._dirty = True
    if time.monotonic() - self._last_upload >= self.flush_seconds:
      self.flush()

  def keep_lines(self, keep) -> None:
    """Rewrites what the file holds so far with only the lines (newline included) for which
    `keep(line)` is true; later writes append after them."""
    if self.remote:
      self._text = "".join(line for line in self._text.splitlines(keepends=True) if keep(line))
      self._dirty = True
      self.flush()
      return
    self._handle.close()
    with open(self.path) as handle:
      lines = handle.readlines()
    write_atomically(self.path, "".join(line for line in lines if keep(line)))
    self._handle = open(self.path, "a", buffering=1)

  def flush(self) -> None:
    if not self.remote:
      self._handle.flush()
    elif self._dirty:
      write_atomically(self.path, self._text)
      self._dirty, self._last_upload = False, time.monotonic()

  def close(self) -> None:
    if self.remote:
      self.flush()
    else:
      self._handle.close()
