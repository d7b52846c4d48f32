"""Ablating the objective: one transformer stack, the same text, causal LM or masked LM.

Each pair of variants trains the same stack (depth, width, heads, MLP, rotary positions, dropout,
dtype) on the same data (the offline default corpus, byte tokens, the same sequence length and
packing) with the same batch, step budget, optimizer and learning-rate schedule; only the
objective changes. Then a linear probe on the frozen encoders compares what each learned:

    python -m fmjax.main --config experiments/ablate.py:tiny-causal --workdir /tmp/ablate_causal
    python -m fmjax.main --config experiments/ablate.py:tiny-masked --workdir /tmp/ablate_masked
    python -m fmjax.probe --workdir /tmp/ablate_causal --task stdlib-module
    python -m fmjax.probe --workdir /tmp/ablate_masked --task stdlib-module
    python -m fmjax.probe --workdir /tmp/ablate_masked --task stdlib-module --random_init  # untrained

The fields in which the two configs of a pair differ, all of them (tests/test_probe.py flattens
both configs and checks this list):
  objective              'causal_lm' or 'masked_lm': the experiment itself.
  variant                the variant's name, which every config records.
  mlm.*                  masked_lm only (mask_rate 0.15, mask_token_fraction 0.8,
                         random_token_fraction 0.1, whole_word False, sparse_predictions True,
                         max_predictions 0): BERT's masking recipe, which the masked objective
                         cannot run without. sparse_predictions only says where the head runs
                         (at the masked slots, not every slot); it changes no loss value.
  model.max_len          masked_lm only, 0 = data.seq_len rows of position table, which rotary
                         positions do not use: GPT's table size, stated for BERT's model builder.
  model.type_vocab_size  masked_lm only, 0 = no token-type embeddings: as GPT, which has none.

What the two objectives build around that stack differs, by their nature:
  causal_lm  fmjax/models/gpt.py: token embeddings -> the stack under a causal (per-document)
             mask -> final LayerNorm -> the tied embedding table as the output head. Packs rows
             of seq_len + 1 tokens (inputs and their next-token targets: 128 inputs a row, as
             the masked model sees). Loss on every next token.
  masked_lm  fmjax/models/bert.py: token embeddings -> a LayerNorm on them (2 x 128 params) ->
             the same stack with bidirectional (per-document) attention -> final LayerNorm ->
             BERT's MLM head (dense 128x128 + GELU + LayerNorm, then the tied table + an output
             bias: 17k params). Loss on the 15% masked bytes only (about 19 of 128 a row).
The probe reads the final LayerNorm's output in both (before either head), so it compares the
same place in the same stack. Both use rotary positions: with no causal mask to order the
tokens, learned absolute positions kept the masked model at the unigram loss for a whole
600-step CPU run (experiments/bert.py), and the causal model does better with them too:
tiny-causal is experiments/gpt.py:tiny with rotary instead of learned positions (nothing else
differs) and reaches 1.44 nats/byte where gpt.py:tiny reaches 1.66. The optimizer is gpt.py's
for both (fmjax's default AdamW: b2 0.95, eps 1e-8, weight decay 0.1), not bert.py's tuned one
(b2 0.98, eps 1e-6, weight decay 0.01), so that it is not a difference either.

Variants (`get_config(arg)`):
  tiny-causal / tiny-masked   0.84M / 0.86M params (4 layers x 128, 4 heads, MLP 512), byte
                              tokens, seq 128, batch 32, 600 steps, lr 3e-3 (50 warmup, cosine
                              to 10%). CPU (2 cores, jax 0.10.2): about 4 min each. tiny-masked:
                              0.32 s/step, 4 min 51 s in all; tiny-causal: 11 min 28 s with the
                              cores shared by another job, but 4 min 42 s of CPU time against
                              tiny-masked's 4 min 26 s, so about the same alone.
                              Measured at step 600: causal held-out loss 1.444 nats/byte (2.08
                              bits/byte); masked 62.9% of held-out masked bytes right (loss 1.445).
                              Probe (fmjax.probe defaults: 8 packages, 300 training snippets of
                              120 characters per package, 400 held-out ones in all from other
                              files, final layer, mean pooling), held-out accuracy for snippet draws --seed
                              0/1/2/3:
                                causal_lm  0.350 0.340 0.378 0.345   mean 0.353
                                masked_lm  0.318 0.353 0.355 0.340   mean 0.341
                                untrained (--random_init), causal 0.311, masked 0.318 (means)
                                majority 0.125 (balanced classes)
                              Both objectives beat their untrained architecture by a few points
                              and are within noise of each other (one draw's standard error is
                              about 0.024). At --layer 0 (the embeddings, mean-pooled: a bag of
                              bytes) the probe scores 0.31/0.32 (causal), 0.30/0.31 (masked) for
                              seeds 0/1; the causal model's layer 2 0.365/0.348, its best. For
                              scale, a tf-idf logistic regression on character 2-4-grams of the
                              same snippets scores 0.57-0.61: these 128-wide models, 600 steps
                              in, read a snippet's package little better than a bag of bytes
                              does. A probe run takes ~20 s on 2 cores (2,800 snippets through
                              the model ~15 s, the fit 0.2 s).
  base-causal / base-masked   85.4M / 85.9M params: a BERT-base-sized stack (12 layers x 768,
                              12 heads, MLP 3072, dropout 0.1) on byte tokens (so the probe's
                              snippets are the same tokens as for tiny; BERT-base's 110M
                              include 23M of embeddings for its 30k-word vocabulary), seq 512, batch 128 as 2
                              micro-batches of 64, 20k steps, lr 6e-4 (1,000 warmup, cosine), bf16,
                              layers scanned. Target topology v5e:2x2 (data parallel: 12.3 of 16
                              GiB per chip for either, python -m fmjax.aot); one GPU. The default
                              corpus (11.8 MB) is then seen ~110 times: for a fairer test of
                              either objective, pretrain both on more text
                              (--config.data.dataset=<a prepared tfds text dataset>, the same
                              for both). Not yet trained. Probe with --snippet_chars 500.

Any field can be overridden, on both variants alike: --config.train.steps=100.
"""

