"""The diffusion denoisers: U-Net and DiT shapes and dtypes, exact parameter counts, FLOP counts
by hand, clear errors, the condition and the timestep reaching the output, adaLN-Zero blocks
starting as the identity, scan == unrolled, remat == none, sharded (2, 2, 2) == one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax import parallel
from fmjax.models import dit, timestep_embedding, transformer, unet, vit

B, SIZE, COND = 4, 8, 8


def small_unet_config(cond_dim=COND, dtype="float32", **overrides) -> unet.UNetConfig:
  fields = dict(image_size=SIZE, channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), attention_heads=2, num_groups=4, cond_dim=cond_dim, dtype=dtype)
  return unet.UNetConfig(**{**fields, **overrides})


def small_stack(dtype="float32", **overrides) -> transformer.StackConfig:
  fields = dict(num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, dtype=dtype, adaln=True)
  return transformer.StackConfig(**{**fields, **overrides})


def small_dit_config(cond_dim=COND, dtype="float32", **stack_overrides) -> dit.DiTConfig:
  return dit.DiTConfig(image_size=SIZE, channels=1, patch_size=2, stack=small_stack(dtype, **stack_overrides),
                       cond_dim=cond_dim)


def model_class(cfg):
  return unet.UNet if isinstance(cfg, unet.UNetConfig) else dit.DiT


@functools.lru_cache(maxsize=None)
def structure(cfg):
  """(graphdef, abstract parameter state) of the model, without computing anything."""
  with nnx.use_eager_sharding(False):
    return nnx.split(nnx.eval_shape(lambda: model_class(cfg)(cfg, nnx.Rngs(0))))


def initial_params(module_fn, seed=0):
  """The module's own initialisation, under one jit. The rbg PRNG here: XLA compiles its bit
  generator in a fraction of threefry's time on CPU, and op by op every initializer of every new
  shape would compile on its own (tens of seconds for a small U-Net)."""
  with nnx.use_eager_sharding(False):
    return jax.jit(lambda: nnx.split(module_fn(nnx.Rngs(jax.random.key(seed, impl="rbg"))))[1])()


def random_params(abstract, seed=1):
  """Weights drawn in NumPy (nothing to compile): norm scales 1 + N(0, 0.1^2), all else
  N(0, 0.1^2), so every layer is alive, the zero-initialised ones included (they make a fresh
  denoiser's prediction exactly zero, and the tests below need to see through them)."""
  rng = np.random.default_rng(seed)
  def draw(path, leaf):
    noise = 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
    return 1.0 + noise if path[-2].key == "scale" else noise
  return jax.tree_util.tree_map_with_path(draw, abstract)


def model_with(cfg, params):
  return nnx.merge(structure(cfg)[0], params)


@functools.lru_cache(maxsize=None)
def _compiled(cfg):
  graphdef = structure(cfg)[0]
  return jax.jit(lambda params, x, t, c: nnx.merge(graphdef, params)(x, t, c))


def predict(cfg, params, x, t, cond):
  """The model's prediction under jit: one compile per config, shared by the tests."""
  return np.asarray(_compiled(cfg)(params, x, t, cond))


def inputs(cond_dim=COND, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, SIZE, SIZE, 1)).astype(np.float32)
  t = rng.integers(0, 1000, B).astype(np.int32)
  cond = rng.normal(size=(B, cond_dim)).astype(np.float32) if cond_dim else None
  return x, t, cond


def num_params(abstract) -> int:
  return sum(x.size for x in jax.tree.leaves(abstract))


CONFIGS = {"unet": small_unet_config, "dit": small_dit_config}


# ---- shapes, dtypes, parameter and FLOP counts -----------------------------------------------

