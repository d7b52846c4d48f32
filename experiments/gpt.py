"""Causal language modelling (GPT): next-token prediction, generation with a KV cache.

Train the tiny variant on the offline default corpus (Python's standard library sources and
pydoc topics, byte-level tokens) on a laptop CPU, then sample from it:

    python -m fmjax.main --config experiments/gpt.py:tiny --workdir /tmp/gpt_tiny
    python -m fmjax.generate --workdir /tmp/gpt_tiny --prompt "def " --max_new_tokens 100

Variants (`get_config(arg)`):
  tiny         0.86M params (4 layers, 128 wide), bytes, seq 128, batch 32, 600 steps.
               Laptop CPU (2 cores): 0.27-0.36 s/step, 11-15k tokens/s, about 4 min in all
               (the default corpus builds in under a second on first use).
               Measured: validation loss 5.6 -> 1.66 nats/byte at step 600 (2.40 bits per byte;
               a context-free byte model scores 3.43 nats); 2.31 at step 200. Samples are
               Python-flavoured word salad ("import ostring to suplition in the ...").
  small        ~14M params (10M without the embedding), seq 512, batch 64, SentencePiece 8k
               vocab, rotary, bf16. Target topology v5e:1x1 (one chip: 5.5 of 16 GiB by
               python -m fmjax.aot); one GPU. Not yet trained.
  gpt2         124M params (GPT-2 small), seq 1024, batch 512 as 2 micro-batches of 256 (all
               512 at once need 19.7 GiB per v5e chip, mostly the float32 logits). Target
               topology v5e:4x4, FSDP: 10.3 of 16 GiB per chip (python -m fmjax.aot). On one
               GPU: --config.train.grad_accum_steps=16. Not yet trained here; benchmark with
               benchmarks/gpu_gpt2.sh (one H100: 0.30M tokens/s at batch 16, 0.67x the
               nanoGPT-recipe peer).
  gpt2-1gpu    the same model for one GPU: no FSDP, layers unrolled, no remat, the batch of 512
               as 32 micro-batches of 16. benchmarks/gpu_throughput.sh measures it (and the
               scanned variant) against the nanoGPT-recipe peer; not yet measured.
  gpt2-medium  350M params, seq 1024, batch 512 as 4 micro-batches. Target topology v5e:4x4:
               8.9 of 16 GiB per chip. Not yet trained.

Any field can be overridden: --config.train.steps=100 --config.model.num_layers=4.
"""

import ml_collections

from fmjax import config_defaults as defaults


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  return defaults.apply_variant(base_config(), VARIANTS, arg, "experiments/gpt.py")


def base_config() -> ml_collections.ConfigDict:
  """The tiny model; the sections and their fields are described in fmjax/config_defaults.py."""
  c = defaults.run("causal_lm")
  c.data = defaults.text_data(seq_len=128)
  c.model = defaults.transformer(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512,
                                 positions="learned", tie_embeddings=True)
  c.optim = defaults.optim(learning_rate=3e-3, warmup_steps=50, b2=0.95, weight_decay=0.1)
  c.train = defaults.train(steps=600, batch_size=32, log_every=25, eval_every=200)
  c.checkpoint = defaults.checkpoint(every=200)
  c.mesh = defaults.mesh()
  c.bench = defaults.bench()
  return c


def _tiny(c):
  pass  # the base config is the tiny one


def _small(c):
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 8192
  c.data.seq_len = 512
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.embed_dim = 384
  c.model.mlp_dim = 1536
  c.model.positions = "rotary"
  c.model.dtype = "bfloat16"
  c.model.dropout = 0.0
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.train.steps = 5000
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 500
  c.checkpoint.every = 1000
  c.data.eval_batches = 16
  c.topology = "v5e:1x1"             # one chip (python -m fmjax.aot: 5.5 of 16 GiB)


def _gpt2(c, layers=12, heads=12, dim=768):
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 50304          # GPT-2's 50257 rounded up to a multiple of 128
  c.data.seq_len = 1024
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.embed_dim = dim
  c.model.mlp_dim = 4 * dim
  c.model.dtype = "bfloat16"
  c.model.scan_layers = True
  c.model.remat = "dots"
  c.optim.learning_rate = 6e-4
  c.optim.warmup_steps = 2000
  c.optim.weight_decay = 0.1
  c.train.steps = 100_000
  c.train.batch_size = 512
  c.train.log_every = 100
  c.train.eval_every = 2000
  c.checkpoint.every = 2000
  c.data.eval_batches = 20
  c.mesh.fsdp = -1                   # shard params and optimizer state across all chips
  c.mesh.data = 1
  c.topology = "v5e:4x4"
  # 2 micro-batches of 256 (16 sequences per chip): 10.3 of 16 GiB per chip (python -m fmjax.aot);
  # all 512 at once need 19.7 GiB, most of it the float32 logits over 50k tokens.
  c.train.grad_accum_steps = 2


def _gpt2_1gpu(c):
  """GPT-2 small on one GPU: no pod settings (FSDP, scan, remat) that one device does not need."""
  _gpt2(c)
  c.mesh.update(data=-1, fsdp=1)
  c.model.scan_layers = False        # unrolled: XLA schedules and fuses across layers
  c.model.remat = "none"             # 16 sequences of 1024 fit without it (18 GB peak on an H100)
  c.train.grad_accum_steps = 32      # the global batch of 512, 16 sequences at a time
  c.topology = ""                    # not a TPU config


def _gpt2_medium(c):
  _gpt2(c, layers=24, heads=16, dim=1024)
  c.optim.learning_rate = 3e-4
  c.train.grad_accum_steps = 4       # 8 sequences per chip at a time; 2 micro-batches need 16.9 GiB


VARIANTS = {"tiny": _tiny, "small": _small, "gpt2": _gpt2, "gpt2-1gpu": _gpt2_1gpu, "gpt2-medium": _gpt2_medium}
