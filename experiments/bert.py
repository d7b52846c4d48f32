"""Masked language modelling (BERT): recover masked tokens from both sides; fill-mask, embeddings.

Train the tiny variant on the offline default corpus (Python's standard library sources and
pydoc topics, byte-level tokens) on a laptop CPU, then fill in masks:

    python -m fmjax.main --config experiments/bert.py:tiny --workdir /tmp/bert_tiny
    python -m fmjax.fill_mask --workdir /tmp/bert_tiny --text "def __init__([MASK]elf):" --top_k 5

Variants (`get_config(arg)`):
  tiny            0.86M params, seq 128, batch 32, 600 steps, byte tokens, rotary positions,
                  sparse prediction. CPU (2 shared cores, jax 0.10.2): 3 min 35 s (0.33 s/step;
                  add ~10 s for the one-off corpus build). Measured at step 600: held-out MLM
                  accuracy 62.0%, loss 1.47 nats (perplexity 4.4) on 4,864 masked bytes, where
                  always answering the commonest byte (space) scores 29.3% and the best
                  context-free loss is 3.39 nats; fill-mask gets 's' in "def __init__([MASK]elf):"
                  at p=0.90.
  bert-base       110M params (BERT-base: 12 x 768, 12 heads, 3072 MLP, 2 token types, 512
                  positions), SentencePiece 30522 (padded to 30592), seq 128, batch 256, 900k
                  steps, lr 1e-4, 10k warmup, dropout 0.1: BERT's phase 1. Target topology v5e:2x2
                  (data parallel: 3.75 of 16 GiB per chip, python -m fmjax.aot).
  bert-base-512   BERT's phase 2: the same model at seq 512 for 100k steps, started from the
                  phase-1 run's params (the position table has 512 rows in both phases):
                    --config.checkpoint.init_from=PHASE1_WORKDIR
                  (params only: Adam's moments and the schedule restart, with a short warmup).
                  v5e:2x2, batch 256 as 2 micro-batches of 128: 10.5 of 16 GiB per chip.
  bert-crammed    Cramming (Geiping & Goldstein 2022) on one GPU: BERT-base shapes, 16 layers,
                  seq 128, no dropout, batch 4096 as 32 micro-batches of 128, one-cycle lr
                  (linear up to 1e-3 over half the steps, linear down to 0), sparse prediction,
                  bf16. fmjax's shared blocks keep their biases and plain GELU MLPs (Cramming
                  drops biases and gates the MLP): the recipe, not the exact architecture.
                  Target topology v5e:1x1 (one chip, as Cramming's one GPU): 9.1 of 16 GiB.

Any field can be overridden: --config.train.steps=100 --config.mlm.mask_rate=0.3.
Benchmark without data: python -m fmjax.bench --config experiments/bert.py:bert-base --config.train.batch_size=64
"""

import ml_collections

from fmjax import config_defaults as defaults


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  return defaults.apply_variant(base_config(), VARIANTS, arg, "experiments/bert.py")


def base_config() -> ml_collections.ConfigDict:
  """The tiny model; the shared sections and their fields are described in
  fmjax/config_defaults.py, the MLM ones here."""
  c = defaults.run("masked_lm")
  c.data = defaults.text_data(seq_len=128)  # rows of [CLS] doc [SEP] [CLS] doc ...
  c.mlm = ml_collections.ConfigDict()
  c.mlm.mask_rate = 0.15            # fraction of each row's non-special tokens to predict
  c.mlm.mask_token_fraction = 0.8   # of those: replaced by [MASK] ...
  c.mlm.random_token_fraction = 0.1  # ... by a random token; the rest stay unchanged
  c.mlm.whole_word = False          # mask whole words (SentencePiece only: '\u2581' starts a word)
  c.mlm.sparse_predictions = False  # run the head only at the masked positions
  c.mlm.max_predictions = 0         # positions per row for the sparse head; 0 = round(rate*seq_len)
  c.model = defaults.transformer(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512,
                                 positions="learned", tie_embeddings=True)
  c.model.max_len = 0               # rows of the position table; 0 = data.seq_len
  c.model.type_vocab_size = 0       # token-type (segment A/B) embeddings; 0 = none
  c.optim = defaults.optim(learning_rate=3e-3, warmup_steps=50, b2=0.98, eps=1e-6, weight_decay=0.01)
  c.train = defaults.train(steps=600, batch_size=32, log_every=25, eval_every=200)
  c.checkpoint = defaults.checkpoint(every=200)
  c.mesh = defaults.mesh()
  c.bench = defaults.bench()
  return c


def _tiny(c):
  # Rotary: with no causal mask to infer order from, learned absolute positions took hundreds
  # of steps to be used at all here (loss stuck at unigram level for 600 steps); rotary
  # attention learns local context from the start.
  c.model.positions = "rotary"
  c.mlm.sparse_predictions = True   # the head on the 19 masked positions of 128


def _bert_base(c):
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 30522          # BERT's WordPiece size; padded to 30592 by vocab_multiple
  c.data.seq_len = 128
  c.data.eval_batches = 20
  c.mlm.sparse_predictions = True
  c.mlm.max_predictions = 20         # BERT's max_predictions_per_seq at 128
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.embed_dim = 768
  c.model.mlp_dim = 3072
  c.model.dropout = 0.1
  c.model.max_len = 512              # both phases share the position table
  c.model.type_vocab_size = 2
  c.model.dtype = "bfloat16"
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 10_000
  c.optim.decay = "linear"
  c.optim.end_lr_fraction = 0.0
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.train.steps = 900_000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.checkpoint.every = 10_000
  c.topology = "v5e:2x2"             # data parallel over 4 chips (python -m fmjax.aot: 3.5 of 16 GiB)


def _bert_base_512(c):
  _bert_base(c)
  c.data.seq_len = 512
  c.mlm.max_predictions = 80         # BERT's max_predictions_per_seq at 512
  c.optim.warmup_steps = 1_000
  c.train.steps = 100_000
  c.train.grad_accum_steps = 2       # 2 x 128 sequences: all 256 at once need 14.5 of 16 GiB per chip


def _bert_crammed(c):
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 32768
  c.data.seq_len = 128
  c.data.eval_batches = 20
  c.mlm.sparse_predictions = True
  c.model.num_layers = 16
  c.model.num_heads = 12
  c.model.embed_dim = 768
  c.model.mlp_dim = 3072
  c.model.dropout = 0.0
  c.model.dtype = "bfloat16"
  c.train.batch_size = 4096
  c.train.grad_accum_steps = 32      # micro-batches of 128 sequences
  c.train.steps = 20_000
  c.train.log_every = 50
  c.train.eval_every = 1_000
  c.checkpoint.every = 1_000
  # One cycle: linear warmup to the peak over half the budget, linear decay to 0 over the rest.
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 10_000
  c.optim.decay = "linear"
  c.optim.end_lr_fraction = 0.0
  c.optim.b2 = 0.98
  c.optim.eps = 1e-12
  c.optim.weight_decay = 0.01
  c.optim.grad_clip_norm = 0.5
  c.topology = "v5e:1x1"             # one chip, as Cramming's one GPU (python -m fmjax.aot: 9.1 of 16 GiB)


VARIANTS = {"tiny": _tiny, "bert-base": _bert_base, "bert-base-512": _bert_base_512,
            "bert-crammed": _bert_crammed}
