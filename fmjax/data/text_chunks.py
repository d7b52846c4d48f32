"""Cutting long texts into records at line boundaries.

Records are the unit the pipeline shuffles. One 10 MB file as a single record would reach the
model as thousands of consecutive rows from the same document; cut into ~16k-character pieces
it is mixed with the rest of the corpus like any other text.
"""

RECORD_CHARS = 16_384


def split_at_lines(text: str, max_chars: int = RECORD_CHARS) -> list[str]:
  """Splits `text` into pieces of at most `max_chars` characters, cutting after newlines.

  Concatenating the pieces gives back `text` exactly. A single line longer than `max_chars`
  is cut mid-line (the only place a cut is not at a line end). Empty text gives no pieces.
  """
  if max_chars < 1:
    raise ValueError(f"max_chars must be >= 1, got {max_chars}")
  pieces: list[str] = []
  current: list[str] = []
  current_len = 0
  for line in text.splitlines(keepends=True):
    while len(line) > max_chars:  # an over-long line: flush, then cut it into full pieces
      if current:
        pieces.append("".join(current))
        current, current_len = [], 0
      pieces.append(line[:max_chars])
      line = line[max_chars:]
    if current_len + len(line) > max_chars:
      pieces.append("".join(current))
      current, current_len = [], 0
    if line:
      current.append(line)
      current_len += len(line)
  if current:
    pieces.append("".join(current))
  return pieces


def tail_cut(text: str, fraction: float) -> int:
  """The offset of the line start closest to `len(text) * (1 - fraction)`.

  `text[:cut]` is the training part and `text[cut:]` the held-out tail: contiguous, so no line
  is in both. Returns len(text) when fraction is 0.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"fraction must be in [0, 1), got {fraction}")
  if fraction == 0.0 or not text:
    return len(text)
  target = int(round(len(text) * (1.0 - fraction)))
  before = text.rfind("\n", 0, target)  # the newline ending the line that holds `target`
  after = text.find("\n", target)
  candidates = [p + 1 for p in (before, after) if p != -1]
  if not candidates:
    return len(text)  # a single line: nothing can be held out without cutting it
  return min(candidates, key=lambda p: abs(p - target))
