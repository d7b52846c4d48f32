"""Training on the user's own text files with a SentencePiece tokenizer, then generating."""

import random

import pytest

from conftest import small_config
from fmjax import generate, train


def write_corpus(folder, files=3, lines=400):
  rng = random.Random(0)
  words = ["river", "stone", "light", "green", "quiet", "north", "window", "garden", "paper", "cloud"]
  folder.mkdir()
  for i in range(files):
    text = "".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + ".\n" for _ in range(lines))
    (folder / f"part{i}.txt").write_text(text)


@pytest.mark.smoke
def test_files_with_sentencepiece_train_and_generate(tmp_path):
  write_corpus(tmp_path / "corpus")
  config = small_config(tmp_path, train__steps=6, data__files=str(tmp_path / "corpus" / "*.txt"),
                        data__tokenizer="sentencepiece", data__vocab_size=512)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == 6 and result["eval/tokens"] > 0
  assert (workdir / "tokenizer").is_dir()
  generator = generate.Generator.from_workdir(str(workdir))
  assert generator.tokenizer.vocab_size == 512
  texts = generator(["river ", "the garden"], max_new_tokens=10, temperature=0.0)
  assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_same_files_elsewhere_give_the_same_batches(tmp_path):
  """The stored order depends on the files, not on where they live: a run is reproducible after
  its data folder moves (or in another temporary directory)."""
  import numpy as np
  from fmjax import data as fmdata
  firsts = []
  for place in ("a", "b/deeper"):
    corpus = tmp_path / place / "corpus"
    corpus.parent.mkdir(parents=True)
    write_corpus(corpus, files=4, lines=60)
    config = small_config(tmp_path / place, data__files=str(corpus / "*.txt"))
    iterator = iter(fmdata.make_train_dataset(config, fmdata.ByteTokenizer(), process_index=0, process_count=1,
                                              packed_length=config.data.seq_len + 1))
    firsts.append([next(iterator)["tokens"] for _ in range(3)])
    iterator.close()
  for a, b in zip(*firsts):
    np.testing.assert_array_equal(a, b)
