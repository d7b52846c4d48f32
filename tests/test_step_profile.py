"""benchmarks/step_profile.py: a traced train step, its op time added up per named scope."""

import collections

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
