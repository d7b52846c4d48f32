"""Two-tower model (ViT + text tower), contrastive losses and retrieval metrics."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import set_fields
from fmjax import config_defaults as defaults
from fmjax import parallel
from fmjax.config_checks import ConfigError
from fmjax.models import clip, transformer, vit
from fmjax.objectives import contrastive_losses as losses
from fmjax.objectives import retrieval_metrics as metrics

VOCAB, TEXT_LEN, IMAGE_SIZE = 40, 12, 16


def tiny_config(*, image_pool="cls", text_pool="eos", causal=True, loss="clip", scan=False,
                layers=2) -> clip.TwoTowerConfig:
  stack = lambda d, heads: transformer.StackConfig(num_layers=layers, num_heads=heads, embed_dim=d, mlp_dim=2 * d,
                                                   scan_layers=scan)
  image = vit.VitConfig(image_size=IMAGE_SIZE, patch_size=4, channels=3, stack=stack(32, 2), pool=image_pool,
                        pixel_mean=(0.4, 0.5, 0.6), pixel_std=(0.2, 0.25, 0.3))
  text = clip.TextTowerConfig(vocab_size=VOCAB, max_len=TEXT_LEN, stack=stack(24, 3), causal=causal, pool=text_pool)
  return clip.TwoTowerConfig(image=image, text=text, joint_dim=16, loss=loss,
                             logit_scale_init=clip.DEFAULT_LOGIT_SCALE[loss])


def unsharded_model(cfg, seed=0) -> clip.TwoTower:
  with nnx.use_eager_sharding(False):
    return clip.TwoTower(cfg, nnx.Rngs(seed))


@functools.lru_cache(maxsize=None)
def _compiled_method(graphdef, method):
  return jax.jit(lambda params, *args: getattr(nnx.merge(graphdef, params), method)(*args))


def call(model, method, *args):
  """model.method(*args) under jit: one compile per model structure and shapes, much faster
  on CPU than running a model op by op."""
  graphdef, params = nnx.split(model)
  return _compiled_method(graphdef, method)(params, *args)


def captions(rng, batch, length=TEXT_LEN):
  """[BOS] text [EOS] 0 0 ..., texts of random lengths (ids 3.. are text, 1 BOS, 2 EOS)."""
  tokens = np.zeros((batch, length), np.int32)
  for row in tokens:
    n = rng.integers(1, length - 1)
    row[: n + 2] = [1, *rng.integers(3, VOCAB, n), 2]
  return tokens


def pair_batch(batch=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"images": rng.integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
          "text_tokens": captions(rng, batch)}


def random_embeddings(batch, dim, seed):
  x = np.random.default_rng(seed).normal(size=(batch, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- losses against NumPy ------------------------------------------------------------------

def numpy_clip_loss(x, y, scale):
  logits = scale * x.astype(np.float64) @ y.astype(np.float64).T
  def cross_entropy(rows):
    return np.mean([np.log(np.exp(r).sum()) - r[i] for i, r in enumerate(rows)])
  return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def numpy_siglip_loss(x, y, scale, bias):
  b = len(x)
  total = 0.0
  for i in range(b):
    for j in range(b):
      z = 1.0 if i == j else -1.0
      total += np.log1p(np.exp(-z * (scale * float(np.dot(x[i], y[j])) + bias)))
  return total / b


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07])
def test_clip_loss_matches_numpy(scale):
  x, y = random_embeddings(6, 5, 1), random_embeddings(6, 5, 2)
  np.testing.assert_allclose(losses.clip_loss(x, y, scale), numpy_clip_loss(x, y, scale), rtol=1e-5)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_loss_matches_numpy(scale, bias):
  x, y = random_embeddings(6, 5, 3), random_embeddings(6, 5, 4)
  np.testing.assert_allclose(losses.siglip_loss(x, y, scale, bias), numpy_siglip_loss(x, y, scale, bias), rtol=1e-5)
  np.testing.assert_allclose(losses.chunked_siglip_loss(x, y, scale, bias),
                             numpy_siglip_loss(x, y, scale, bias), rtol=1e-5)


def test_contrastive_loss_dispatch_and_bad_name():
  x, y = random_embeddings(4, 3, 5), random_embeddings(4, 3, 6)
  np.testing.assert_allclose(losses.contrastive_loss("clip", x, y, 2.0, -1.0), losses.clip_loss(x, y, 2.0))
  np.testing.assert_allclose(losses.contrastive_loss("siglip", x, y, 2.0, -1.0), losses.siglip_loss(x, y, 2.0, -1.0))
  with pytest.raises(ValueError, match="config.model.loss='infonce'"):
    losses.contrastive_loss("infonce", x, y, 2.0, -1.0)


def test_in_batch_accuracy():
  x = np.eye(4, dtype=np.float32)
  y = x[[0, 1, 3, 2]]  # texts 2 and 3 swapped: images 2 and 3 pick the wrong caption
  acc = losses.in_batch_accuracy(x, y)
  assert float(acc["image_to_text_accuracy"]) == 0.5
  assert float(acc["text_to_image_accuracy"]) == 0.5


# ---- sharded == single device --------------------------------------------------------------

MESHES = {"data4": dict(data=4, fsdp=1, tensor=1), "data2_fsdp2": dict(data=2, fsdp=2, tensor=1)}


def mesh_of(name):
  shape = MESHES[name]
  return parallel.make_mesh(shape, jax.devices()[: math.prod(shape.values())])


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("loss", ["clip", "siglip", "siglip_chunked"])
def test_loss_sharded_equals_single_device(mesh_name, loss):
  x, y = random_embeddings(8, 6, 7), random_embeddings(8, 6, 8)
  expected = losses.contrastive_loss(loss, x, y, 10.0, -10.0)
  mesh = mesh_of(mesh_name)
  with jax.set_mesh(mesh):
    sharding = parallel.batch_sharding(mesh, 2)
    fn = jax.jit(lambda a, b: losses.contrastive_loss(loss, a, b, 10.0, -10.0))
    got = fn(jax.device_put(x, sharding), jax.device_put(y, sharding))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def model_losses_and_grads(graphdef, params, batch):
  """(CLIP + chunked SigLIP loss, (each loss)) and the grads of the sum: one compile for both."""
  def loss_fn(p):
    m = nnx.merge(graphdef, p)
    image_emb, text_emb = m(batch["images"], batch["text_tokens"])
    each = (losses.clip_loss(image_emb, text_emb, m.logit_scale()),
            losses.chunked_siglip_loss(image_emb, text_emb, m.logit_scale(), m.logit_bias()))
    return each[0] + each[1], each
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


MODEL_CFG = tiny_config(layers=1)  # one layer per tower: compiles faster


@pytest.fixture(scope="module")
def single_device_model_result():
  graphdef, params = nnx.split(unsharded_model(MODEL_CFG))
  (_, each), grads = model_losses_and_grads(graphdef, nnx.to_pure_dict(params), pair_batch(8))
  return nnx.to_pure_dict(params), each, grads


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_model_loss_sharded_equals_single_device(mesh_name, single_device_model_result):
  """encode both towers + losses under jit, params sharded as the trainer shards them: the same
  values and grads on a mesh as on one device."""
  params, expected_each, expected_grads = single_device_model_result
  mesh = mesh_of(mesh_name)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.LOGICAL_RULES):
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: clip.TwoTower(MODEL_CFG, nnx.Rngs(0))))
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
    shardings = jax.tree.map(lambda s: jax.NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, jax.P))
    assert any(s.spec != jax.P() for s in jax.tree.leaves(shardings)), "no parameter is sharded"
    (_, each), grads = model_losses_and_grads(graphdef, jax.device_put(params, shardings),
                                              parallel.global_batch(pair_batch(8), mesh))
  np.testing.assert_allclose(each, expected_each, rtol=1e-5)
  flat_expected = jax.tree.leaves(expected_grads)
  flat = jax.tree.leaves(jax.device_get(grads))
  assert len(flat) == len(flat_expected)
  for got, want in zip(flat, flat_expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


CHUNK_MESHES = {
    "ring_of_8": (dict(data=4, fsdp=2, tensor=1), 8),
    "fsdp_only_with_tensor": (dict(data=1, fsdp=2, tensor=4), 8),
    "one_device": (dict(data=1, fsdp=1, tensor=1), 1),
}


@pytest.mark.parametrize("mesh_name", sorted(CHUNK_MESHES) + ["no_mesh"])
def test_chunked_siglip_equals_dense_value_and_grads(mesh_name):
  x, y = random_embeddings(16, 6, 9), random_embeddings(16, 6, 10)
  scale, bias = jnp.float32(7.0), jnp.float32(-4.0)
  grad_all = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
  dense_value, dense_grads = grad_all(losses.siglip_loss)(x, y, scale, bias)
  if mesh_name == "no_mesh":
    value, grads = grad_all(losses.chunked_siglip_loss)(x, y, scale, bias)
  else:
    shape, devices = CHUNK_MESHES[mesh_name]
    mesh = parallel.make_mesh(shape, jax.devices()[:devices])
    with jax.set_mesh(mesh):
      sharding = parallel.batch_sharding(mesh, 2)
      value, grads = grad_all(losses.chunked_siglip_loss)(jax.device_put(x, sharding), jax.device_put(y, sharding),
                                                          scale, bias)
  np.testing.assert_allclose(value, dense_value, rtol=1e-6)
  for name, got, want in zip(("image", "text", "scale", "bias"), grads, dense_grads):
    assert np.abs(want).max() > 0, f"dense gradient w.r.t. {name} is zero: the comparison says nothing"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_chunked_siglip_memory_stays_per_device():
  """Compiled only: loss + grads over 8 devices keep far less scratch memory than the dense
  loss, which holds (and, for the backward pass, keeps) a B/8 x B block of logits per device."""
  mesh = parallel.make_mesh(dict(data=8, fsdp=1, tensor=1))
  scratch = {}
  with jax.set_mesh(mesh):
    emb = jax.ShapeDtypeStruct((4096, 32), jnp.float32, sharding=parallel.batch_sharding(mesh, 2))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    for name, fn in (("chunked", losses.chunked_siglip_loss), ("dense", losses.siglip_loss)):
      compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3))).lower(emb, emb, scalar, scalar).compile()
      scratch[name] = compiled.memory_analysis().temp_size_in_bytes
  assert scratch["chunked"] < 0.25 * scratch["dense"], scratch


def test_chunked_siglip_rejects_uneven_batch():
  mesh = parallel.make_mesh(dict(data=4, fsdp=1, tensor=1), jax.devices()[:4])
  x = random_embeddings(6, 3, 11)
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="batch 6 does not split over the 4 devices"):
    losses.chunked_siglip_loss(x, x, 1.0, 0.0)


# ---- the model -----------------------------------------------------------------------------

@pytest.mark.parametrize("image_pool,text_pool,causal", [("cls", "eos", True), ("gap", "mean", False)])
def test_embeddings_are_normalised_float32(image_pool, text_pool, causal):
  cfg = tiny_config(image_pool=image_pool, text_pool=text_pool, causal=causal)
  model, batch = unsharded_model(cfg), pair_batch(4)
  image_emb, text_emb = call(model, "__call__", batch["images"], batch["text_tokens"])
  for emb in (image_emb, text_emb):
    assert emb.shape == (4, cfg.joint_dim) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  # Float pixels in [0, 255] are the same images as uint8 ones.
  np.testing.assert_allclose(call(model, "encode_images", batch["images"].astype(np.float32)), image_emb, atol=1e-6)


def test_bf16_towers_give_float32_embeddings():
  cfg = tiny_config(layers=1)
  bf16 = lambda s: transformer.StackConfig(**{**s.__dict__, "dtype": "bfloat16"})
  cfg = clip.TwoTowerConfig(image=vit.VitConfig(**{**cfg.image.__dict__, "stack": bf16(cfg.image.stack)}),
                            text=clip.TextTowerConfig(**{**cfg.text.__dict__, "stack": bf16(cfg.text.stack)}),
                            joint_dim=cfg.joint_dim)
  model, batch = unsharded_model(cfg), pair_batch(2)
  image_emb, text_emb = call(model, "__call__", batch["images"], batch["text_tokens"])
  assert image_emb.dtype == text_emb.dtype == jnp.float32
  reference = call(unsharded_model(tiny_config(layers=1)), "__call__", batch["images"], batch["text_tokens"])
  np.testing.assert_allclose(image_emb, reference[0], atol=0.05)  # same params, bf16 compute


def test_pixel_normalisation_uses_config_mean_and_std():
  images = np.random.default_rng(0).integers(0, 256, (1, 4, 4, 3)).astype(np.uint8)
  got = vit.normalize_pixels(images, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
  want = (images / 255.0 - np.array([0.4, 0.5, 0.6])) / np.array([0.2, 0.25, 0.3])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_patchify_cuts_row_major_patches():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  patches = np.asarray(vit.patchify(x, 2))
  assert patches.shape == (2, 4, 12)
  np.testing.assert_array_equal(patches[1, 2], x[1, 2:4, 0:2].reshape(-1))  # grid row 1, column 0


def test_vit_rejects_wrong_image_shape():
  model = unsharded_model(tiny_config())
  with pytest.raises(ValueError, match=r"expected shape \(batch, 16, 16, 3\)"):
    model.encode_images(np.zeros((1, 8, 8, 3), np.uint8))


def test_logit_scale_clamped_and_gradient_only_inward():
  cfg = tiny_config()
  model = unsharded_model(cfg)
  np.testing.assert_allclose(model.logit_scale(), 1 / 0.07, rtol=1e-6)
  assert float(model.logit_bias()) == -10.0
  model.logits.log_scale[...] = jnp.float32(math.log(250.0))
  assert float(model.logit_scale()) == pytest.approx(100.0, rel=1e-6)

  graphdef, params = nnx.split(model)
  def grad_of(sign):
    return jax.grad(lambda p: sign * nnx.merge(graphdef, p).logit_scale())(params)["logits"]["log_scale"][...]
  assert float(grad_of(+1.0)) > 0   # minimising the scale: a step moves the parameter back down
  assert float(grad_of(-1.0)) == 0  # maximising it beyond the limit: no gradient
  model.logits.log_scale[...] = jnp.float32(math.log(20.0))
  graphdef, params = nnx.split(model)
  assert float(grad_of(-1.0)) == pytest.approx(-20.0, rel=1e-5)  # d exp(x)/dx below the limit


def test_last_token_index():
  tokens = jnp.array([[1, 5, 2, 0, 0], [1, 5, 6, 7, 2], [0, 0, 0, 0, 0], [1, 0, 4, 2, 0]])
  np.testing.assert_array_equal(clip.last_token_index(tokens), [2, 4, 0, 3])


@pytest.mark.parametrize("causal,pool", [(True, "eos"), (False, "eos"), (False, "mean"), (True, "mean")])
def test_text_embedding_ignores_padding(causal, pool):
  """The same caption padded to different lengths embeds the same; so does a different pad
  embedding. A changed text token does change it (the test can fail)."""
  model = unsharded_model(tiny_config(causal=causal, text_pool=pool))
  caption = [1, 7, 9, 11, 2]
  padded = jnp.array([caption + [0] * 7])
  short = jnp.array([caption])
  reference = call(model, "encode_texts", padded)
  np.testing.assert_allclose(call(model, "encode_texts", short), reference, atol=1e-6)
  model.text.embed[0] = model.text.embed[0] + 3.0  # the pad token's embedding
  np.testing.assert_allclose(call(model, "encode_texts", padded), reference, atol=1e-6)
  changed = jnp.array([[1, 7, 8, 11, 2] + [0] * 7])
  assert np.abs(call(model, "encode_texts", changed) - reference).max() > 1e-3


def test_causal_text_features_at_eos_ignore_later_tokens():
  model = unsharded_model(tiny_config(causal=True))
  tokens = jnp.array([[1, 7, 9, 2, 0, 0, 0, 0]])
  other = jnp.array([[1, 7, 9, 2, 5, 6, 7, 8]])  # anything after EOS
  np.testing.assert_allclose(call(model.text, "tokens", other)[:, :4], call(model.text, "tokens", tokens)[:, :4], atol=1e-6)


def count_params(model) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("image_pool,scan", [("cls", False), ("gap", True)])
def test_param_count_matches_model(image_pool, scan):
  cfg = tiny_config(image_pool=image_pool, scan=scan)
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: clip.TwoTower(cfg, nnx.Rngs(0)))
  assert clip.param_count(cfg) == count_params(model)


def dot_flops(jaxpr) -> float:
  """FLOPs of every dot_general in a jaxpr (2 per multiply-add), nested jaxprs included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract_lhs, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs_shape[d] for d in contract_lhs])
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        total += dot_flops(inner)
  return total


