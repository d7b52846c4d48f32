"""Speech models: cross-attention in the shared blocks, the encoder's padding invariance, the
decoder's causality and dependence on the audio, KV-cached decoding == teacher forcing (loop and
scan), greedy and beam search (beam 1 == greedy, scores are real log probs), seeding a
transcriber's encoder from a masked-prediction model, sharded (2, 2, 2) == one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax import parallel, speech_decoding
from fmjax.models import bert, gpt, speech, transformer

B, FRAMES, MELS, VOCAB, TEXT = 4, 24, 8, 16, 8
LENGTHS = (24, 15, 9, 20)      # valid frames per row; 4 rows split over data x fsdp = 4
MAX_LEN = TEXT + 1             # decoded rows: [BOS] + up to TEXT tokens
BOS = 1


def stack(scan=False, remat="none", dtype="float32", **overrides) -> transformer.StackConfig:
  fields = dict(num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, dtype=dtype, scan_layers=scan, remat=remat)
  return transformer.StackConfig(**{**fields, **overrides})


def encoder_config(strides=(1, 2), scan=False, remat="none", dtype="float32", **overrides):
  fields = dict(stack=stack(scan, remat, dtype), num_mels=MELS, stem_strides=strides, max_frames=64)
  return speech.SpeechEncoderConfig(**{**fields, **overrides})


def seq2seq_config(strides=(1, 2), scan=False, remat="none", dtype="float32") -> speech.SpeechSeq2SeqConfig:
  return speech.SpeechSeq2SeqConfig(encoder=encoder_config(strides, scan, remat, dtype),
                                    decoder=stack(scan, remat, dtype), vocab_size=VOCAB, max_text_len=TEXT)


def masked_config(strides=(2, 2), **encoder_overrides) -> speech.MaskedSpeechConfig:
  return speech.MaskedSpeechConfig(encoder=encoder_config(strides, **encoder_overrides), codebook_size=16)


def model_class(cfg):
  return speech.SpeechSeq2Seq if isinstance(cfg, speech.SpeechSeq2SeqConfig) else speech.MaskedSpeechModel


@functools.lru_cache(maxsize=None)
def structure(cfg):
  """(graphdef, abstract parameter state), with nothing computed."""
  with nnx.use_eager_sharding(False):
    return nnx.split(nnx.eval_shape(lambda: model_class(cfg)(cfg, nnx.Rngs(0))))


def random_params(cfg, seed=0):
  """Weights drawn in NumPy (nothing to compile): norm scales 1 + N(0, 0.3^2), all else
  N(0, 0.3^2), large enough that a fresh decoder does not just repeat its input token."""
  rng = np.random.default_rng(seed)
  def draw(path, leaf):
    noise = 0.3 * rng.standard_normal(leaf.shape).astype(np.float32)
    return 1.0 + noise if path[-2].key == "scale" else noise
  return jax.tree_util.tree_map_with_path(draw, structure(cfg)[1])


def model_with(cfg, params):
  return nnx.merge(structure(cfg)[0], params)


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  graphdef = structure(cfg)[0]
  return jax.jit(lambda params, *args: nnx.merge(graphdef, params)(*args))


def inputs(seed=0, lengths=LENGTHS, frames=FRAMES):
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((len(lengths), frames, MELS)).astype(np.float32)
  mask = np.arange(frames)[None] < np.asarray(lengths)[:, None]
  return jnp.asarray(feats), jnp.asarray(mask)


def random_tokens(seed=0, batch=B):
  tokens = np.random.default_rng(seed).integers(3, VOCAB, (batch, TEXT)).astype(np.int32)
  tokens[:, 0] = BOS
  return jnp.asarray(tokens)


def leaf_paths(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v)) for path, v in flat}


# ---- the shared blocks ---------------------------------------------------------------------------

BLOCK_LEAVES = {f"attn/{n}" for n in ("query", "key", "value", "query_bias", "key_bias", "value_bias", "out",
                                      "out_bias")} | {f"{ln}/{n}" for ln in ("ln_attn", "ln_mlp")
                                                      for n in ("scale", "bias")} | \
               {f"mlp/{n}" for n in ("fc", "fc_bias", "proj", "proj_bias")}


@pytest.mark.parametrize("scan", [False, True])
def test_cross_attention_off_leaves_gpt_and_bert_param_trees_unchanged(scan):
  """Without cross-attention a block holds exactly the parameters it always did (so GPT and
  BERT checkpoints and counts are unchanged); with it, one LayerNorm and one attention more."""
  plain, cross = stack(scan), stack(scan, cross_attention=True)
  with nnx.use_eager_sharding(False):
    g = nnx.state(nnx.eval_shape(lambda: gpt.Gpt(gpt.GptConfig(vocab_size=64, max_len=16, stack=plain),
                                                 nnx.Rngs(0))))
    b = nnx.state(nnx.eval_shape(lambda: bert.Bert(bert.BertConfig(vocab_size=64, max_len=16, stack=plain),
                                                   nnx.Rngs(0))))
    x = nnx.state(nnx.eval_shape(lambda: transformer.TransformerStack(cross, nnx.Rngs(0))))
  layer = "layers/" if scan else "layers/0/"  # the scanned layers share one stacked block

  def block(paths, under):
    return {p[len(under + layer):]: s for p, s in paths.items() if p.startswith(under + layer)}

  for model in (g, b):
    assert set(block(leaf_paths(model), "stack/")) == BLOCK_LEAVES
  assert sum(int(np.prod(s)) for s in leaf_paths(g).values()) == gpt.param_count(
      gpt.GptConfig(vocab_size=64, max_len=16, stack=plain))
  with_cross = block(leaf_paths(x), "")
  attention_leaves = {p.split("/")[1] for p in BLOCK_LEAVES if p.startswith("attn/")}
  assert set(with_cross) - BLOCK_LEAVES == {f"cross_attn/{n}" for n in attention_leaves} | \
      {"ln_cross/scale", "ln_cross/bias"}
  for n in attention_leaves:
    assert with_cross[f"cross_attn/{n}"] == with_cross[f"attn/{n}"]


def test_context_only_for_cross_attention_stacks():
  x = jax.ShapeDtypeStruct((1, 4, 32), jnp.float32)
  pos = jnp.zeros((1, 4), jnp.int32)

  def call(cross, **kwargs):
    def run(x):
      layers = transformer.TransformerStack(stack(num_layers=1, cross_attention=cross), nnx.Rngs(0))
      return layers(x, positions_BxT=pos, mask=None, is_causal=True, **kwargs)[0]
    with nnx.use_eager_sharding(False):
      return jax.eval_shape(run, x)

  assert call(True, context_BxSxD=jnp.zeros((1, 6, 32)), context_mask_BxS=jnp.ones((1, 6), bool)).shape == x.shape
  with pytest.raises(ValueError, match="cross_attention=False"):
    call(False, context_BxSxD=jnp.zeros((1, 6, 32)))
  with pytest.raises(ValueError, match="needs context_BxSxD"):
    call(True)
  with pytest.raises(ValueError, match="not supported"):
    nnx.eval_shape(lambda: transformer.Block(stack(cross_attention=True, adaln=True), nnx.Rngs(0)))


@pytest.mark.parametrize("scan", [False, True])
def test_cross_caches_and_beam_reordering_in_both_layouts(scan):
  """init_caches fills each layer's context keys/values (what the blocks would project), and
  gather_cache_rows moves only the self-attention rows, along the batch axis of either layout."""
  cfg = stack(scan, cross_attention=True)
  with nnx.use_eager_sharding(False):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: transformer.TransformerStack(cfg, nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  layers = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), abstract))
  context = jnp.asarray(rng.standard_normal((3, 5, 32)), jnp.float32)
  caches = layers.init_caches(3, 4, jnp.float32, context_BxSxD=context)
  per_layer = (lambda c, i: jax.tree.map(lambda a: a[i], c)) if scan else (lambda c, i: c[i])
  block_graphdef, blocks = nnx.split(layers.layers)
  for i in range(cfg.num_layers):
    # Under scan the layers are one Block with stacked parameters: layer i is its slice i.
    block = nnx.merge(block_graphdef, jax.tree.map(lambda a: a[i], blocks)) if scan else layers.layers[i]
    want = block.cross_attn.context_kv(context)
    np.testing.assert_allclose(per_layer(caches, i)["cross_k"], want["cross_k"], atol=1e-6)
    np.testing.assert_allclose(per_layer(caches, i)["cross_v"], want["cross_v"], atol=1e-6)
  caches = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), caches)
  rows = jnp.array([2, 2, 0])
  moved = layers.gather_cache_rows(caches, rows)
  for i in range(cfg.num_layers):
    before, after = per_layer(caches, i), per_layer(moved, i)
    np.testing.assert_array_equal(after["k"], before["k"][rows])
    np.testing.assert_array_equal(after["v"], before["v"][rows])
    np.testing.assert_array_equal(after["cross_k"], before["cross_k"])
  assert layers.cache_length(caches) == 4


# ---- the encoder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("strides", [(1, 2), (2, 2)])
def test_encoder_ignores_padding(strides):
  """Valid units encode the same whatever the padded frames hold and however many there are:
  a row padded into a longer batch == the row alone (the BEST-RQ head's logits likewise)."""
  cfg = masked_config(strides)
  params = random_params(cfg)
  feats, mask = inputs()
  noisy = jnp.where(mask[..., None], feats, 100.0 * jnp.cos(jnp.arange(FRAMES))[None, :, None])
  logits, unit_mask = _forward(cfg)(params, noisy, mask)
  assert logits.dtype == jnp.float32 and logits.shape == (B, cfg.encoder.units(FRAMES), 16)
  want_units = [cfg.encoder.units(n) for n in LENGTHS]
  np.testing.assert_array_equal(np.asarray(unit_mask).sum(1), want_units)
  alone, alone_mask = _forward(cfg)(params, feats[1:2, :LENGTHS[1]], mask[1:2, :LENGTHS[1]])
  assert np.asarray(alone_mask).all() and alone.shape[1] == want_units[1]
  np.testing.assert_allclose(np.asarray(logits[1, :want_units[1]]), np.asarray(alone[0]), atol=1e-5)
  again, _ = _forward(cfg)(params, feats, mask)
  np.testing.assert_allclose(np.asarray(again)[np.asarray(unit_mask)], np.asarray(logits)[np.asarray(unit_mask)],
                             atol=1e-5)
  assert np.abs(np.asarray(logits)).mean() > 1e-2


def test_encoder_config_errors():
  with pytest.raises(ValueError, match="stem_strides"):
    encoder_config(strides=())
  with pytest.raises(ValueError, match="stem_strides"):
    encoder_config(strides=(2, 0))
  with pytest.raises(ValueError, match="decoder.embed_dim=64 must equal"):
    speech.SpeechSeq2SeqConfig(encoder=encoder_config(), decoder=stack(embed_dim=64), vocab_size=16, max_text_len=8)
  cfg = masked_config()
  with pytest.raises(ValueError, match="max_frames=64"):
    jax.eval_shape(lambda p: model_with(cfg, p)(*inputs(frames=80, lengths=(80,))), structure(cfg)[1])
  with pytest.raises(ValueError, match=r"expected shape \(batch, frames, 8\)"):
    jax.eval_shape(lambda p: model_with(cfg, p)(jnp.zeros((1, 16, 80)), jnp.ones((1, 16), bool)), structure(cfg)[1])
  cfg = seq2seq_config()
  assert cfg.decoder.cross_attention  # switched on by the config
  with pytest.raises(ValueError, match="max_text_len=8"):
    jax.eval_shape(lambda p: model_with(cfg, p)(*inputs(), jnp.ones((B, 9), jnp.int32)), structure(cfg)[1])


def test_bfloat16_compute_float32_params_and_logits():
  for cfg in (masked_config(dtype="bfloat16"), seq2seq_config(dtype="bfloat16")):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(structure(cfg)[1]))
    args = inputs() + ((random_tokens(),) if isinstance(cfg, speech.SpeechSeq2SeqConfig) else ())
    out = jax.eval_shape(lambda p: model_with(cfg, p)(*args), structure(cfg)[1])
    logits = out if isinstance(cfg, speech.SpeechSeq2SeqConfig) else out[0]
    assert logits.dtype == jnp.float32
    enc = jax.eval_shape(lambda p: model_with(cfg, p).encoder(*inputs())[0], structure(cfg)[1])
    assert enc.dtype == jnp.bfloat16
  # The decoding loops trace with bf16 caches (their carries keep one dtype).
  decode = dict(bos_id=BOS, eos_id=2, max_len=MAX_LEN)
  greedy = jax.eval_shape(lambda p: speech_decoding.greedy_tokens(model_with(cfg, p), *inputs(), **decode),
                          structure(cfg)[1])
  tokens, scores = jax.eval_shape(lambda p: speech_decoding.beam_tokens(model_with(cfg, p), *inputs(), beam=2,
                                                                       **decode), structure(cfg)[1])
  assert greedy.dtype == tokens.dtype == jnp.int32 and scores.dtype == jnp.float32 and tokens.shape == (B, MAX_LEN)


