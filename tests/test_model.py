"""GPT model: causality, KV-cache decoding == full forward, scan == loop, remat == no remat."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax import sampling
from fmjax.models import attention, gpt, transformer

pytestmark = pytest.mark.smoke  # also runs on Python 3.12 with the newest jax (.ci/run)


def small_gpt(positions="learned", scan=False, remat="none", vocab=64, max_len=32, seed=0):
  stack = transformer.StackConfig(num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64,
                                  rotary=positions == "rotary", scan_layers=scan, remat=remat)
  cfg = gpt.GptConfig(vocab_size=vocab, max_len=max_len, stack=stack, positions=positions)
  with nnx.use_eager_sharding(False):
    return gpt.Gpt(cfg, nnx.Rngs(seed))


def forward(model, tokens_BxT):
  b, t = tokens_BxT.shape
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  logits, _ = model(tokens_BxT, positions_BxT=positions, mask=None, is_causal=True)
  return logits


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_causal_by_gradient(positions):
  """d logits[t] / d embedding(token s) is zero for s > t and nonzero for s <= t."""
  model = small_gpt(positions)
  tokens = jnp.arange(10)[None] % 64
  graphdef, params = nnx.split(model)
  table = params["embed"][...]

  def logit_sum_at(t, inputs_1xTxD_delta):
    def run(delta):
      m = nnx.merge(graphdef, params)
      # Perturb the input embeddings directly through a custom forward.
      b, T = tokens.shape
      x = jnp.take(table, tokens, axis=0) + delta + jnp.take(m.pos_embed[...], jnp.arange(T), axis=0) \
          if positions == "learned" else jnp.take(table, tokens, axis=0) + delta
      pos = jnp.broadcast_to(jnp.arange(T), (b, T))
      x, _ = m.stack(x, positions_BxT=pos, mask=None, is_causal=True)
      return (m.ln_final(x) @ table.T)[0, t].sum()
    return jax.grad(run)(inputs_1xTxD_delta)

  delta = jnp.zeros((1, 10, 32))
  for t in (0, 4, 9):
    g = np.abs(np.asarray(logit_sum_at(t, delta)))[0].sum(-1)
    assert np.all(g[t + 1:] == 0), f"output {t} depends on later inputs: {g}"
    assert np.all(g[:t + 1] > 0), f"output {t} ignores earlier inputs: {g}"


def test_segment_mask_isolates_documents():
  model = small_gpt()
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 12), 0, 64)
  segments = jnp.array([[1] * 5 + [2] * 7])
  positions = jnp.array([list(range(5)) + list(range(7))])
  mask, causal = gpt.training_mask(segments, tokens)
  packed, _ = model(tokens, positions_BxT=positions, mask=mask, is_causal=causal)
  alone = forward(model, tokens[:, 5:])
  np.testing.assert_allclose(packed[:, 5:], alone, atol=1e-5)


@pytest.mark.parametrize("positions,scan", [("learned", False), ("rotary", False), ("learned", True)])
def test_kv_cache_decoding_matches_full_forward(positions, scan):
  """Greedy decoding with the cache == re-running the full forward on the growing sequence,
  for prompts of different lengths in one batch (left padded)."""
  model = small_gpt(positions, scan=scan)
  forward_jit = jax.jit(lambda graphdef, params, tokens: forward(nnx.merge(graphdef, params), tokens),
                        static_argnums=0)
  graphdef, params = nnx.split(model)
  prompts = [[1, 5, 9, 13], [1, 7], [1, 2, 3, 4, 5, 6]]
  out = sampling.generate_ids(model, prompts, max_new_tokens=8, eos_id=63, pad_id=0, vocab_limit=60,
                              temperature=0.0)
  for prompt, new in zip(prompts, out):
    seq = list(prompt)
    for token in new:
      logits = forward_jit(graphdef, params, jnp.array([seq]))[0, -1, :60]
      assert int(jnp.argmax(logits)) == token
      seq.append(token)
    assert len(new) == 8 or new[-1] == 63


def test_sampling_deterministic_and_seeded():
  model = small_gpt()
  prompts = [[1, 2, 3]] * 2
  greedy = [sampling.generate_ids(model, prompts, max_new_tokens=6, eos_id=63, pad_id=0, vocab_limit=60,
                                  temperature=0.0, seed=s) for s in (0, 1)]
  assert greedy[0] == greedy[1]
  a = sampling.generate_ids(model, prompts, max_new_tokens=6, eos_id=63, pad_id=0, vocab_limit=60,
                            temperature=2.0, seed=3)
  b = sampling.generate_ids(model, prompts, max_new_tokens=6, eos_id=63, pad_id=0, vocab_limit=60,
                            temperature=2.0, seed=3)
  assert a == b
  c = sampling.generate_ids(model, prompts, max_new_tokens=6, eos_id=63, pad_id=0, vocab_limit=60,
                            temperature=2.0, seed=4)
  assert a != c
  assert all(t < 60 for row in a + c for t in row)


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  neg = jnp.finfo(jnp.float32).min
  k2 = sampling.filter_logits(logits, top_k=2, top_p=1.0, vocab_limit=4)
  assert np.all(np.asarray(k2[0, 2:]) == neg) and np.all(np.asarray(k2[0, :2]) > neg)
  p = sampling.filter_logits(logits, top_k=0, top_p=0.7, vocab_limit=4)  # 0.5 + 0.3 reaches 0.7
  assert np.all(np.asarray(p[0, :2]) > neg) and np.all(np.asarray(p[0, 2:]) == neg)
  limited = sampling.filter_logits(logits, top_k=0, top_p=1.0, vocab_limit=3)
  assert limited[0, 3] == neg


def test_generation_rejects_bad_arguments():
  model = small_gpt()
  with pytest.raises(ValueError, match="context of 32"):
    sampling.generate_ids(model, [[1] * 30], max_new_tokens=5, eos_id=63, pad_id=0, vocab_limit=60, max_len=32)
  with pytest.raises(ValueError, match="temperature"):
    sampling.generate_ids(model, [[1]], max_new_tokens=5, eos_id=63, pad_id=0, vocab_limit=60, temperature=-1)
  with pytest.raises(ValueError, match="top_p"):
    sampling.generate_ids(model, [[1]], max_new_tokens=5, eos_id=63, pad_id=0, vocab_limit=60, top_p=0.0)


def _stack_params(list_params):
  """Loop-layout params -> the scan layout (a leading layer axis)."""
  layers = list_params["stack"]["layers"]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])
  out = dict(list_params)
  out["stack"] = {"layers": stacked}
  return out


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_remat_match_the_layer_loop(remat):
  loop_model = small_gpt()
  scan_model = small_gpt(scan=True, remat=remat)
  _, loop_params = nnx.split(loop_model)
  scan_graphdef, _ = nnx.split(scan_model)
  scan_model = nnx.merge(scan_graphdef, _stack_params(nnx.to_pure_dict(loop_params)))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, 64)

  def loss(model):
    return jnp.square(forward(model, tokens).astype(jnp.float32)).mean()

  np.testing.assert_allclose(forward(loop_model, tokens), forward(scan_model, tokens), atol=1e-5)
  g_loop = nnx.to_pure_dict(nnx.state(nnx.grad(loss)(loop_model)))
  g_scan = nnx.to_pure_dict(nnx.state(nnx.grad(loss)(scan_model)))
  np.testing.assert_allclose(_stack_params(g_loop)["stack"]["layers"]["mlp"]["fc"],
                             g_scan["stack"]["layers"]["mlp"]["fc"], atol=1e-6)


def test_dropout_only_with_an_rng():
  stack = transformer.StackConfig(num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, dropout=0.5)
  with nnx.use_eager_sharding(False):
    model = gpt.Gpt(gpt.GptConfig(vocab_size=64, max_len=16, stack=stack), nnx.Rngs(0))
  tokens = jnp.arange(8)[None]
  positions = jnp.arange(8)[None]
  run = lambda rng: model(tokens, positions_BxT=positions, mask=None, is_causal=True, dropout_rng=rng)[0]
  np.testing.assert_array_equal(run(None), forward(model, tokens))  # evaluation: deterministic
  a, b, c = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, run(None))


def test_bfloat16_compute_keeps_float32_params():
  stack = transformer.StackConfig(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, dtype="bfloat16")
  with nnx.use_eager_sharding(False):
    model = gpt.Gpt(gpt.GptConfig(vocab_size=64, max_len=16, stack=stack), nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model)))
  assert forward(model, jnp.zeros((1, 4), jnp.int32)).dtype == jnp.bfloat16


def test_param_count_matches_the_model():
  model = small_gpt()
  counted = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  assert gpt.param_count(model.cfg) == counted


@pytest.mark.parametrize("is_causal,with_mask", [(False, False), (True, False), (False, True)])
def test_padded_attention_equals_unpadded(is_causal, with_mask):
  """The length padding the cuDNN path uses (checked here through XLA, which takes the same
  arguments) leaves the result unchanged, e.g. a ViT's 197 tokens padded to 256."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 13, 2, 8)), jnp.float32) for _ in range(3))
  mask = None
  if with_mask:
    mask = jnp.asarray(rng.random((2, 1, 13, 13)) < 0.7) | jnp.eye(13, dtype=bool)[None, None]
  want = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="xla")
  got = attention.attend_padded(q, k, v, mask=mask, is_causal=is_causal, implementation="xla", multiple=16)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("query_block", [64, 4])