def test_train_flops_match_the_traced_matmuls():
  """3 x the forward dot_general FLOPs of one image-caption pair, counted from the jaxpr."""
  cfg = tiny_config(image_pool="cls", text_pool="eos")
  model, batch = unsharded_model(cfg), pair_batch(1)
  graphdef, params = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(batch["images"], batch["text_tokens"]))(params)
  assert clip.train_flops_per_example(cfg, TEXT_LEN) == pytest.approx(3 * dot_flops(jaxpr.jaxpr), rel=1e-9)


def test_vit_b16_clip_loss_and_grads_trace_at_scale():
  """ViT-B/16 (224 px) + a 12-layer 512-wide text tower: shapes only (eval_shape), no run."""
  stack = lambda d, heads: transformer.StackConfig(num_layers=12, num_heads=heads, embed_dim=d, mlp_dim=4 * d,
                                                   dtype="bfloat16", scan_layers=True, remat="dots")
  cfg = clip.TwoTowerConfig(
      image=vit.VitConfig(image_size=224, patch_size=16, channels=3, stack=stack(768, 12), pool="cls"),
      text=clip.TextTowerConfig(vocab_size=49408, max_len=77, stack=stack(512, 8)), joint_dim=512)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: clip.TwoTower(cfg, nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract)
  assert clip.param_count(cfg) == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  def loss_fn(p, images, tokens):
    m = nnx.merge(graphdef, p)
    image_emb, text_emb = m(images, tokens, dropout_rng=jax.random.key(0))
    return losses.clip_loss(image_emb, text_emb, m.logit_scale())
  out = jax.eval_shape(jax.jit(jax.value_and_grad(loss_fn)), params,
                       jax.ShapeDtypeStruct((4, 224, 224, 3), jnp.uint8), jax.ShapeDtypeStruct((4, 77), jnp.int32))
  loss_shape, grads = out
  assert loss_shape.shape == () and loss_shape.dtype == jnp.float32
  assert jax.tree.map(lambda g: (g.shape, g.dtype), grads) == jax.tree.map(lambda p: (p.shape, p.dtype), params)
  # ViT-B/16's image forward is ~17.6 GMACs; the flops estimate should be in that range.
  image_forward = vit.forward_matmul_flops(cfg.image) / 2
  assert 17e9 < image_forward < 18e9