# ---- the decoder ---------------------------------------------------------------------------------

def test_decoder_is_causal_by_gradient():
  """d logits[t] / d (position embedding of slot s) is zero for s > t, nonzero for s <= t: the
  position table enters only at its own slot, so this sees exactly what each input reaches."""
  cfg = seq2seq_config()
  params = nnx.to_pure_dict(random_params(cfg))
  feats, mask = inputs()
  tokens = random_tokens()

  def logits_of(pos_embed):
    p = {**params, "decoder": {**params["decoder"], "pos_embed": pos_embed}}
    return model_with(cfg, p)(feats[:1], mask[:1], tokens[:1])[0]

  jac_LxVxPxD = jax.jit(jax.jacrev(logits_of))(params["decoder"]["pos_embed"])
  reach_LxP = np.abs(np.asarray(jac_LxVxPxD)).sum(axis=(1, 3))
  for t in range(TEXT):
    assert np.all(reach_LxP[t, t + 1:] == 0), f"output {t} depends on later tokens: {reach_LxP[t]}"
    assert np.all(reach_LxP[t, :t + 1] > 0), f"output {t} ignores earlier tokens: {reach_LxP[t]}"


def test_decoder_depends_on_valid_frames_only():
  """Every valid frame reaches the logits; no padded frame does (the stem zeroes them)."""
  cfg = seq2seq_config()
  params = random_params(cfg)
  feats, mask = inputs()
  tokens = random_tokens()
  grads = jax.jit(jax.grad(lambda f: model_with(cfg, params)(f, mask, tokens).sum()))(feats)
  reach_BxT = np.abs(np.asarray(grads)).sum(-1)
  for row, n in enumerate(LENGTHS):
    assert np.all(reach_BxT[row, :n] > 0), f"row {row}: valid frames ignored: {reach_BxT[row]}"
    assert np.all(reach_BxT[row, n:] == 0), f"row {row}: padded frames reach the logits: {reach_BxT[row]}"


