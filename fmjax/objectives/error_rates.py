"""Word and character error rates of transcripts, on the host (plain Python).

Both sides are normalised first, the same way: lowercase, punctuation and symbols replaced by a
space (so "well-known" is two words, as a transcriber that drops the hyphen would write it),
apostrophes kept (they change words: "its" / "it's"; the typographic ’ counts as one), and runs
of whitespace collapsed. Without it a model would be charged for casing and commas that the
references spell inconsistently.

Rates are corpus-level: total edits over total reference length (words for WER; characters of
the normalised reference, spaces included, for CER), so a long utterance weighs more than a
short one, as in the usual scoring tools. Averaging per-utterance rates instead would let a
one-word reference count as much as a paragraph. A rate can exceed 1 (many insertions).
"""

import unicodedata
from typing import Dict, Sequence

APOSTROPHES = ("'", "\u2019")


def normalize_transcript(text: str) -> str:
  """Lowercase, punctuation and symbols -> space (apostrophes kept), whitespace collapsed."""
  chars = []
  for ch in str(text).lower():
    if ch in APOSTROPHES:
      chars.append("'")
    elif unicodedata.category(ch)[0] in "PS":
      chars.append(" ")
    else:
      chars.append(ch)
  return " ".join("".join(chars).split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
  """Levenshtein distance (unit-cost substitutions, insertions, deletions) between two sequences
  of comparable items (characters of strings, or words of lists), in O(min(len)) memory."""
  ref, hyp = list(ref), list(hyp)
  if len(hyp) > len(ref):  # distance is symmetric: keep the shorter one as the row
    ref, hyp = hyp, ref
  previous = list(range(len(hyp) + 1))  # distances from an empty ref prefix
  for i, r in enumerate(ref, start=1):
    current = [i]
    for j, h in enumerate(hyp, start=1):
      current.append(min(previous[j] + 1,                # r deleted
                         current[j - 1] + 1,             # h inserted
                         previous[j - 1] + (r != h)))    # match or substitution
    previous = current
  return previous[-1]


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> Dict[str, int]:
  """{'word_errors', 'words', 'char_errors', 'chars'} summed over (reference, hypothesis) pairs
  after normalising both; sums from several batches or hosts add up to the corpus counts."""
  if len(refs) != len(hyps):
    raise ValueError(f"error_counts: {len(refs)} references but {len(hyps)} hypotheses: must pair up one to one")
  counts = {"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}
  for ref, hyp in zip(refs, hyps):
    ref, hyp = normalize_transcript(ref), normalize_transcript(hyp)
    ref_words, hyp_words = ref.split(), hyp.split()
    counts["word_errors"] += edit_distance(ref_words, hyp_words)
    counts["words"] += len(ref_words)
    counts["char_errors"] += edit_distance(ref, hyp)
    counts["chars"] += len(ref)
  return counts


def _rate(refs, hyps, errors: str, total: str, what: str) -> float:
  if len(refs) == 0:
    raise ValueError(f"{what}: no references given: need at least one (reference, hypothesis) pair")
  counts = error_counts(refs, hyps)
  if counts[total] == 0:
    raise ValueError(f"{what}: the references have no {total} after normalisation: the rate is undefined")
  return counts[errors] / counts[total]


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
  """Corpus word error rate: word edits over reference words."""
  return _rate(refs, hyps, "word_errors", "words", "wer")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
  """Corpus character error rate: character edits over reference characters (spaces included)."""
  return _rate(refs, hyps, "char_errors", "chars", "cer")
