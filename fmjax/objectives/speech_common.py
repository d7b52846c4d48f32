"""What the two speech objectives share: assets, data, synthetic batches, FLOP counting.

Both read the same (audio, transcript) sources through `fmjax.data.speech` and turn waveforms
into log-mel frames on the device (`speech_features`). They differ in the model and the loss:
`speech_masked` (BEST-RQ: predict the codes of masked frames, no text needed) and
`speech_seq2seq` (Whisper-style: transcribe, teacher forced).

The settings of the task itself (features, masking, decoding) travel with the model as a frozen
dataclass attribute `task`, so the pure `loss(model, batch, rng)` the trainer calls needs
nothing else.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax import jaxpr_flops
from fmjax.data import speech as speech_data
from fmjax.objectives import text_assets
from fmjax.objectives.base import Objective

SAMPLE_RATE = 16_000


@dataclasses.dataclass
class SpeechAssets:
  tokenizer: Any = None                     # transcription only
  eval_transcripts: tuple[str, ...] = ()    # the held-out references, in eval-set order


def window_samples(config) -> int:
  """Samples in the window every utterance is padded to (the data layer's own count)."""
  return speech_data.window_samples(config.data)


class SpeechObjective(Objective):
  unit = "examples"           # utterances
  needs_text = False

  # ---- assets ------------------------------------------------------------------------------
  def prepare_assets(self, config, workdir):
    tokenizer = None
    if self.needs_text:
      tokenizer = text_assets.prepare_tokenizer(config, workdir, sample_texts=speech_data.training_texts,
                                                describe_dataset=speech_data.describe_dataset)
    references = tuple(speech_data.eval_transcripts(config)) if self.needs_text else ()
    return SpeechAssets(tokenizer, references)

  def load_assets(self, config, workdir):
    return SpeechAssets(text_assets.load_tokenizer(workdir) if self.needs_text else None)

  def stand_in_assets(self, config):
    return SpeechAssets(text_assets.stand_in_tokenizer(config.data) if self.needs_text else None)

  # ---- data ------------------------------------------------------------------------------
  def train_data(self, config, assets, *, process_index, process_count):
    return speech_data.make_train_dataset(config, assets.tokenizer, process_index=process_index,
                                          process_count=process_count)

  def eval_data(self, config, assets, *, process_index, process_count):
    return speech_data.make_eval_batches(config, assets.tokenizer, process_index=process_index,
                                         process_count=process_count)

  def synthetic_batch(self, config, assets, batch_size):
    rng = np.random.default_rng(0)
    n = window_samples(config)
    batch = {"audio": (0.1 * rng.standard_normal((batch_size, n))).astype(np.float32),
             "audio_lengths": np.full((batch_size,), n, np.int32)}
    if self.needs_text:
      length = int(config.data.text_len)
      tokens = rng.integers(5, assets.tokenizer.vocab_size, (batch_size, length)).astype(np.int32)
      tokens[:, 0], tokens[:, -1] = assets.tokenizer.bos_id, assets.tokenizer.eos_id
      batch["text_tokens"] = tokens
    return batch

  # ---- accounting ------------------------------------------------------------------------
  def units_per_example(self, config):
    return 1

  def forward(self, model, batch):
    """The model's forward pass on a batch, for FLOP counting."""
    raise NotImplementedError

  def flops_per_example(self, config, assets):
    """3 x the forward pass's matmul and convolution FLOPs for one example, counted on the
    traced program (float32, where attention takes the XLA path whose matmuls the count sees)."""
    config = config.copy_and_resolve_references()
    for section in ("encoder", "decoder"):
      if section in config.model:
        config.model[section].dtype = "float32"
    with nnx.use_eager_sharding(False):
      graphdef, state = nnx.split(nnx.eval_shape(lambda: self.make_model(config, assets, nnx.Rngs(0))))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.synthetic_batch(config, assets, 1))
    jaxpr = jax.make_jaxpr(lambda s, b: self.forward(nnx.merge(graphdef, s), b))(state, batch)
    return 3.0 * jaxpr_flops.matmul_flops(jaxpr)

  def param_count(self, config, assets):
    with nnx.use_eager_sharding(False):
      state = nnx.state(nnx.eval_shape(lambda: self.make_model(config, assets, nnx.Rngs(0))), nnx.Param)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def split_rng(rng: Optional[jax.Array], count: int, fixed_seed: int) -> tuple[list, bool]:
  """`count` keys from the step's rng, or from a fixed key when there is none (deterministic
  checks); the flag says whether the rng was the step's (training noise such as dropout and
  SpecAugment only then)."""
  training = rng is not None
  keys = jax.random.split(rng if training else jax.random.PRNGKey(fixed_seed), count)
  return list(keys), training


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  weights = weights.astype(jnp.float32)
  return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)