@pytest.mark.parametrize("is_causal,with_mask,queries,dtype", [
    (True, False, 13, jnp.float32), (False, True, 13, jnp.float32), (True, True, 13, jnp.float32),
    (False, True, 5, jnp.float32), (True, False, 13, jnp.bfloat16)])
def test_einsum_attention_equals_library_attention(is_causal, with_mask, queries, dtype, query_block):
  """fmjax's heads-major attention (the CPU default) computes what jax.nn.dot_product_attention
  does, values and gradients, including a query that may see no key (a padding row), a query
  whose only visible keys are in its future (causal + mask: also none), cross-attention (fewer
  queries than keys), and causal attention split into query blocks (13 queries in blocks of 4)."""
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, queries, 3, 8)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(2, 13, 3, 8)), dtype) for _ in range(2))
  mask = None
  if with_mask:
    mask_np = rng.random((2, 1, queries, 13)) < 0.6
    mask_np[1, 0, 2] = False  # nothing to attend to
    mask_np[0, 0, 1] = False
    mask_np[0, 0, 1, 7:] = True  # only future keys: nothing to attend to when causal
    mask = jnp.asarray(mask_np)
  # In causal query blocks a padding query averages fewer values than the library's (all of
  # them); its output is padding, and training gives it no weight, so here neither does the loss.
  sees_none = np.zeros((2, queries), bool)
  if with_mask and is_causal and query_block < queries:
    visible = mask_np & (np.tril(np.ones((queries, 13), bool)) if is_causal else True)
    sees_none = ~visible.any(-1)[:, 0]
  weight = jnp.asarray(~sees_none, jnp.float32)[:, :, None, None]

  def loss(fn, q, k, v):
    out = fn(q, k, v, mask=mask, is_causal=is_causal) * weight.astype(dtype)
    return jnp.sum(out.astype(jnp.float32) * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

  library = lambda *a, **kw: jax.nn.dot_product_attention(*a, **kw, implementation="xla")
  (_, want), want_grads = jax.value_and_grad(lambda *a: loss(library, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  einsum = functools.partial(attention.attend_einsum, query_block=query_block)
  (_, got), got_grads = jax.value_and_grad(lambda *a: loss(einsum, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert got.dtype == dtype and got.shape == want.shape
  tol = 2e-2 if dtype == jnp.bfloat16 else 2e-5
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=tol * 5)


def test_auto_attention_is_einsum_on_cpu():
  assert attention.resolve_implementation("auto") == "einsum"
  with pytest.raises(ValueError, match="choose one of"):
    attention.resolve_implementation("flash")


def test_auto_attention_follows_the_meshs_platform(monkeypatch):
  """A step traced for TPU chips on a CPU host (fmjax.aot) gets the TPU's attention path."""
  cpu_mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  with jax.set_mesh(cpu_mesh):
    assert jax.jit(lambda: jnp.asarray(attention.resolve_implementation("auto") == "einsum"))()
  device = lambda platform: type("Mesh", (), {"abstract_device": type("Device", (), {"platform": platform})()})()
  for platform, want in (("tpu", "xla"), ("gpu", "cudnn"), ("cpu", "einsum")):
    monkeypatch.setattr(jax.sharding, "get_abstract_mesh", lambda platform=platform: device(platform))
    assert attention.resolve_implementation("auto") == want
