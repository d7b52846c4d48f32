"""Masked language modelling (BERT): masking, loss, model, sharding, resume, learning, fill-mask."""

import json
import os
import random
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, load_config, loss_and_grads
from fmjax import bench, checkpointing, config_checks, fill_mask, objectives, parallel, train
from fmjax import data as fmdata
from fmjax.data import sentencepiece_training
from fmjax.objectives import masked_lm, mlm_masking

TOK = fmdata.ByteTokenizer()
OBJ = objectives.get("masked_lm")


def small_config(data_dir=None, **mesh):
  """The tiny BERT config shrunk for fast tests."""
  c = load_config("bert", "tiny")
  c.model.num_layers = 2
  c.model.embed_dim = 64
  c.model.mlp_dim = 128
  c.data.seq_len = 32
  c.data.eval_batches = 2
  c.train.batch_size = 8
  c.train.log_every = 1
  c.train.eval_every = 0
  c.optim.warmup_steps = 2
  if data_dir is not None:
    c.data.data_dir = str(data_dir)
  for k, v in mesh.items():
    c.mesh[k] = v
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One copy of the default corpus for the tests of this module (built once, ~10 s)."""
  return tmp_path_factory.mktemp("bert_data")


def masking(mask_rate=0.15, max_predictions=0, **kwargs):
  return mlm_masking.MlmMasking(special_ids=TOK.special_ids, mask_id=TOK.mask_id,
                                random_ids=mlm_masking.random_token_ids(TOK), mask_rate=mask_rate,
                                max_predictions=max_predictions, **kwargs)


def packed_row(rng, length=128, docs=3, pad=10):
  """A row like the pipeline's: [CLS] doc [SEP] per document, segment ids 1.., padding at the end."""
  tokens, segments = [], []
  bounds = np.sort(rng.choice(np.arange(3, length - pad - 3), docs - 1, replace=False))
  for s, (a, b) in enumerate(zip([0, *bounds], [*bounds, length - pad]), 1):
    doc = rng.integers(5, 261, b - a)
    doc[0], doc[-1] = TOK.bos_id, TOK.eos_id
    tokens.append(doc)
    segments.append(np.full(b - a, s))
  tokens = np.concatenate([*tokens, np.zeros(pad, int)]).astype(np.int32)
  segments = np.concatenate([*segments, np.zeros(pad, int)]).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segments, "positions": np.zeros(length, np.int32)}


# ---- masking ---------------------------------------------------------------------------------

@pytest.mark.smoke
def test_exact_mask_count_and_specials_never_masked():
  rng = np.random.default_rng(0)
  for mask_rate in (0.15, 0.4):
    transform = masking(mask_rate)
    for _ in range(200):
      row = packed_row(rng, pad=int(rng.integers(0, 20)))
      out = transform.random_map(row, rng)
      maskable = (row["segment_ids"] > 0) & (row["tokens"] > 4)
      assert out["weights"].sum() == int(np.floor(mask_rate * maskable.sum() + 0.5))
      assert not out["weights"][~maskable].any(), "specials and padding are never selected"
      np.testing.assert_array_equal(out["inputs"][~maskable], row["tokens"][~maskable])
      np.testing.assert_array_equal(out["targets"], row["tokens"])
      # Only selected positions are ever changed.
      np.testing.assert_array_equal(out["inputs"][out["weights"] == 0], row["tokens"][out["weights"] == 0])
  assert mlm_masking.num_to_mask(10, 0.15) == 2 and mlm_masking.num_to_mask(30, 0.15) == 5  # 4.5 -> 5