@functools.lru_cache(maxsize=None)
def _cached_vs_full(cfg):
  """One jit: teacher-forced logits, and the same from the KV cache (3 tokens at once, then one
  token per step)."""
  graphdef = structure(cfg)[0]

  def run(params, feats, mask, tokens):
    model = nnx.merge(graphdef, params)
    full = model(feats, mask, tokens)
    enc, enc_mask = model.encode(feats, mask)
    caches = model.init_caches(tokens.shape[0], TEXT, enc)
    first, caches = model.decode(tokens[:, :3], None, enc_mask, caches, 0)

    def step(caches, i):
      logits, caches = model.decode(jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1), None, enc_mask, caches, i)
      return caches, logits[:, 0]

    _, rest = jax.lax.scan(step, caches, jnp.arange(3, TEXT))
    return full, jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)
  return jax.jit(run)


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full")])
def test_kv_cached_decoding_matches_teacher_forcing(scan, remat):
  cfg = seq2seq_config(scan=scan, remat=remat)
  full, cached = _cached_vs_full(cfg)(random_params(cfg), *inputs(), random_tokens())
  assert full.dtype == cached.dtype == jnp.float32
  assert np.abs(np.asarray(full)).mean() > 1e-1
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5, rtol=1e-5)


def _length(row, eos) -> int:
  """Tokens after BOS up to and including the first EOS (all of them if none)."""
  hits = np.flatnonzero(row[1:] == eos)
  return int(hits[0]) + 1 if hits.size else len(row) - 1


