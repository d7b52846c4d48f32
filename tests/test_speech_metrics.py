"""Edit distance, WER and CER on cases small enough to count by hand."""

import pytest

from fmjax.objectives import error_rates


@pytest.mark.parametrize("ref, hyp, expected", [
    ("kitten", "sitting", 3),          # 2 substitutions + 1 insertion
    ("abc", "abc", 0),
    ("abc", "", 3),                    # all deleted
    ("", "abc", 3),                    # all inserted
    ("", "", 0),
    ("abcd", "acd", 1),                # one deletion
    ("acd", "abcd", 1),                # one insertion
    ("flaw", "lawn", 2),
    (["the", "cat", "sat"], ["the", "bat", "sat"], 1),
    (["a", "b"], ["b", "a"], 2),
])
def test_edit_distance(ref, hyp, expected):
  assert error_rates.edit_distance(ref, hyp) == expected
  assert error_rates.edit_distance(hyp, ref) == expected


def test_normalize_transcript():
  assert error_rates.normalize_transcript("  Hello,   World!  ") == "hello world"
  assert error_rates.normalize_transcript("It's a well-known \u201cfact\u201d.") == "it's a well known fact"
  assert error_rates.normalize_transcript("Don\u2019t\tSTOP\n") == "don't stop"
  assert error_rates.normalize_transcript("...") == ""


def test_word_errors_substitution_insertion_deletion():
  assert error_rates.wer(["the cat sat"], ["the bat sat"]) == pytest.approx(1 / 3)       # substitution
  assert error_rates.wer(["the cat sat"], ["the cat sat down"]) == pytest.approx(1 / 3)  # insertion
  assert error_rates.wer(["the cat sat"], ["the sat"]) == pytest.approx(1 / 3)           # deletion
  assert error_rates.wer(["the cat sat"], [""]) == pytest.approx(1.0)                   # empty hypothesis
  assert error_rates.wer(["the cat"], ["the cat sat on a mat"]) == pytest.approx(2.0)    # can exceed 1
  assert error_rates.wer(["The cat, sat."], ["the CAT sat"]) == 0.0                      # case, punctuation


def test_character_errors_count_spaces():
  assert error_rates.cer(["ab cd"], ["ab cd"]) == 0.0
  assert error_rates.cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)    # the space is deleted
  assert error_rates.cer(["ab cd"], ["ab cx"]) == pytest.approx(1 / 5)
  assert error_rates.cer(["abc"], [""]) == pytest.approx(1.0)


def test_error_counts_and_corpus_weighting():
  refs = ["one two three four five six seven eight nine ten", "hi"]
  hyps = ["one two three four five six seven eight nine ten", "bye"]
  counts = error_rates.error_counts(refs, hyps)
  assert counts == {"word_errors": 1, "words": 11, "char_errors": 3, "chars": 50}
  # Corpus level: 1 error in 11 words, not the mean of the per-utterance rates (0 and 1).
  assert error_rates.wer(refs, hyps) == pytest.approx(1 / 11)
  assert error_rates.cer(refs, hyps) == pytest.approx(3 / 50)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="no references"):
    error_rates.wer([], [])
  with pytest.raises(ValueError, match="no references"):
    error_rates.cer([], [])
  with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
    error_rates.error_counts(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="no words"):
    error_rates.wer(["?!"], ["x"])
  assert error_rates.error_counts([], []) == {"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}
