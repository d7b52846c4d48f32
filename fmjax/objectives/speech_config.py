"""The speech objectives' config: checks, and the frozen model descriptions built from it.

Every check raises ConfigError naming the field, before anything is built or compiled; the
models' own shape rules (fmjax.models.speech) are re-raised as ConfigErrors.
"""

from fmjax.field_checks import ConfigError, check as _check, is_int as _is_int
from fmjax.data import speech as speech_data
from fmjax.models import log_mel, speech, transformer
from fmjax.objectives import speech_common, speech_features, text_assets


def feature_config(config) -> speech_features.FeatureConfig:
  f = config.features
  return speech_features.FeatureConfig(num_mels=int(f.num_mels), normalize=bool(f.normalize),
                                       spec_augment=bool(f.spec_augment), freq_masks=int(f.freq_masks),
                                       freq_width=int(f.freq_width), time_masks=int(f.time_masks),
                                       time_width=int(f.time_width))


def subsampling(config) -> int:
  strides = tuple(config.model.encoder.stem_strides)
  out = 1
  for s in strides:
    out *= int(s)
  return out


def _stack(section) -> transformer.StackConfig:
  return transformer.StackConfig(num_layers=section.num_layers, num_heads=section.num_heads,
                                 embed_dim=section.embed_dim, mlp_dim=section.mlp_dim, dropout=section.dropout,
                                 dtype=section.dtype, attention=section.attention,
                                 scan_layers=section.scan_layers, remat=section.remat)


def frames(config) -> int:
  return log_mel.num_frames(speech_common.window_samples(config))


def encoder_config(config) -> speech.SpeechEncoderConfig:
  e = config.model.encoder
  try:
    return speech.SpeechEncoderConfig(stack=_stack(e), num_mels=int(config.features.num_mels),
                                      stem_strides=tuple(e.stem_strides), max_frames=frames(config))
  except ValueError as err:
    raise ConfigError(f"config.model.encoder: {err}") from None


def masked_model_config(config) -> speech.MaskedSpeechConfig:
  return speech.MaskedSpeechConfig(encoder=encoder_config(config), codebook_size=int(config.speech.codebook_size))


def seq2seq_model_config(config, tokenizer) -> speech.SpeechSeq2SeqConfig:
  d = config.model.decoder
  vocab = text_assets.padded_vocab_size(tokenizer, d.vocab_multiple)
  try:
    return speech.SpeechSeq2SeqConfig(encoder=encoder_config(config), decoder=_stack(d), vocab_size=vocab,
                                      max_text_len=int(config.data.text_len))
  except ValueError as err:
    raise ConfigError(f"config.model: {err}") from None


def make_masked_model(config, rngs):
  return speech.MaskedSpeechModel(masked_model_config(config), rngs)


def make_seq2seq_model(config, tokenizer, rngs):
  return speech.SpeechSeq2Seq(seq2seq_model_config(config, tokenizer), rngs)


def _validate_common(config, text_required: bool) -> None:
  f, e = config.features, config.model.encoder
  _check(_is_int(f.num_mels) and f.num_mels >= 8, "features.num_mels", f.num_mels, "must be an integer >= 8")
  for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
    _check(_is_int(f[name]) and f[name] >= 0, f"features.{name}", f[name], "must be an integer >= 0")
  _check(f.freq_width < f.num_mels, "features.freq_width", f.freq_width,
         f"must be < config.features.num_mels={f.num_mels}")
  strides = tuple(e.stem_strides)
  _check(len(strides) >= 1 and all(_is_int(s) and s >= 1 for s in strides), "model.encoder.stem_strides", strides,
         "must be a non-empty tuple of integers >= 1")
  _check(float(config.data.max_seconds) > 0, "data.max_seconds", config.data.max_seconds, "must be > 0")
  _check(frames(config) >= 2 * subsampling(config), "data.max_seconds", config.data.max_seconds,
         f"too short: the window must hold at least {2 * subsampling(config)} frames of 10 ms")
  speech_data.validate(config, text_required=text_required)
  encoder_config(config)


def validate_masked(config) -> None:
  _validate_common(config, text_required=False)
  s = config.speech
  stack = subsampling(config)
  _check(frames(config) % stack == 0, "data.max_seconds", config.data.max_seconds,
         f"the window's {frames(config)} frames must divide into encoder units of "
         f"{stack} frames (the product of config.model.encoder.stem_strides)")
  _check(_is_int(s.codebook_size) and s.codebook_size >= 2, "speech.codebook_size", s.codebook_size,
         "must be an integer >= 2")
  _check(_is_int(s.codebook_dim) and s.codebook_dim >= 1, "speech.codebook_dim", s.codebook_dim,
         "must be an integer >= 1")
  _check(0.0 < s.mask_prob <= 1.0, "speech.mask_prob", s.mask_prob, "must be in (0, 1]")
  _check(_is_int(s.mask_span) and s.mask_span >= 1, "speech.mask_span", s.mask_span, "must be an integer >= 1")
  _check(s.mask_noise_std >= 0, "speech.mask_noise_std", s.mask_noise_std, "must be >= 0")
  _check(not config.features.spec_augment, "features.spec_augment", config.features.spec_augment,
         "masked prediction masks its input already: SpecAugment is for transcription (speech_seq2seq)")


def validate_seq2seq(config) -> None:
  _validate_common(config, text_required=True)
  text_assets.validate_tokenizer(config.data)
  d, s = config.model.decoder, config.speech
  _check(d.embed_dim == config.model.encoder.embed_dim, "model.decoder.embed_dim", d.embed_dim,
         f"must equal config.model.encoder.embed_dim={config.model.encoder.embed_dim} (cross-attention reads "
         "the encoder's states)")
  _check(_is_int(config.data.text_len) and config.data.text_len >= 3, "data.text_len", config.data.text_len,
         "must be an integer >= 3 ([BOS], a token, [EOS])")
  _check(0.0 <= s.label_smoothing < 1.0, "speech.label_smoothing", s.label_smoothing, "must be in [0, 1)")