def _eos_that_occurs(cfg, params, feats, mask) -> int:
  """An EOS id that greedy decoding emits in row 0, though not as its first token (so stopping
  early, padding and finished beams are all exercised)."""
  never = np.asarray(speech_decoding.greedy_decode(model_with(cfg, params), feats, mask, bos_id=BOS,
                                                   eos_id=VOCAB + 1, max_len=MAX_LEN))
  later = [t for t in never[0, 2:] if t != never[0, 1]]
  assert later, f"greedy row 0 repeats one token: {never[0]}"
  return int(later[0])


@pytest.mark.parametrize("scan", [False, True])
def test_greedy_matches_teacher_forced_argmax(scan):
  cfg = seq2seq_config(scan=scan)
  params = random_params(cfg)
  feats, mask = inputs()
  model = model_with(cfg, params)
  eos = _eos_that_occurs(cfg, params, feats, mask)
  out = np.asarray(speech_decoding.greedy_decode(model, feats, mask, bos_id=BOS, eos_id=eos, max_len=MAX_LEN))
  assert out.dtype == np.int32 and out.shape == (B, MAX_LEN)
  assert np.all(out[:, 0] == BOS)
  logits = np.asarray(_forward(cfg)(params, feats, mask, jnp.asarray(out[:, :-1])))
  for row in range(B):
    n = _length(out[row], eos)
    np.testing.assert_array_equal(out[row, 1:n + 1], logits[row, :n].argmax(-1))
    assert np.all(out[row, n + 1:] == 0), f"row {row}: tokens after EOS: {out[row]}"
  assert 2 <= _length(out[0], eos) < TEXT and out[0, _length(out[0], eos)] == eos


