"""Text generation from a causal LM run, with a KV cache.

    python -m fmjax.generate --workdir DIR --prompt "def " [--prompt "class "] \\
        [--max_new_tokens 200] [--temperature 0.8] [--top_k 40] [--top_p 0.95] [--seed 0]

Without --prompt (or with --prompt ""), text is generated from the start of a document. Without
--max_new_tokens, each prompt is continued as far as the model's context allows (learned
positions), or by 256 tokens (rotary positions, which have no last slot). A request the run
cannot serve (no causal_lm run in DIR, a setting out of range, a prompt too long for the
context) is one `error: ...` line and exit status 2, before the model is loaded.

Python:
    generator = Generator.from_workdir(DIR)
    generator(["def ", "import "], max_new_tokens=50, temperature=0)   # -> list of strings
"""

from typing import Sequence

from absl import flags

from fmjax import argument_checks, cli_errors, inference, sampling

UNBOUNDED_NEW_TOKENS = 256  # the default length where positions have no end (rotary)


def prompt_ids(tokenizer, text: str) -> list[int]:
  return [tokenizer.bos_id] + tokenizer.encode(argument_checks.text(text, "prompt")).tolist()


def context_limit(config) -> int | None:
  """Tokens a sequence may hold: learned positions end at seq_len, rotary ones nowhere."""
  return int(config.data.seq_len) if config.model.positions == "learned" else None


def default_new_tokens(run: inference.RunFiles, prompts: Sequence[str]) -> int:
  """New tokens that fit after the longest prompt; at least 1, so that a prompt which fills the
  context is reported by check_request as too long rather than given nothing to do."""
  limit = context_limit(run.config)
  if limit is None or not prompts:
    return UNBOUNDED_NEW_TOKENS
  return max(limit - max(len(prompt_ids(run.assets, p)) for p in prompts), 1)


def check_request(run: inference.RunFiles, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
                  top_k: int, top_p: float, seed: int) -> None:
  """ValueError for a request this run cannot serve. Reads no parameters: works on the files of
  a run (inference.open_run) as on a loaded one."""
  if not prompts:
    raise ValueError("no prompts: give at least one (an empty prompt generates from the start of a document)")
  tokenizer = run.assets
  sampling.check_settings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed, vocab_limit=tokenizer.vocab_size,
                          prompt_lengths=[len(prompt_ids(tokenizer, p)) for p in prompts],
                          max_len=context_limit(run.config))


class Generator:
  def __init__(self, run: inference.LoadedRun):
    self.run = run
    self.tokenizer = run.assets

  @classmethod
  def from_workdir(cls, workdir: str) -> "Generator":
    return cls(inference.load_run(workdir, expect_objective="causal_lm"))

  def generate_ids(self, prompts: Sequence[str], **kwargs) -> list[list[int]]:
    tok = self.tokenizer
    return sampling.generate_ids(self.run.model, [prompt_ids(tok, p) for p in prompts],
                                 eos_id=tok.eos_id, pad_id=tok.pad_id, vocab_limit=tok.vocab_size,
                                 max_len=context_limit(self.run.config), **kwargs)

  def __call__(self, prompts: Sequence[str], *, max_new_tokens: int = 100, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """The continuation of each prompt (without the prompt), up to the end-of-text token.
    Settings out of range are a ValueError naming the setting."""
    ids = self.generate_ids(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=seed)
    return [self.tokenizer.decode(row) for row in ids]


FLAGS = flags.FLAGS


def define_flags():
  # Defined when run as a program (cli_errors.run), so that importing several entry points
  # (tests, notebooks) does not define the same flag twice.
  flags.DEFINE_string("workdir", None, "workdir of a causal_lm training run")
  flags.DEFINE_multi_string("prompt", [""], "prompt text; repeat the flag for a batch of prompts "
                            "(empty, the default: generate from the start of a document)")
  flags.DEFINE_integer("max_new_tokens", None, "tokens to generate per prompt, an integer >= 1 (unset: as many as "
                       f"fit in the model's context, or {UNBOUNDED_NEW_TOKENS} with rotary positions)")
  flags.DEFINE_float("temperature", 0.8, "sampling temperature, a finite number >= 0 (0: greedy, deterministic)")
  flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens, 0 <= k <= the vocabulary (0: all)")
  flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass, in (0, 1] (1: off)")
  flags.DEFINE_integer("seed", 0, f"sampling seed, an integer in [0, {argument_checks.SEED_LIMIT - 1}]")


def main(argv):
  del argv
  cli_errors.require(workdir=FLAGS.workdir)
  files = inference.open_run(FLAGS.workdir, expect_objective="causal_lm")
  settings = dict(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  max_new = FLAGS.max_new_tokens
  if max_new is None:
    max_new = default_new_tokens(files, FLAGS.prompt)
  check_request(files, FLAGS.prompt, max_new_tokens=max_new, **settings)
  generator = Generator(inference.restore(files))
  texts = generator(FLAGS.prompt, max_new_tokens=max_new, **settings)
  print(f"# {FLAGS.workdir} at step {generator.run.step}")
  for prompt, text in zip(FLAGS.prompt, texts):
    print(f"--- prompt: {prompt!r}")
    print(prompt + text)


if __name__ == "__main__":
  cli_errors.run(main, define_flags)
