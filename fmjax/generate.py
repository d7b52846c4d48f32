"""Text generation from a causal LM run, with a KV cache.

    python -m fmjax.generate --workdir DIR --prompt "def " [--prompt "class "] \
        [--max_new_tokens 200] [--temperature 0.8] [--top_k 40] [--top_p 0.95] [--seed 0]

Python:
    generator = Generator.from_workdir(DIR)
    generator(["def ", "import "], max_new_tokens=50, temperature=0)   # -> list of strings
"""

import sys
from typing import Sequence

from absl import app, flags, logging

from fmjax import inference, sampling


class Generator:
  def __init__(self, run: inference.LoadedRun):
    self.run = run
    self.tokenizer = run.assets

  @classmethod
  def from_workdir(cls, workdir: str) -> "Generator":
    return cls(inference.load_run(workdir, expect_objective="causal_lm"))

  def encode_prompt(self, text: str) -> list[int]:
    return [self.tokenizer.bos_id] + self.tokenizer.encode(text).tolist()

  def generate_ids(self, prompts: Sequence[str], **kwargs) -> list[list[int]]:
    tok = self.tokenizer
    cfg = self.run.config
    max_len = cfg.data.seq_len if cfg.model.positions == "learned" else None
    return sampling.generate_ids(self.run.model, [self.encode_prompt(p) for p in prompts],
                                 eos_id=tok.eos_id, pad_id=tok.pad_id, vocab_limit=tok.vocab_size,
                                 max_len=max_len, **kwargs)

  def context_left(self, prompts: Sequence[str]) -> int:
    """New tokens that fit after the longest prompt (learned positions end at seq_len)."""
    cfg = self.run.config
    if cfg.model.positions != "learned":
      return 256
    return max(cfg.data.seq_len - max(len(self.encode_prompt(p)) for p in prompts), 1)

  def __call__(self, prompts: Sequence[str], *, max_new_tokens: int = 100, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """The continuation of each prompt (without the prompt), up to the end-of-text token."""
    ids = self.generate_ids(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=seed)
    return [self.tokenizer.decode(row) for row in ids]


FLAGS = flags.FLAGS


def define_flags():
  # Flags are defined only when run as a program, so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  flags.DEFINE_string("workdir", None, "workdir of a causal_lm training run")
  flags.DEFINE_multi_string("prompt", [""], "prompt text; repeat the flag for a batch of prompts")
  flags.DEFINE_integer("max_new_tokens", -1, "tokens to generate per prompt (-1: up to the model's context)")
  flags.DEFINE_float("temperature", 0.8, "0 is greedy and deterministic")
  flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens (0: all)")
  flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1: off)")
  flags.DEFINE_integer("seed", 0, "sampling seed")


def main(argv):
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, tfds) drown the progress lines
  del argv
  if not FLAGS.workdir:
    print("error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  try:
    generator = Generator.from_workdir(FLAGS.workdir)
    max_new = FLAGS.max_new_tokens if FLAGS.max_new_tokens > 0 else generator.context_left(FLAGS.prompt)
    texts = generator(FLAGS.prompt, max_new_tokens=max_new, temperature=FLAGS.temperature,
                      top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"# {FLAGS.workdir} at step {generator.run.step}")
  for prompt, text in zip(FLAGS.prompt, texts):
    print(f"--- prompt: {prompt!r}")
    print(prompt + text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