@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("cond_dim", [0, COND])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prediction_is_a_float32_image(arch, cond_dim, dtype):
  cfg = CONFIGS[arch](cond_dim, dtype)
  graphdef, abstract = structure(cfg)
  out = jax.eval_shape(lambda p, *args: nnx.merge(graphdef, p)(*args), abstract, *inputs(cond_dim))
  assert out.shape == (B, SIZE, SIZE, 1) and out.dtype == jnp.float32


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_bfloat16_compute_only_rounds(arch):
  """The same weights in both compute dtypes: close predictions, and not identical ones (the
  dtype does reach the computation)."""
  f32, bf16 = CONFIGS[arch](COND, "float32"), CONFIGS[arch](COND, "bfloat16")
  params = random_params(structure(f32)[1])
  want, got = predict(f32, params, *inputs()), predict(bf16, params, *inputs())
  scale = np.abs(want).mean()
  assert scale > 1e-2
  assert 0 < np.abs(got - want).mean() < 0.05 * scale


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_fresh_denoiser_predicts_zero(arch):
  """Zero-initialised output layers: a new model's prediction is exactly 0, whatever the input."""
  cfg = CONFIGS[arch](COND)
  params = initial_params(lambda rngs: model_class(cfg)(cfg, rngs))
  assert any(np.any(x) for x in jax.tree.leaves(params))
  np.testing.assert_array_equal(predict(cfg, params, *inputs()), 0.0)


def test_param_counts_match_the_built_models():
  for cfg in (small_unet_config(), small_unet_config(0, channel_mults=(1, 2, 3), attention_resolutions=(8, 2),
                                                     num_res_blocks=2, base_channels=4, num_groups=2),
              small_dit_config(), small_dit_config(0), small_dit_config(scan_layers=True)):
    counted = (unet if isinstance(cfg, unet.UNetConfig) else dit).param_count(cfg)
    assert counted == num_params(structure(cfg)[1]), cfg


def test_ddpm_cifar10_unet_has_its_35_7m_parameters():
  cfg = unet.UNetConfig(image_size=32, channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                        attention_resolutions=(16,), attention_heads=1, dropout=0.1, num_groups=32)
  count = unet.param_count(cfg)
  assert abs(count - 35.7e6) < 0.01 * 35.7e6
  assert count == 35_746_307  # diffusers' UNet2DModel in the google/ddpm-cifar10-32 layout, exactly


def test_dit_forward_flops_by_hand():
  cfg = small_dit_config()
  s = cfg.stack
  n, d, f, k, L = cfg.num_patches, s.embed_dim, s.mlp_dim, cfg.patch_dim, s.num_layers
  embedding = 2 * (dit.FREQUENCY_DIM * d + d * d + COND * d)
  per_layer = 2 * n * (4 * d * d + 2 * d * f) + 2 * 2 * n * n * d + 2 * d * 6 * d  # + scores, values, adaLN
  final = 2 * d * 2 * d + 2 * n * d * k
  assert dit.forward_flops(cfg) == 2 * n * k * d + embedding + L * per_layer + final


def test_unet_forward_flops_by_hand():
  """One level, one block, no attention but the middle's: every conv and matmul written out."""
  cfg = small_unet_config(0, channel_mults=(1,), attention_resolutions=())
  p, c, e = SIZE * SIZE, cfg.base_channels, cfg.emb_dim
  conv3 = lambda i, o: 2 * p * 9 * i * o
  res = lambda i, o: conv3(i, o) + 2 * e * o + conv3(o, o) + (2 * p * i * o if i != o else 0)
  attention = 4 * 2 * p * c * c + 2 * 2 * p * p * c
  expected = (2 * (c * e + e * e) + conv3(1, c) + res(c, c) + 2 * res(c, c) + attention + 2 * res(2 * c, c)
              + conv3(c, 1))
  assert unet.forward_flops(cfg) == expected


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: unet.UNetConfig(image_size=30, channels=3),
     "config.data.image_size=30 must be divisible by 2**(levels-1)=8 for config.model.unet.channel_mults=(1, 2, 2, 2)"),
    (lambda: small_unet_config(num_groups=3), "config.model.unet.num_groups=3 must divide"),
    (lambda: small_unet_config(attention_resolutions=(16,)), "config.model.unet.attention_resolutions=(16,)"),
    (lambda: small_unet_config(attention_heads=3), "config.model.unet.attention_heads=3"),
    (lambda: small_unet_config(dtype="float16"), "config.model.dtype='float16'"),
    (lambda: dit.DiTConfig(image_size=30, channels=3, patch_size=4, stack=small_stack()),
     "config.data.image_size=30 must be divisible by config.model.dit.patch_size=4"),
    (lambda: dit.DiTConfig(image_size=8, channels=1, patch_size=2, stack=small_stack(adaln=False)), "adaln=True"),
    (lambda: dit.DiTConfig(image_size=8, channels=1, patch_size=2, stack=small_stack(embed_dim=30, num_heads=2)),
     "config.model.dit.embed_dim=30 must be divisible by 4"),
])
def test_bad_configs_name_the_field(make, message):
  with pytest.raises(ValueError) as info:
    make()
  assert message in str(info.value)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_bad_inputs_are_refused(arch):
  conditional, unconditional = [model_with(cfg, random_params(structure(cfg)[1]))
                                for cfg in (CONFIGS[arch](COND), CONFIGS[arch](0))]
  x, t, cond = inputs()
  with pytest.raises(ValueError, match=r"unconditional \(cond_dim=0\) but was given cond_BxE of shape \(4, 8\)"):
    unconditional(x, t, cond)
  with pytest.raises(ValueError, match=r"conditional \(cond_dim=8\): cond_BxE of shape \(4, 8\) is required"):
    conditional(x, t, None)
  with pytest.raises(ValueError, match=r"cond_BxE: expected shape \(4, 8\), got \(4, 5\)"):
    conditional(x, t, cond[:, :5])
  with pytest.raises(ValueError, match=r"x_BxHxWxC: expected shape \(batch, 8, 8, 1\).*got \(4, 16, 16, 1\)"):
    conditional(np.zeros((B, 16, 16, 1), np.float32), t, cond)
  with pytest.raises(ValueError, match=r"got \(4, 8, 8, 3\)"):
    conditional(np.zeros((B, SIZE, SIZE, 3), np.float32), t, cond)
  with pytest.raises(ValueError, match=r"t_B: expected shape \(4,\)"):
    conditional(x, t[:2], cond)