# ---- config ---------------------------------------------------------------------------------

def run_config(**model_overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = defaults.image_text_data(image_size=16, text_len=TEXT_LEN)
  image = defaults.transformer(num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64)
  image.patch_size, image.pool = 4, "gap"
  text = defaults.transformer(num_layers=2, num_heads=2, embed_dim=24, mlp_dim=48)
  text.pool, text.causal = "eos", True
  c.model = ml_collections.ConfigDict(dict(image=image, text=text, joint_dim=16, loss="siglip",
                                           logit_scale_init=0.0, logit_scale_max=100.0, logit_bias_init=-10.0))
  return set_fields(c, **model_overrides)


def test_two_tower_config_from_run_config():
  c = run_config()
  clip.validate_two_tower(c)
  cfg = clip.two_tower_config(c, vocab_size=VOCAB)
  assert cfg.logit_scale_init == 10.0  # 0 = the SigLIP default
  assert cfg.image.pool == "gap" and cfg.image.num_patches == 16 and cfg.text.max_len == TEXT_LEN
  assert cfg.image.pixel_mean == (0.5, 0.5, 0.5)
  c.model.loss, c.model.logit_scale_init = "clip", 0.0
  assert clip.two_tower_config(c, VOCAB).logit_scale_init == pytest.approx(1 / 0.07)
  c.model.logit_scale_init = 20.0
  assert clip.two_tower_config(c, VOCAB).logit_scale_init == 20.0


@pytest.mark.parametrize("override,field", [
    (dict(model__loss="infonce"), "config.model.loss"),
    (dict(model__image__pool="avg"), "config.model.image.pool"),
    (dict(model__text__pool="cls"), "config.model.text.pool"),
    (dict(model__image__patch_size=5), "config.data.image_size"),
    (dict(model__text__embed_dim=25), "config.model.text.embed_dim"),
    (dict(model__image__positions="rotary"), "config.model.image.positions"),
    (dict(model__logit_scale_init=200.0), "config.model.logit_scale_init"),
    (dict(data__pixel_std=(0.5, 0.5)), "config.data.pixel_std"),
    (dict(data__text_len=1), "config.data.text_len"),
])
def test_bad_two_tower_config_names_the_field(override, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    clip.validate_two_tower(run_config(**override))


# ---- retrieval metrics (answers worked out by hand in the comments) --------------------------

def test_recall_at_k_by_hand():
  keys = np.array([[1, 0], [0, 1], [-1, 0], [0.6, 0.8]])
  queries = np.array([[3, 0], [0, 1], [-1, 0]])  # scale does not matter (cosine)
  correct = np.zeros((3, 4), bool)
  correct[0, 3] = correct[1, 1] = correct[2, 0] = True
  # q0: sims (1, 0, -1, 0.6), correct k3 at 0.6 behind k0 -> rank 1
  # q1: sims (0, 1, 0, 0.8), correct k1 first -> rank 0
  # q2: sims (-1, 0, 1, -0.6), correct k0 at -1, every wrong key >= -1 -> rank 3
  assert metrics.recall_at_k(queries, keys, correct, ks=(1, 2, 4)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3),
                                                                       4: 1.0}


def test_recall_ties_count_against_the_query():
  same = np.ones((3, 2))
  assert metrics.recall_at_k(same, same, np.eye(3, dtype=bool), ks=(1, 3)) == {1: 0.0, 3: 1.0}
  with pytest.raises(ValueError, match="query 1 has no correct key"):
    metrics.recall_at_k(same, same, np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], bool))


