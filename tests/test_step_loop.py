"""The step loop stays on the device: the train step compiles once, and the host reads device
values only at log, evaluation and checkpoint steps (where the loop syncs on purpose); the time
it spends waiting for input is measured."""

import json
import time

from jax._src import array as jax_array, monitoring

from conftest import small_config
from fmjax import parallel, train


class StepCounter:
  """Wraps the compiled train step: `calls` is the number of steps dispatched so far."""

  def __init__(self):
    self.calls = 0

  def wrap_jit(self, real_jit):
    counter = self

    def jit_train_step(setup, batch):
      jitted = real_jit(setup, batch)

      class Lowering:
        def __init__(self, lowered):
          self.lowered = lowered

        def compile(self):
          compiled = self.lowered.compile()

          def step(*args):
            counter.calls += 1
            return compiled(*args)
          return step

      class Jitted:
        def lower(self, *args):
          return Lowering(jitted.lower(*args))
      return Jitted()
    return jit_train_step


def test_one_compile_and_host_reads_only_at_sync_steps(tmp_path, monkeypatch):
  # log at 4, 8, 12; save at 6 and 12; evaluate at 12 (the end) only.
  config = small_config(tmp_path, train__steps=12, train__log_every=4, checkpoint__every=6, train__eval_every=0)
  counter = StepCounter()
  monkeypatch.setattr(train, "jit_train_step", counter.wrap_jit(train.jit_train_step))
  reads, compiles = [], []
  real_value = jax_array.ArrayImpl._value

  def recorded_value(self):
    reads.append(counter.calls)  # every host read of a device array goes through _value
    return real_value.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(recorded_value))
  monitoring.register_event_duration_secs_listener(
      lambda name, _secs, **_kw: compiles.append(counter.calls) if name == "/jax/core/compile/backend_compile_duration" else None)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 12 and counter.calls == 12
  during_loop = {step for step in reads if step >= 1}
  assert during_loop and during_loop <= {4, 6, 8, 12}, sorted(during_loop)
  assert {4, 6, 8} <= during_loop  # the syncs themselves are seen: the check can fail
  # After the first step, compiles happen once each: Orbax's copies of the arrays at the first
  # save (step 6) and the evaluation step at its first use (12); never at a later save or step.
  assert set(compiles) <= {0, 6, 12}, compiles
  assert compiles.count(12) <= 1, compiles


def test_time_waiting_for_input_is_reported(tmp_path, monkeypatch):
  # An input pipeline far slower than the step: nearly all of each interval is spent waiting.
  config = small_config(tmp_path, train__steps=6, train__log_every=3, checkpoint__every=6)
  real_global_batch = parallel.global_batch

  def slow_global_batch(batch, mesh):
    time.sleep(0.25)
    return real_global_batch(batch, mesh)

  monkeypatch.setattr(parallel, "global_batch", slow_global_batch)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  fractions = [r["perf/data_wait_fraction"] for r in rows if "perf/data_wait_fraction" in r]
  assert len(fractions) == 2, rows
  # 0.25 s a batch against a step of a few milliseconds (the first interval starts after the
  # compile, so it counts two waits, the second three).
  assert all(0.7 < f <= 1.0 for f in fractions), fractions
