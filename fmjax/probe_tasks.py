"""Labelled text tasks for linear probes, built offline from what every Python installation has.

stdlib-module: which package of the standard library a snippet of source comes from. The
packages (default: asyncio, email, http, importlib, logging, multiprocessing, unittest, xml;
single-file modules such as argparse cannot be split by file, so they are not candidates) are
found under this interpreter's `sysconfig` stdlib folder, their `.py` files walked as the
default corpus walks them (tests left out). Each package's files are split between the probe's
training and held-out sets BY FILE, about 30% of its characters held out, by a stable hash of
each file's path: a held-out snippet comes from a file the probe's classifier never saw. A
file is cut into consecutive windows of whole lines, up to `snippet_chars` characters (a longer
line is cut); windows that are mostly blank are dropped. Then `train_per_class` and
`test_per_class` windows per package are drawn (seeded) from its training and held-out files,
so the classes are balanced (all of them where a package has fewer).

The language models being probed were pretrained on these very files (the default corpus is the
standard library): the probe asks what their frozen representations make linearly readable,
not whether they generalise to unseen code, and both objectives saw the same text. Docstrings
and comments sometimes name their package, which a probe may pick up as easily as style.
"""

import dataclasses
import os
import sysconfig

import numpy as np

from fmjax.data import hashing

TASKS = ("stdlib-module",)
STDLIB_MODULES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")
HELD_OUT_SHARE = 0.3          # of each package's characters, at least; never more than half
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class Snippet:
  text: str
  label: int
  path: str          # relative to the stdlib folder


@dataclasses.dataclass(frozen=True)
class ProbeData:
  classes: tuple[str, ...]
  train: list[Snippet]
  test: list[Snippet]


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def package_files(module: str, root: str) -> list[str]:
  """Relative paths of the package's .py files, sorted; [] when it is no package folder."""
  folder = os.path.join(root, module)
  if not os.path.isdir(folder):
    return []
  found = []
  for current, subdirs, files in os.walk(folder):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("."))
    found += [os.path.relpath(os.path.join(current, f), root) for f in sorted(files) if f.endswith(".py")]
  return sorted(found)


def split_by_file(sizes: dict[str, int], share: float = HELD_OUT_SHARE) -> tuple[list[str], list[str]]:
  """(training files, held-out files): files in the order of a stable hash of their path join
  the held-out set until it holds `share` of the characters, skipping any file that would take
  it past half. If every file is too big for that, the smallest one is held out."""
  total = sum(sizes.values())
  order = sorted(sizes, key=lambda p: (hashing.unit_interval(p), p))
  held_out, held_chars = [], 0
  for path in order:
    if held_chars >= share * total:
      break
    if held_chars + sizes[path] <= 0.5 * total:
      held_out.append(path)
      held_chars += sizes[path]
  if not held_out:
    held_out = [min(order, key=lambda p: (sizes[p], p))]
  return [p for p in order if p not in held_out], held_out


def windows(text: str, chars: int) -> list[str]:
  """Consecutive windows of whole lines, each up to `chars` characters; a line longer than that
  is a window of its own, cut. Windows with fewer than chars / 2 non-blank characters are dropped."""
  out, current = [], ""
  for line in text.splitlines(keepends=True):
    if current and len(current) + len(line) > chars:
      out.append(current)
      current = ""
    current += line
    if len(current) >= chars:
      out.append(current[:chars])
      current = ""
  if current:
    out.append(current)
  return [w for w in out if len("".join(w.split())) >= chars // 2]


def _read(root: str, path: str) -> str:
  with open(os.path.join(root, path), "rb") as handle:
    return handle.read().decode("utf-8", errors="replace")  # as the default corpus reads them


def _draw(pool: list[Snippet], count: int, rng: np.random.Generator) -> list[Snippet]:
  if len(pool) <= count:
    return pool
  return [pool[i] for i in np.sort(rng.choice(len(pool), count, replace=False))]


def check_modules(modules, root: str | None = None) -> tuple[str, ...]:
  """The module names as a tuple; ValueError for a repeated name or one that is not a package
  of this interpreter's standard library with at least two source files."""
  root = root or stdlib_root()
  modules = tuple(modules)
  if len(modules) < 2:
    raise ValueError(f"modules={','.join(modules)!r}: give at least two packages to tell apart")
  if len(set(modules)) != len(modules):
    raise ValueError(f"modules={','.join(modules)!r}: a package is named twice")
  for module in modules:
    if len(package_files(module, root)) < 2:
      raise ValueError(f"modules: {module!r} is not a package of this Python's standard library ({root}) with at "
                       "least 2 source files (the probe splits each package's files between training and held-out "
                       f"sets); e.g. {','.join(STDLIB_MODULES)}")
  return modules


def stdlib_module_task(modules=STDLIB_MODULES, *, train_per_class: int, test_per_class: int,
                       snippet_chars: int, seed: int, root: str | None = None) -> ProbeData:
  """The stdlib-module task's snippets, the same for the same arguments (and Python)."""
  root = root or stdlib_root()
  modules = check_modules(modules, root)
  train, test = [], []
  for label, module in enumerate(modules):
    texts = {path: _read(root, path) for path in package_files(module, root)}
    train_files, test_files = split_by_file({p: len(t) for p, t in texts.items()})
    for files, count, out, split in ((train_files, train_per_class, train, 0), (test_files, test_per_class, test, 1)):
      pool = [Snippet(w, label, p) for p in files for w in windows(texts[p], snippet_chars)]
      if not pool:
        raise ValueError(f"modules: {module!r} has no {'held-out' if split else 'training'} snippet of "
                         f"{snippet_chars} characters; choose another package or a shorter --snippet_chars")
      out += _draw(pool, count, np.random.default_rng([seed, label, split]))
  return ProbeData(modules, train, test)