def test_image_text_recall_by_hand():
  images = np.array([[1, 0], [0, 1]])
  texts = np.array([[0, 1], [0.8, 0.6], [0.6, 0.8]])
  index = np.array([0, 0, 1])  # captions 0 and 1 describe image 0, caption 2 image 1
  # image 0: sims (0, 0.8, 0.6): its caption 1 is first -> hit@1
  # image 1: sims (1, 0.6, 0.8): its caption 2 is behind caption 0 -> hit@2 only
  # caption 0: sims (0, 1): image 0 second; caption 1: (0.8, 0.6) first; caption 2: (0.6, 0.8) first
  assert metrics.image_text_recall(images, texts, index, ks=(1, 2)) == {
      "image_to_text_recall@1": 0.5, "image_to_text_recall@2": 1.0,
      "text_to_image_recall@1": pytest.approx(2 / 3), "text_to_image_recall@2": 1.0}


def test_image_text_recall_blocks_agree(monkeypatch):
  """Query blocks smaller than the query count give the same answer as one block."""
  images, texts = random_embeddings(7, 4, 12), random_embeddings(14, 4, 13)
  index = np.repeat(np.arange(7), 2)
  whole = metrics.image_text_recall(images, texts, index)
  monkeypatch.setattr(metrics, "QUERY_BLOCK", 3)
  assert metrics.image_text_recall(images, texts, index) == whole