def test_80_10_10_proportions():
  rng = np.random.default_rng(1)
  transform = masking()
  masked = random = kept = 0
  for _ in range(2000):
    row = packed_row(rng, pad=0)
    out = transform.random_map(row, rng)
    sel = out["weights"] > 0
    masked += int((out["inputs"][sel] == TOK.mask_id).sum())
    changed = (out["inputs"][sel] != row["tokens"][sel]) & (out["inputs"][sel] != TOK.mask_id)
    random += int(changed.sum())
    kept += int((out["inputs"][sel] == row["tokens"][sel]).sum())
    assert (out["inputs"][sel] >= TOK.mask_id).all(), "random replacements are never [PAD]/[CLS]/[SEP]"
  total = masked + random + kept  # ~37k selections: the standard error of a fraction is <= 0.003
  # A random replacement equal to the original byte (1 in 256) counts as kept.
  assert abs(masked / total - 0.8) < 0.01 and abs(random / total - 0.1 * 255 / 256) < 0.01
  assert abs(kept / total - (0.1 + 0.1 / 256)) < 0.01


def test_sparse_prediction_slots():
  rng = np.random.default_rng(2)
  out = masking(max_predictions=20).random_map(packed_row(rng, pad=0), rng)
  n = int(out["weights"].sum())
  assert out["mask_positions"].shape == (20,) and out["mask_weights"].sum() == n
  np.testing.assert_array_equal(out["mask_positions"][:n], np.flatnonzero(out["weights"]))


def test_whole_word_selection():
  rng = np.random.default_rng(3)
  maskable_T = np.ones(40, bool)
  maskable_T[[0, 20]] = False                                   # [CLS] and [SEP]
  word_start_T = np.zeros(40, bool)
  word_start_T[[1, 4, 5, 9, 12, 15, 21, 24, 30, 33, 36]] = True
  ids_T = mlm_masking.word_ids(maskable_T, word_start_T)
  for _ in range(100):
    selected_T = mlm_masking.select_whole_words(maskable_T, word_start_T, 6, rng)
    assert selected_T.sum() <= 6 and not selected_T[~maskable_T].any()
    for word in np.unique(ids_T[selected_T]):
      assert selected_T[ids_T == word].all(), "a word is masked whole or not at all"
  assert ids_T[21] == ids_T[19] + 1  # after [SEP], a new word starts even without a marker


def test_masks_are_fresh_per_visit_and_resume_exactly(data_dir):
  # The same row seen twice (two epochs) gets different masks ...
  rows = grain.MapDataset.source([packed_row(np.random.default_rng(4))] * 3).to_iter_dataset()
  visits = [r["weights"] for r in rows.random_map(masking(), seed=7)]
  assert not np.array_equal(visits[0], visits[1]) and not np.array_equal(visits[1], visits[2])
  # ... and the real pipeline, restored from a JSON round trip of its state, draws the same masks.
  config = small_config(data_dir)
  config.data.prefetch = 0
  straight = iter(OBJ.train_data(config, TOK, process_index=0, process_count=1))
  expected = [next(straight) for _ in range(5)]
  straight.close()
  first = iter(OBJ.train_data(config, TOK, process_index=0, process_count=1))
  for _ in range(2):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  first.close()
  resumed = iter(OBJ.train_data(config, TOK, process_index=0, process_count=1))
  resumed.set_state(state)
  for want in expected[2:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  resumed.close()
  assert expected[0]["weights"].sum() > 0 and (expected[0]["inputs"] == TOK.mask_id).any()


# ---- loss and model --------------------------------------------------------------------------

@pytest.mark.smoke
def test_loss_ignores_unmasked_positions():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 6)).astype(np.int32)
  weights = np.zeros((2, 6), np.float32)
  weights[0, [1, 4]] = weights[1, 2] = 1.0
  nll, correct = masked_lm.masked_cross_entropy(logits, targets, weights)
  # Hand computation: -log softmax at the three masked positions.
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -sum(log_p[b, t, targets[b, t]] for b, t in ((0, 1), (0, 4), (1, 2)))
  assert float(nll.sum()) == pytest.approx(want, rel=1e-5)
  assert float(correct.sum()) == sum(logits[b, t].argmax() == targets[b, t] for b, t in ((0, 1), (0, 4), (1, 2)))
  # Anything at unmasked positions, even inf and nan, changes nothing.
  other = logits.copy()
  other[weights == 0] = rng.normal(size=(int((weights == 0).sum()), 11)) * 100
  other[0, 0, 3], other[1, 5, 0] = np.inf, np.nan
  nll2, correct2 = masked_lm.masked_cross_entropy(other, targets, weights)
  assert float(nll2.sum()) == float(nll.sum()) and float(correct2.sum()) == float(correct.sum())


