"""The seam between the shared trainer and a paradigm.

An objective owns what is truly different about a paradigm: its assets (a tokenizer, ...), its
model, how raw examples become batches, its loss and evaluation metrics, and its FLOP count. The
trainer (`fmjax.train`) knows nothing else: adding a paradigm is a new subclass in its own
module, registered in `fmjax.objectives`, plus a config file.
"""

import abc
from typing import Any, Mapping

import jax
from flax import nnx

Batch = Mapping[str, Any]


class Objective(abc.ABC):
  name: str = ""
  unit: str = "examples"  # what throughput counts ('tokens' for language models)

  def validate(self, config) -> None:
    """Raise ValueError naming the field for model/data settings this objective cannot use.
    Called before anything is built or compiled."""

  @abc.abstractmethod
  def prepare_assets(self, config, workdir: str | None) -> Any:
    """Build (or load) what model and data share, e.g. a tokenizer; save a copy into `workdir`
    (process 0 only) so inference can reload it from the run alone."""

  @abc.abstractmethod
  def load_assets(self, config, workdir: str) -> Any:
    """The assets a finished run saved, for inference."""

  @abc.abstractmethod
  def stand_in_assets(self, config) -> Any:
    """Assets with the right shapes but no data behind them (benchmarks, AOT compilation), so
    that measuring a config never prepares a dataset or trains a tokenizer."""

  @abc.abstractmethod
  def make_model(self, config, assets, rngs: nnx.Rngs) -> nnx.Module:
    ...

  @abc.abstractmethod
  def train_data(self, config, assets, *, process_index: int, process_count: int) -> Any:
    """A checkpointable iterator (grain) of host-local numpy batches, endless."""

  @abc.abstractmethod
  def eval_data(self, config, assets, *, process_index: int, process_count: int) -> list:
    """The fixed validation set: host-local numpy batches, the same every evaluation."""

  @abc.abstractmethod
  def synthetic_batch(self, config, assets, batch_size: int) -> dict:
    """A batch of random data with the shapes of real ones (benchmarks, AOT compilation)."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: Batch, dropout_rng: jax.Array | None) -> tuple[jax.Array, dict]:
    """(scalar loss to minimise, {name: value} metrics for logging)."""

  # Evaluation: the trainer jits `eval_outputs` once per batch structure (its outputs replicated
  # on every device), runs it over the fixed validation set, then hands every batch's outputs to
  # `finish_eval` on the host. Objectives whose metrics are sums over examples (losses,
  # accuracies) only write `eval_sums` and `eval_metrics`; those that need the whole set at once
  # (retrieval, zero-shot classification) override the pair below.
  def eval_outputs(self, model: nnx.Module, batch: Batch) -> dict:
    return self.eval_sums(model, batch)

  def finish_eval(self, outputs: list, assets: Any = None) -> dict:
    """Metrics from the host copies of every batch's `eval_outputs`, keys prefixed 'eval/'.
    A value may also be an image (np.ndarray, H x W x C uint8, e.g. a grid of samples): the
    trainer writes it to `workdir/<key>/step_N.png` and TensorBoard instead of metrics.jsonl."""
    sums = {k: float(sum(float(o[k]) for o in outputs)) for k in outputs[0]} if outputs else {}
    return self.eval_metrics(sums)

  def eval_sums(self, model: nnx.Module, batch: Batch) -> dict:
    """Additive statistics of one validation batch (sums and counts), summed over batches."""
    raise NotImplementedError(f"{type(self).__name__} defines neither eval_sums nor eval_outputs")

  def eval_metrics(self, sums: Mapping[str, float]) -> dict:
    """Final validation metrics from the summed statistics, keys prefixed 'eval/'."""
    raise NotImplementedError(f"{type(self).__name__} defines neither eval_metrics nor finish_eval")

  @abc.abstractmethod
  def units_per_example(self, config) -> int:
    ...

  @abc.abstractmethod
  def flops_per_example(self, config, assets) -> float:
    """Training FLOPs (forward + backward) per example, for MFU."""

  def param_count(self, config, assets) -> int | None:
    return None

  def ema_decay(self, config) -> float:
    """> 0: the train state also keeps an exponential moving average of the parameters with
    this decay (warmed up: see `fmjax.train.ema_decay_at`), checkpointed, and used by
    evaluation and inference. 0: none."""
    return 0.0