def _sequence_score(cfg, params, feats, mask, tokens, eos, length_penalty):
  """Length-normalised log prob of each row by teacher forcing."""
  logp = np.asarray(jax.nn.log_softmax(_forward(cfg)(params, feats, mask, jnp.asarray(tokens[:, :-1])), -1))
  scores = []
  for row in range(tokens.shape[0]):
    n = _length(tokens[row], eos)
    total = sum(logp[row, t, tokens[row, t + 1]] for t in range(n))
    scores.append(total / n ** length_penalty)
  return np.asarray(scores)


def test_beam_search():
  """Beam 1 == greedy exactly; scores are the hypotheses' length-normalised log probs; rows are
  laid out as greedy's; by plain log prob (where stopping early is exact) a wider beam's best is
  at least as likely as greedy's."""
  cfg = seq2seq_config()
  params = random_params(cfg)
  feats, mask = inputs()
  model = model_with(cfg, params)
  eos = _eos_that_occurs(cfg, params, feats, mask)
  greedy = np.asarray(speech_decoding.greedy_decode(model, feats, mask, bos_id=BOS, eos_id=eos, max_len=MAX_LEN))
  differs = []
  for penalty in (1.0, 0.0):
    one, one_scores = speech_decoding.beam_search(model, feats, mask, beam=1, bos_id=BOS, eos_id=eos,
                                                  max_len=MAX_LEN, length_penalty=penalty)
    np.testing.assert_array_equal(np.asarray(one), greedy)
    wide, wide_scores = speech_decoding.beam_search(model, feats, mask, beam=4, bos_id=BOS, eos_id=eos,
                                                    max_len=MAX_LEN, length_penalty=penalty)
    wide, wide_scores, one_scores = np.asarray(wide), np.asarray(wide_scores), np.asarray(one_scores)
    assert wide.dtype == np.int32 and wide.shape == (B, MAX_LEN) and np.all(wide[:, 0] == BOS)
    if penalty == 0.0:
      assert np.all(wide_scores >= one_scores - 1e-5), (wide_scores, one_scores)
    for tokens, scores in ((greedy, one_scores), (wide, wide_scores)):
      np.testing.assert_allclose(scores, _sequence_score(cfg, params, feats, mask, tokens, eos, penalty),
                                 rtol=1e-4, atol=1e-5)
      for row in tokens:
        assert np.all(row[_length(row, eos) + 1:] == 0)
    differs.append(not np.array_equal(wide, greedy))
  assert any(differs), "the wider beam should find other hypotheses than greedy here"
  with pytest.raises(ValueError, match="beam=0"):
    speech_decoding.beam_search(model, feats, mask, beam=0, bos_id=BOS, eos_id=eos, max_len=MAX_LEN)
  with pytest.raises(ValueError, match="max_len=10"):
    speech_decoding.greedy_decode(model, feats, mask, bos_id=BOS, eos_id=eos, max_len=MAX_LEN + 1)