def tiny_model(config=None, **over):
  config = config or small_config()
  for k, v in over.items():
    config.model[k] = v
  with nnx.use_eager_sharding(False):
    return OBJ.make_model(config, TOK, nnx.Rngs(0))


@pytest.mark.smoke
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_bidirectional_by_gradient_and_documents_isolated(positions):
  model = tiny_model(positions=positions)
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  T = 16
  tokens = jnp.asarray(np.random.default_rng(6).integers(5, 261, (1, T)), jnp.int32)
  segments = jnp.asarray([[1] * 8 + [2] * 6 + [0] * 2], jnp.int32)
  positions_ = jnp.asarray([list(range(8)) + list(range(6)) + [0, 0]], jnp.int32)

  probe_D = jnp.asarray(np.random.default_rng(7).normal(size=64), jnp.float32)

  def output_at(i, embeddings):
    m = nnx.merge(graphdef, {**params, "embed": embeddings})
    # The encoder's output (the tied head would read every table row), projected on a random
    # direction (a plain sum of a LayerNorm output has zero gradient).
    return m.encode(tokens, positions_BxT=positions_, segment_ids_BxT=segments)[0, i] @ probe_D

  table = params["embed"]
  # d(output at slot 2) / d(embedding rows of each token): dependence on slot j <=> token j's row.
  grads = jax.grad(lambda e: output_at(2, e))(table)
  influence = [float(jnp.abs(grads[tokens[0, j]]).sum()) for j in range(T)]
  assert all(influence[j] > 0 for j in range(8)), "slot 2 sees every token of its document, after it too"
  unique = [j for j in range(8, T) if int(tokens[0, j]) not in tokens[0, :8].tolist()]
  assert unique and all(influence[j] == 0 for j in unique), "nor any token of another document or padding"


def test_sparse_and_dense_heads_agree():
  config = small_config()
  model = tiny_model(config)
  rng = np.random.default_rng(7)
  rows = [masking(max_predictions=5).random_map(packed_row(rng, length=32, docs=2, pad=3), rng) for _ in range(4)]
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  dense = {k: v for k, v in batch.items() if not k.startswith("mask_")}
  (l_sparse, m_sparse), (l_dense, m_dense) = OBJ.loss(model, batch, None), OBJ.loss(model, dense, None)
  assert float(l_sparse) == pytest.approx(float(l_dense), rel=1e-5)
  assert float(m_sparse["accuracy"]) == float(m_dense["accuracy"])


def test_param_count_and_flops():
  for variant, tied in (("tiny", False), ("tiny", True), ("bert-base", True)):
    config = load_config("bert", variant)
    config.model.tie_embeddings = tied
    assets = OBJ.stand_in_assets(config)
    with nnx.use_eager_sharding(False):
      abstract = nnx.eval_shape(lambda: OBJ.make_model(config, assets, nnx.Rngs(0)))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(abstract)))
    assert OBJ.param_count(config, assets) == actual
  assert 108e6 < actual < 112e6, "BERT-base is 110M parameters"
  # Dense prediction costs more than sparse prediction.
  sparse = OBJ.flops_per_example(config, assets)
  config.mlm.sparse_predictions = False
  assert OBJ.flops_per_example(config, assets) > sparse > 6 * 85e6 * 128


# ---- sharding, resume, benchmark -------------------------------------------------------------