# ---- what reaches the output ------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_condition_and_timestep_change_the_prediction(arch):
  cfg = CONFIGS[arch](COND)
  params = random_params(structure(cfg)[1])
  x, t, cond = inputs()
  base = predict(cfg, params, x, t, cond)
  np.testing.assert_array_equal(predict(cfg, params, x, t, cond), base)
  scale = np.abs(base).mean()
  # Every row gets another condition / timestep, so every row's prediction moves.
  for moved in (predict(cfg, params, x, t, cond[::-1].copy()), predict(cfg, params, x, (t + 250) % 1000, cond)):
    per_row = np.abs(moved - base).mean(axis=(1, 2, 3))
    assert np.all(per_row > 0.01 * scale), per_row


def test_sinusoidal_embedding_against_numpy():
  t = np.array([0, 1, 17, 999], np.int32)
  got = np.asarray(timestep_embedding.sinusoidal_embedding(jnp.asarray(t), 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
  assert got.shape == (4, 8) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-4)  # float32 angles of up to ~1000 rad
  odd = np.asarray(timestep_embedding.sinusoidal_embedding(jnp.asarray(t), 9))
  np.testing.assert_array_equal(odd[:, :8], got)
  np.testing.assert_array_equal(odd[:, 8], 0)


def test_dit_patches_and_positions():
  x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  np.testing.assert_array_equal(dit.unpatchify(vit.patchify(jnp.asarray(x), 2), 2, 3), x)
  pos = dit.sincos_position_embedding(4, 16)
  assert pos.shape == (16, 16)
  # Token r * 4 + c: the first half depends on the row only, the second on the column only.
  np.testing.assert_array_equal(pos[1, :8], pos[0, :8])
  np.testing.assert_array_equal(pos[4, 8:], pos[0, 8:])
  np.testing.assert_allclose(pos[0], np.r_[np.zeros(4), np.ones(4), np.zeros(4), np.ones(4)])
  assert len({row.tobytes() for row in pos}) == 16


# ---- adaLN-Zero in the shared transformer stack -----------------------------------------------

def stack_structure(cfg):
  with nnx.use_eager_sharding(False):
    return nnx.split(nnx.eval_shape(lambda: transformer.TransformerStack(cfg, nnx.Rngs(0))))


def test_adaln_zero_blocks_start_as_the_identity():
  cfg = small_stack()
  graphdef, abstract = stack_structure(cfg)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 32)).astype(np.float32)
  c = rng.normal(size=(2, 32)).astype(np.float32)
  positions = np.broadcast_to(np.arange(5), (2, 5))
  run = jax.jit(lambda p, x, c: nnx.merge(graphdef, p)(x, positions_BxT=positions, mask=None, is_causal=False,
                                                       condition_BxD=c)[0])
  fresh = initial_params(lambda rngs: transformer.TransformerStack(cfg, rngs))
  np.testing.assert_array_equal(run(fresh, x, c), x)
  moved = random_params(abstract)
  assert np.abs(run(moved, x, c) - x).mean() > 1e-2
  assert np.abs(run(moved, x, c[::-1].copy()) - run(moved, x, c)).mean() > 1e-2
  with pytest.raises(ValueError, match="needs condition_BxD"):
    run(fresh, x, None)


