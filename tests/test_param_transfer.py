"""Seeding part of a model from another run (config.checkpoint.init_subtrees)."""

import jax
import numpy as np
import pytest

from conftest import small_config
from fmjax import param_transfer, train
from test_checkpoint import final_params


def test_parse_mapping():
  assert param_transfer.parse_mapping("") == []
  assert param_transfer.parse_mapping("encoder, a/b=c/d") == [("encoder", "encoder"), ("a/b", "c/d")]
  with pytest.raises(ValueError, match="init_subtrees"):
    param_transfer.parse_mapping("=x")


def test_transfer_copies_only_the_named_subtree():
  source = {"encoder": {"w": np.ones((2, 3)), "b": np.ones((3,))}, "head": np.ones((4,))}
  dest = {"encoder": {"w": np.zeros((2, 3)), "b": np.zeros((3,))}, "head": np.zeros((4,)), "decoder": np.zeros(1)}
  params, copied = param_transfer.transfer(source, dest, [("encoder", "encoder")])
  assert sorted(copied) == ["encoder/b", "encoder/w"]
  np.testing.assert_array_equal(params["encoder"]["w"], 1.0)
  np.testing.assert_array_equal(params["head"], 0.0)      # not named: left as initialised
  np.testing.assert_array_equal(dest["encoder"]["w"], 0.0)  # the input is not modified


def test_transfer_names_the_mismatched_parameter():
  source = {"encoder": {"w": np.ones((2, 3))}}
  with pytest.raises(ValueError, match=r"encoder/w has shape \(2, 4\) here but \(2, 3\)"):
    param_transfer.transfer(source, {"encoder": {"w": np.zeros((2, 4))}}, [("encoder", "encoder")])
  with pytest.raises(ValueError, match="trees differ"):
    param_transfer.transfer(source, {"encoder": {"v": np.zeros((2, 3))}}, [("encoder", "encoder")])
  with pytest.raises(KeyError, match="no 'decoder'"):
    param_transfer.transfer(source, {"encoder": {"w": np.zeros((2, 3))}}, [("decoder", "encoder")])


def test_training_run_seeds_only_the_named_part(tmp_path):
  """A GPT with a wider MLP takes the source run's embedding and nothing else."""
  source = str(tmp_path / "source")
  train.train_and_evaluate(small_config(tmp_path, train__steps=2), source)
  config = small_config(tmp_path, train__steps=1, optim__learning_rate=1e-12, optim__warmup_steps=0,
                        model__mlp_dim=256, checkpoint__init_from=source, checkpoint__init_subtrees="embed")
  target = str(tmp_path / "target")
  train.train_and_evaluate(config, target)
  p_source, _ = final_params(small_config(tmp_path), source)
  p_target, _ = final_params(config, target)
  np.testing.assert_allclose(p_target["embed"], p_source["embed"], atol=1e-6)
  assert p_target["stack"]["layers"][0]["mlp"]["fc"].shape[-1] == 256

  config.checkpoint.init_subtrees = "stack"
  with pytest.raises(ValueError, match="has shape"):
    train.train_and_evaluate(config, str(tmp_path / "target2"))