def test_class_embeddings_by_hand():
  prompts = np.array([[1, 0], [0, 2], [0, -3]])
  classes = np.array([0, 0, 1])
  # class 0: mean of (1, 0) and (0, 1) = (0.5, 0.5), renormalised; class 1: (0, -1)
  np.testing.assert_allclose(metrics.class_embeddings(prompts, classes, 2),
                             [[0.5 ** 0.5, 0.5 ** 0.5], [0, -1]], rtol=1e-6)
  with pytest.raises(ValueError, match="every class in"):
    metrics.class_embeddings(prompts, classes, 3)


def test_zero_shot_accuracy_by_hand():
  class_emb = np.array([[0.5 ** 0.5, 0.5 ** 0.5], [0, -1]])
  images = np.array([[1, 1], [0, -1], [1, -5]])
  labels = np.array([0, 0, 1])
  # image 0 is class 0's direction (right); image 1 is class 1's (wrong); image 2 is mostly
  # class 1's (right): 2 of 3. With k = 2 = all classes, every image is right.
  assert metrics.zero_shot_accuracy(images, labels, class_emb) == pytest.approx(2 / 3)
  assert metrics.zero_shot_accuracy(images, labels, class_emb, k=2) == 1.0
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    metrics.zero_shot_accuracy(images, np.array([0, 2, 1]), class_emb)
