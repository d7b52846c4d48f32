"""The user's folders of files, and the files that pair a relative path with a text (image
captions, audio transcripts).

One line per pair, either TSV (`rel/path<TAB>text`; the text may itself hold tabs) or JSONL
(`{"<path field>": "rel/path", "<text field>": "..."}`). The format comes from the suffix, else
from the first non-blank line. A TSV header row is skipped. Every malformed line is a
ValueError naming file:line and the expected form, so a user's mistake is found before
anything is built.
"""

import dataclasses
import json
import os

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TSV_SUFFIXES = (".tsv", ".txt")


@dataclasses.dataclass(frozen=True)
class Fields:
  """How one kind of pair file names its two columns."""
  path: str                      # the JSONL key of the path ("image", "audio")
  text: str                      # the JSONL key of the text ("caption", "text")
  example_path: str              # for messages: "rel/path.png"
  path_headers: tuple[str, ...]  # TSV header names of the path column (lower case)
  text_headers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Row:
  where: str  # "file:line"
  path: str   # stripped, as written
  text: str   # stripped


def absolute(path: str) -> str:
  """A user's path as given in the config (`~` expanded), made absolute."""
  return os.path.abspath(os.path.expanduser(path))


def files_under(folder: str, suffixes: tuple[str, ...]) -> list[str]:
  """Every file under `folder` whose name ends in one of `suffixes` (any case; hidden files
  left out), as sorted paths relative to it: the same list on every machine."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.relpath(os.path.join(root, f), folder) for f in files
              if f.lower().endswith(suffixes) and not f.startswith(".")]
  return sorted(found)


def format_of(path: str, first_line: str) -> str:
  suffix = os.path.splitext(path)[1].lower()
  if suffix in JSONL_SUFFIXES:
    return "jsonl"
  if suffix in TSV_SUFFIXES:
    return "tsv"
  return "jsonl" if first_line.lstrip().startswith("{") else "tsv"


def _parse_jsonl(line: str, where: str, fields: Fields) -> tuple[str, str]:
  expected = f'{{"{fields.path}": "{fields.example_path}", "{fields.text}": "..."}}'
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e.msg}); expected {expected}") from None
  if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in (fields.path, fields.text)):
    raise ValueError(f'{where}: expected an object with string fields "{fields.path}" and "{fields.text}", '
                     f"got {line.strip()[:120]!r}")
  return record[fields.path], record[fields.text]


def _parse_tsv(line: str, where: str, fields: Fields) -> tuple[str, str]:
  if "\t" not in line:
    raise ValueError(f"{where}: expected '{fields.example_path}<TAB>{fields.text}' (no tab in {line.strip()[:120]!r})")
  path, text = line.split("\t", 1)
  return path, text


def read_rows(pairs_file: str, fields: Fields) -> list[Row]:
  """Every non-blank line of the file, in order, stripped (a UTF-8 BOM is not part of line 1)."""
  try:
    with open(pairs_file, "rb") as handle:
      raw = handle.read()
  except OSError as e:
    raise ValueError(f"{pairs_file!r}: cannot read ({e.strerror})") from None
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{pairs_file}: not UTF-8 text (byte {e.start})") from None
  lines = text.splitlines()
  fmt = format_of(pairs_file, next((line for line in lines if line.strip()), ""))
  parse = _parse_jsonl if fmt == "jsonl" else _parse_tsv
  rows = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    path, value = parse(line, f"{pairs_file}:{number}", fields)
    path, value = path.strip(), value.strip()
    if fmt == "tsv" and not rows and path.lower() in fields.path_headers and value.lower() in fields.text_headers:
      continue  # a header row
    rows.append(Row(where=f"{pairs_file}:{number}", path=path, text=value))
  return rows