def test_adaln_changes_only_adaln_stacks():
  plain_graph, plain = stack_structure(small_stack(adaln=False))
  block_plain, block_ada = nnx.to_pure_dict(plain)["layers"][0], nnx.to_pure_dict(stack_structure(small_stack())[1])["layers"][0]
  assert "modulation" not in block_plain and set(block_plain["ln_attn"]) == {"scale", "bias"}
  assert "ln_attn" not in block_ada and block_ada["modulation"]["kernel"].shape == (32, 6 * 32)
  stack = nnx.merge(plain_graph, random_params(plain))
  with pytest.raises(ValueError, match="adaln=False"):
    stack(np.zeros((1, 3, 32), np.float32), positions_BxT=np.zeros((1, 3), np.int32), mask=None, is_causal=False,
          condition_BxD=np.zeros((1, 32), np.float32))


def _stacked_layers(params):
  """Unrolled DiT params -> the scanned layout: the blocks stacked on a leading 'layers' axis."""
  layers = params["stack"]["layers"]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *[layers[i] for i in sorted(layers)])
  return {**params, "stack": {"layers": stacked}}


def value_and_input_grads(cfg, params, x, t, cond):
  """sum(prediction^2) and its gradient with respect to the image and the condition."""
  graphdef = structure(cfg)[0]
  loss = lambda x, c: jnp.sum(nnx.merge(graphdef, params)(x, t, c) ** 2)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, cond)


def test_dit_scanned_and_rematerialised_equals_unrolled():
  unrolled_cfg, scanned_cfg = small_dit_config(), small_dit_config(scan_layers=True, remat="full")
  params = nnx.to_pure_dict(random_params(structure(unrolled_cfg)[1]))
  want, want_grads = value_and_input_grads(unrolled_cfg, params, *inputs())
  got, got_grads = value_and_input_grads(scanned_cfg, _stacked_layers(params), *inputs())
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    assert np.abs(w).max() > 0
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_unet_remat_equals_no_remat():
  # One level (a down level, the middle with its attention, an up level: each checkpointed), to
  # compile fast.
  plain_cfg, remat_cfg = [small_unet_config(channel_mults=(1,), attention_resolutions=(), remat=remat)
                          for remat in (False, True)]
  params = random_params(structure(plain_cfg)[1])  # remat changes no parameter
  want, want_grads = value_and_input_grads(plain_cfg, params, *inputs())
  got, got_grads = value_and_input_grads(remat_cfg, params, *inputs())
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    assert np.abs(w).max() > 0
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


# ---- sharded == one device ----------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_sharded_forward_equals_single_device(arch):
  """Parameters sharded by their logical names over a (data 2, fsdp 2, tensor 2) mesh, the batch
  over data x fsdp: the prediction of one device, to float32 rounding."""
  cfg = CONFIGS[arch](COND)
  params = nnx.to_pure_dict(random_params(structure(cfg)[1]))
  x, t, cond = inputs()
  want = predict(cfg, params, x, t, cond)
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.LOGICAL_RULES):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_class(cfg)(cfg, nnx.Rngs(0))))
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract))
    shardings = jax.tree.map(lambda s: jax.NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, jax.P))
    used = {axis for s in jax.tree.leaves(shardings) for entry in s.spec
            for axis in (entry if isinstance(entry, tuple) else (entry,))}
    assert {"fsdp", "tensor"} <= used, "parameters should be sharded over both parameter axes"
    batch = parallel.global_batch({"x": x, "t": t, "cond": cond}, mesh)
    fn = jax.jit(lambda p, x, t, c: nnx.merge(graphdef, p)(x, t, c))
    got = fn(jax.device_put(params, shardings), batch["x"], batch["t"], batch["cond"])
  assert len(got.sharding.device_set) == 8
  assert np.abs(want).mean() > 1e-2
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