def packed_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  transform = OBJ.masking(config, TOK)
  rows = [transform.random_map(packed_row(rng, length=config.data.seq_len, docs=2, pad=3), rng)
          for _ in range(config.train.batch_size)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_sharded_equals_single_device_loss_and_grads():
  setups = [train.build(c, OBJ, TOK, parallel.make_mesh(c.mesh, devices))
            for c, devices in ((small_config(data=1), jax.devices()[:1]),
                               (small_config(data=2, fsdp=2, tensor=2), jax.devices()))]
  states = [train.init_state(s) for s in setups]
  head = states[1]["params"]["out_bias"]
  assert head.sharding.spec == jax.P("tensor") and head.addressable_shards[0].data.shape == (192,)
  batch = packed_batch(setups[0].config)
  (loss_1, grads_1), (loss_8, grads_8) = [loss_and_grads(s, st, batch) for s, st in zip(setups, states)]
  assert abs(loss_1 - loss_8) < 1e-5
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)


def train_losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: (r["train/loss"], r["train/accuracy"]) for r in rows if "train/loss" in r}


@pytest.mark.smoke
def test_resume_is_exact(tmp_path, data_dir):
  """8 steps straight == 4 steps, stop, resume, 4 more: same losses and params, bit for bit."""
  config = small_config(data_dir)
  config.train.steps = 8
  config.checkpoint.every = 100
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(config, straight)
  assert train.train_and_evaluate(config, resumed, stop_at=4)["step"] == 4
  result = train.train_and_evaluate(config, resumed)
  assert train_losses(straight) == train_losses(resumed) and len(train_losses(straight)) == 8
  target = train.build(config, OBJ, TOK, parallel.make_mesh(config.mesh)).abstract_state["params"]
  (p1, s1), (p2, s2) = [checkpointing.latest_params(w, target) for w in (straight, resumed)]
  assert s1 == s2 == 8
  for a, b in zip(jax.tree.leaves(jax.device_get(p1)), jax.tree.leaves(jax.device_get(p2))):
    np.testing.assert_array_equal(a, b)
  assert {"eval/loss", "eval/accuracy", "eval/masked_tokens"} <= set(result) and result["eval/masked_tokens"] > 0


def test_benchmark_needs_no_data(tmp_path, monkeypatch):
  monkeypatch.setenv("FMJAX_DATA_DIR", str(tmp_path / "no_data_here"))
  config = load_config("bert", "bert-base")
  config.model.num_layers = 1
  config.model.embed_dim = 64
  config.model.num_heads = 4
  config.model.mlp_dim = 128
  config.model.dtype = "float32"
  config.data.vocab_size = 1024     # still a SentencePiece config: a stand-in tokenizer sizes it
  config.data.seq_len = 16
  config.mlm.max_predictions = 4
  config.train.batch_size = 8
  config.bench.steps = 1
  config.bench.warmup_steps = 0
  result = bench.run_benchmark(config)
  assert result["objective"] == "masked_lm" and result["tokens_per_s"] > 0 and result["final_loss"] > 0
  assert result["params"] > 1024 * 64
  assert not (tmp_path / "no_data_here").exists(), "a benchmark must not build datasets"


# ---- configs and bad inputs ------------------------------------------------------------------

def test_every_variant_validates():
  for variant in ("tiny", "bert-base", "bert-base-512", "bert-crammed"):
    train.validate(load_config("bert", variant), OBJ)
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    load_config("bert", "huge")