# ---- seeding the encoder -------------------------------------------------------------------------

def test_copy_encoder_params_from_a_masked_model():
  """A 4x BEST-RQ encoder into a 2x transcriber: the encoder subtree copied leaf for leaf, the
  decoder untouched; a shape mismatch names the parameter and both shapes."""
  src_cfg, dst_cfg = masked_config(strides=(2, 2)), seq2seq_config(strides=(1, 2))
  src, dst = random_params(src_cfg, seed=1), random_params(dst_cfg, seed=2)
  for dst_form in (dst, nnx.to_pure_dict(dst)):
    out, copied = speech.copy_encoder_params(src, dst_form)
    assert type(out) is type(dst_form)
    out_leaves, src_pure, dst_pure = (nnx.to_pure_dict(t) if isinstance(t, nnx.State) else t
                                      for t in (out, src, dst))
    assert sorted(copied) == sorted("encoder/" + p for p in leaf_paths(src_pure["encoder"]))
    jax.tree.map(np.testing.assert_array_equal, out_leaves["encoder"], src_pure["encoder"])
    jax.tree.map(np.testing.assert_array_equal, out_leaves["decoder"], dst_pure["decoder"])
    assert not np.array_equal(dst_pure["encoder"]["ln_final"]["scale"], out_leaves["encoder"]["ln_final"]["scale"])
  model = model_with(dst_cfg, dst)
  nnx.update(model, out)
  np.testing.assert_array_equal(model.encoder.stem.convs[0].kernel[...], src["encoder"]["stem"]["convs"][0]["kernel"])
  more_mels = masked_config(num_mels=10)
  with pytest.raises(ValueError, match=r"encoder/stem/convs/0/kernel has shape \(3, 8, 32\) here but \(3, 10, 32\)"):
    speech.copy_encoder_params(random_params(more_mels), dst)
  with pytest.raises(ValueError, match="trees differ"):
    speech.copy_encoder_params(random_params(masked_config(strides=(2, 2, 2))), dst)


# ---- sharded == one device -----------------------------------------------------------------------

def test_sharded_equals_single_device():
  """Parameters sharded by their logical names over (data 2, fsdp 2, tensor 2), the batch over
  data x fsdp: the transcriber's teacher-forced logits and greedy tokens of one device (greedy
  traced inside the caller's jit, as the eval step does)."""
  cfg = seq2seq_config()
  params = nnx.to_pure_dict(random_params(cfg))
  feats, mask = inputs()
  tokens = random_tokens()
  want = np.asarray(_forward(cfg)(params, feats, mask, tokens))
  want_greedy = np.asarray(speech_decoding.greedy_decode(model_with(cfg, params), feats, mask, bos_id=BOS,
                                                         eos_id=VOCAB + 1, max_len=MAX_LEN))
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.LOGICAL_RULES):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: speech.SpeechSeq2Seq(cfg, nnx.Rngs(0))))
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract))
    shardings = jax.tree.map(lambda s: jax.NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, jax.P))
    used = {axis for s in jax.tree.leaves(shardings) for entry in s.spec
            for axis in (entry if isinstance(entry, tuple) else (entry,))}
    assert {"fsdp", "tensor"} <= used, "parameters should be sharded over both parameter axes"
    sharded = jax.device_put(params, shardings)
    batch = parallel.global_batch({"feats": feats, "mask": mask, "tokens": tokens}, mesh)
    got = jax.jit(lambda p, f, m, t: nnx.merge(graphdef, p)(f, m, t))(sharded, batch["feats"], batch["mask"],
                                                                       batch["tokens"])
    got_greedy = jax.jit(lambda p, f, m: speech_decoding.greedy_tokens(
        nnx.merge(graphdef, p), f, m, bos_id=BOS, eos_id=VOCAB + 1, max_len=MAX_LEN))(sharded, batch["feats"],
                                                                                       batch["mask"])
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_greedy), want_greedy)
