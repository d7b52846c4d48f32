"""benchmarks/step_profile.py: a traced train step, its op time added up per named scope."""

import collections
import gzip
import json

from conftest import load_module, small_config

step_profile = load_module("benchmarks/step_profile.py", "step_profile")

HLO = """
ENTRY %main {
  %ynn_fusion.3 = f32[64,128]{1,0} fusion(%a, %b), kind=kCustom, metadata={op_name="jit(train_step)/jvp(mlp)/dot_general"}
  %fusion.7 = f32[8,4,16,16]{3,2,1,0} fusion(%c), metadata={op_name="jit(train_step)/transpose(jvp(attention))/reduce_sum"}
  ROOT %add.1 = f32[] add(%d, %e), metadata={op_name="jit(train_step)/optimizer/add"}
  %copy.2 = f32[4] copy(%f)
}
"""


def test_ops_are_attributed_to_their_named_scope():
  ops = step_profile.hlo_ops(HLO)
  assert ops["ynn_fusion.3"] == ("f32[64,128]{1,0}", "jit(train_step)/jvp(mlp)/dot_general")
  assert step_profile.part_of(ops["fusion.7"][1], "fusion.7") == "attention"
  assert step_profile.part_of(ops["add.1"][1], "add.1") == "optimizer"
  assert step_profile.part_of(ops["copy.2"][1], "copy.2") == "other: copy"
  # 'attention' must not claim the projections' scope, nor a name that merely contains it.
  assert step_profile.part_of("jit(f)/jvp(attention_projections)/dot_general", "x") == "attention_projections"
  assert step_profile.part_of("jit(f)/my_attention_thing/dot", "dot.1") == "other: dot"
  micros = collections.Counter({"ynn_fusion.3": 6000, "fusion.7": 3000, "add.1": 1000, "unknown.9": 500})
  counts = collections.Counter({"ynn_fusion.3": 2, "fusion.7": 2, "add.1": 2, "unknown.9": 2})
  parts = step_profile.breakdown(micros, counts, ops, steps=2)
  assert [(p["part"], p["ms_per_step"], p["share"], p["ops_per_step"]) for p in parts] == [
      ("mlp", 3.0, 0.6, 1.0), ("attention", 1.5, 0.3, 1.0), ("optimizer", 0.5, 0.1, 1.0)]
  assert "| mlp | 3.00 | 60.0% | 1 |" in step_profile.markdown(parts)


def test_profile_of_a_real_step_names_the_model_parts(tmp_path):
  config = small_config(tmp_path, data__segment_ids=False)
  run = step_profile.profile(config, steps=2, trace_dir=str(tmp_path / "trace"))
  micros, counts = step_profile.op_durations(str(tmp_path / "trace"))
  parts = {p["part"]: p for p in step_profile.breakdown(micros, counts, step_profile.hlo_ops(run["hlo"]), 2)}
  for scope in ("attention", "attention_projections", "mlp", "layernorm", "optimizer"):
    assert parts[scope]["ms_per_step"] > 0, sorted(parts)
  assert run["wall_ms_per_step"] > 0
  assert abs(sum(p["share"] for p in parts.values()) - 1.0) < 0.01


def _write_trace(path, events):
  path.mkdir(parents=True)
  with gzip.open(path / "perfetto_trace.json.gz", "wt") as handle:
    json.dump({"traceEvents": events}, handle)


def test_an_async_dot_counts_until_its_completion_marker(tmp_path):
  # XLA:CPU's Eigen dots: the op's own event is the dispatch, `end: <op>` marks completion.
  # Two runs of dot.5 (dispatch 0.2 ms, done 3 ms later each), a fusion with a marker of its own
  # that must keep its event's duration, and a runtime event that must be left out.
  events = [
      {"ph": "X", "name": "dot.5", "ts": 100.0, "dur": 200.0, "tid": 1},
      {"ph": "X", "name": "end: dot.5", "ts": 3090.0, "dur": 10.0, "tid": 2},
      {"ph": "X", "name": "dot.5", "ts": 5000.0, "dur": 250.0, "tid": 1},
      {"ph": "X", "name": "end: dot.5", "ts": 7999.0, "dur": 1.0, "tid": 3},
      {"ph": "X", "name": "add_fusion.2", "ts": 8000.0, "dur": 500.0, "tid": 1},
      {"ph": "X", "name": "end: add_fusion.2", "ts": 9900.0, "dur": 1.0, "tid": 1},
      {"ph": "X", "name": "ThunkExecutor::Execute", "ts": 0.0, "dur": 10000.0, "tid": 1},
  ]
  _write_trace(tmp_path / "plugins" / "profile", events)
  micros, counts = step_profile.op_durations(str(tmp_path))
  assert micros == {"dot.5": 3000.0 + 3000.0, "add_fusion.2": 500.0}
  assert counts == {"dot.5": 2, "add_fusion.2": 1}


def test_a_dot_without_a_marker_keeps_its_own_duration(tmp_path):
  _write_trace(tmp_path / "t", [{"ph": "X", "name": "dot_general.3", "ts": 10.0, "dur": 40.0, "tid": 1}])
  micros, counts = step_profile.op_durations(str(tmp_path))
  assert micros == {"dot_general.3": 40.0} and counts == {"dot_general.3": 1}