@pytest.mark.parametrize("field, value, message", [
    ("mlm.mask_rate", 0.0, "config.mlm.mask_rate=0.0"),
    ("mlm.mask_rate", 1.0, "config.mlm.mask_rate=1.0"),
    ("mlm.mask_rate", -0.2, "config.mlm.mask_rate=-0.2"),
    ("mlm.whole_word", True, "config.mlm.whole_word=True needs config.data.tokenizer='sentencepiece'"),
    ("mlm.max_predictions", 3, "config.mlm.max_predictions=3"),
    ("mlm.random_token_fraction", 0.3, "config.mlm.mask_token_fraction + config.mlm.random_token_fraction"),
    ("model.max_len", 16, "config.model.max_len=16"),
])
def test_config_errors(field, value, message):
  config = small_config()
  section, leaf = field.split(".")
  config[section][leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
    train.validate(config, OBJ)


# ---- learning and fill-mask ------------------------------------------------------------------

TINY_STEPS = 200


def context_free_baselines(batches) -> tuple[float, float]:
  """On the masked positions of the validation set: the accuracy of always answering the
  commonest masked token, and the entropy (nats) of the masked tokens' unigram distribution, the
  loss of the best predictor that ignores context."""
  counts = np.bincount(np.concatenate([b["targets"][b["weights"] > 0] for b in batches]))
  p = counts[counts > 0] / counts.sum()
  return float(counts.max() / counts.sum()), float(-(p * np.log(p)).sum())


def test_tiny_config_learns(tmp_path, data_dir):
  """The `tiny` config as shipped, cut to 200 steps (its schedule with it): ~85 s on 2 cores."""
  config = load_config("bert", "tiny")
  config.data.data_dir = str(data_dir)
  config.train.steps = config.train.eval_every = config.checkpoint.every = TINY_STEPS
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  accuracy, entropy = context_free_baselines(OBJ.eval_data(config, TOK, process_index=0, process_count=1))
  # Measured: the commonest masked byte (space) is 29.3% of the masked tokens, their unigram
  # entropy 3.39 nats; the model at 200 steps: accuracy 39.1%, loss 2.38 (at 600 steps, the full
  # config: 62.0%, 1.47). Bars: 5 points of accuracy above the constant answer, and a loss 0.7
  # nats below the best context-free one, i.e. the model reads the tokens around a mask.
  assert result["eval/accuracy"] > accuracy + 0.05, (result, accuracy)
  assert result["eval/loss"] < entropy - 0.7, (result, entropy)


ANIMALS = {"cat": "4", "dog": "7", "cow": "2", "bird": "9", "bee": "0",
           "fox": "5", "owl": "1", "frog": "8", "bear": "3", "goat": "6"}


def write_pattern_corpus(folder, files, seed=0):
  """Each line gives an animal's number; the number is a function of the animal. Bytes: a
  [MASK] stands for the one-character number, which only the animal's name, bytes away, gives.
  Files (documents) of 1 to 6 lines, so that a one-line fill-mask input, [CLS] line [SEP], looks
  like training data."""
  rng = random.Random(seed)
  folder.mkdir()
  for i in range(files):
    animals = [rng.choice(sorted(ANIMALS)) for _ in range(rng.randint(1, 6))]
    (folder / f"facts{i:03d}.txt").write_text("".join(f"{a} is {ANIMALS[a]}\n" for a in animals))


PATTERN_STEPS = 1000


@pytest.fixture(scope="module")
def pattern_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fill_mask")
  write_pattern_corpus(tmp / "corpus", 300)
  write_pattern_corpus(tmp / "held_out", 20, seed=1)
  config = small_config(tmp / "data")
  config.data.files = str(tmp / "corpus" / "*.txt")
  config.data.eval_files = str(tmp / "held_out" / "*.txt")
  config.data.seq_len = 48
  config.train.batch_size = 16
  config.mlm.mask_rate = 0.3  # twice the targets per step: the pattern is learned in 600 steps
  config.train.steps = config.checkpoint.every = PATTERN_STEPS
  config.train.log_every = 100
  config.optim.warmup_steps = 20
  workdir = str(tmp / "run")
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_fill_mask_recovers_the_pattern(pattern_run):
  _, workdir, result = pattern_run
  fill = fill_mask.FillMask.from_workdir(workdir)
  assert fill.run.step == PATTERN_STEPS
  animals = sorted(ANIMALS)
  out = fill([f"{a} is [MASK]" for a in animals], top_k=3)
  predicted = [per_text[0][0][0] for per_text in out]
  # Measured (two data orders, jax 0.10.2 CPU): all 10 right, with probability 0.70 to 0.99.
  # One miss is tolerated so that another jax version's float noise cannot fail the test.
  assert sum(p == ANIMALS[a] for p, a in zip(predicted, animals)) >= 9, (out, result)
  assert all(0.0 < p <= 1.0 for per_text in out for cands in per_text for _, p in cands)
  # Two masks in one text.
  both = fill(["bear is [MASK]\ncat is [MASK]"], top_k=1)[0]
  assert [c[0][0] for c in both] == ["3", "4"], both


def test_whole_word_masking_on_sentencepiece_pieces():
  text = "the quick brown fox jumps over the lazy dog .\n" * 50 + "".join(
      f"the {a} has number {n} and likes {a}s .\n" for a, n in ANIMALS.items()) * 20
  tokenizer = fmdata.SentencePieceTokenizer(sentencepiece_training.train([text], 512), vocab_size=512)
  table = mlm_masking.word_start_table(tokenizer)
  pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
  assert table.sum() > 0 and all(pieces[i].startswith(" ") for i in np.flatnonzero(table) if pieces[i])
  tokens = np.concatenate([[tokenizer.bos_id], tokenizer.encode(text[:2000]), [tokenizer.eos_id]]).astype(np.int32)
  row = {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": np.zeros_like(tokens)}
  transform = mlm_masking.MlmMasking(special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id,
                                     random_ids=mlm_masking.random_token_ids(tokenizer), mask_rate=0.15,
                                     word_start=table)
  rng = np.random.default_rng(8)
  maskable_T = tokens > 4
  ids_T = mlm_masking.word_ids(maskable_T, table[tokens])
  for _ in range(20):
    selected_T = transform.random_map(row, rng)["weights"] > 0
    assert 0 < selected_T.sum() <= mlm_masking.num_to_mask(int(maskable_T.sum()), 0.15)
    for word in np.unique(ids_T[selected_T]):
      assert selected_T[ids_T == word].all()


def test_sentence_embeddings(pattern_run):
  fill = fill_mask.FillMask.from_workdir(pattern_run[1])
  texts = ["cat is 4", "dog is 7", "cat is 4"]
  for pooling in ("cls", "mean"):
    emb = fill.embed(texts, pooling=pooling)
    assert emb.shape == (3, 64) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-5)
    assert not np.allclose(emb[0], emb[1])
  # Padding does not change an embedding: alone or beside a longer text, the same vector.
  alone = fill.embed(["cat is 4"], pooling="mean")[0]
  beside = fill.embed(["cat is 4", "dog is 7\n" * 4], pooling="mean")[0]
  np.testing.assert_allclose(alone, beside, atol=1e-5)


def test_fill_mask_errors(pattern_run, tmp_path):
  fill = fill_mask.FillMask.from_workdir(pattern_run[1])
  with pytest.raises(ValueError, match=r"no \[MASK\] in text 'cat is 4'"):
    fill(["cat is 4"])
  with pytest.raises(ValueError, match="pooling='max'"):
    fill.embed(["x"], pooling="max")
  with pytest.raises(ValueError, match="context is 48 tokens"):
    fill(["cat is [MASK]\n" * 6])
  # A workdir of another paradigm names both paradigms.
  gpt_workdir = tmp_path / "gpt_run"
  gpt_workdir.mkdir()
  (gpt_workdir / "config.json").write_text(json.dumps(load_config("gpt", "tiny").to_dict()))
  with pytest.raises(ValueError, match="holds a 'causal_lm' run; this tool needs a 'masked_lm' run"):
    fill_mask.FillMask.from_workdir(str(gpt_workdir))


def test_fill_mask_cli(pattern_run):
  _, workdir, _ = pattern_run
  run = lambda *args: subprocess.run([sys.executable, "-m", "fmjax.fill_mask", "--workdir", workdir, *args],
                                     capture_output=True, text=True, cwd=ROOT, timeout=300)
  proc = run("--text", "fox is [MASK]", "--text", "owl is [MASK]", "--top_k", "2")
  assert proc.returncode == 0, proc.stderr
  assert f"at step {PATTERN_STEPS}" in proc.stdout and proc.stdout.count("--- text:") == 2
  lines = [line for line in proc.stdout.splitlines() if line.startswith("[MASK] 1:")]
  assert lines[0].startswith("[MASK] 1: '5'") and lines[1].startswith("[MASK] 1: '1'"), proc.stdout
  proc = run("--text", "no mask here")
  assert proc.returncode == 2 and "no [MASK] in text 'no mask here'" in proc.stderr