import ml_collections

from fmjax import config_defaults as defaults


def get_config(arg: str = "tiny-causal") -> ml_collections.ConfigDict:
  return defaults.apply_variant(base_config(), VARIANTS, arg, "experiments/ablate.py")


def base_config() -> ml_collections.ConfigDict:
  """What every variant shares; the objective and its own fields are set by the variant."""
  c = defaults.run("")
  c.data = defaults.text_data(seq_len=128)
  c.model = defaults.transformer(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512,
                                 positions="rotary", tie_embeddings=True)
  c.optim = defaults.optim(learning_rate=3e-3, warmup_steps=50)
  c.train = defaults.train(steps=600, batch_size=32, log_every=25, eval_every=200)
  c.checkpoint = defaults.checkpoint(every=200)
  c.mesh = defaults.mesh()
  c.bench = defaults.bench()
  return c


def _causal(c):
  c.objective = "causal_lm"


def _masked(c):
  c.objective = "masked_lm"
  c.mlm = ml_collections.ConfigDict()
  c.mlm.mask_rate = 0.15
  c.mlm.mask_token_fraction = 0.8
  c.mlm.random_token_fraction = 0.1
  c.mlm.whole_word = False
  c.mlm.sparse_predictions = True   # the head at the masked slots only: the same loss, less compute
  c.mlm.max_predictions = 0         # round(mask_rate * seq_len)
  c.model.max_len = 0               # = data.seq_len (unused by rotary positions)
  c.model.type_vocab_size = 0       # no token types, as GPT


def _base(c):
  c.data.seq_len = 512
  c.data.eval_batches = 16
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.embed_dim = 768
  c.model.mlp_dim = 3072
  c.model.dropout = 0.1
  c.model.dtype = "bfloat16"
  c.model.scan_layers = True
  c.optim.learning_rate = 6e-4
  c.optim.warmup_steps = 1_000
  c.train.steps = 20_000
  c.train.batch_size = 128
  c.train.grad_accum_steps = 2       # 2 x 64 sequences: all 128 at once need 20.7 GiB per v5e chip
  c.train.log_every = 100
  c.train.eval_every = 2_000
  c.checkpoint.every = 2_000
  c.topology = "v5e:2x2"             # data parallel over 4 chips (python -m fmjax.aot)


def _tiny_causal(c):
  _causal(c)


def _tiny_masked(c):
  _masked(c)


def _base_causal(c):
  _base(c)
  _causal(c)


def _base_masked(c):
  _base(c)
  _masked(c)


VARIANTS = {"tiny-causal": _tiny_causal, "tiny-masked": _tiny_masked,
            "base-causal": _base_causal, "base-masked": _base_masked}

# The dotted fields (a trailing '.' names a section) in which a pair of variants may differ; the
# docstring explains each.
OBJECTIVE_FIELDS = ("objective", "variant", "mlm.", "model.max_len", "model.type_vocab_size")
