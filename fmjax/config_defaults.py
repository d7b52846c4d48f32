"""The config sections every experiment shares, with their defaults and what each field means.

Experiment files (`experiments/*.py`) compose these and set what their paradigm and size need,
so a field means the same thing in every config and is validated in one place
(`fmjax.config_checks`). Each function takes keyword overrides for its fields.
"""

import ml_collections


def _section(fields: dict, overrides: dict) -> ml_collections.ConfigDict:
  unknown = set(overrides) - set(fields)
  if unknown:
    raise KeyError(f"unknown config fields {sorted(unknown)}; known: {sorted(fields)}")
  return ml_collections.ConfigDict({**fields, **overrides})


def apply_variant(config: ml_collections.ConfigDict, variants: dict, arg: str,
                  experiment: str) -> ml_collections.ConfigDict:
  """`variants[arg]` edits the base `config` in place; the variant's name is recorded."""
  if arg not in variants:
    raise ValueError(f"{experiment}: unknown variant {arg!r}; choose one of {sorted(variants)}")
  variants[arg](config)
  config.variant = arg
  return config


def run(objective: str, **overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      objective=objective,
      variant="",
      seed=0,
      topology="",                 # TPU topology the config is sized for (AOT compile target)
  ), overrides)


def text_data(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      dataset="default",           # 'default' (offline corpus) or a prepared tfds catalog name
      data_dir="",                 # tfds data dir; '' = $FMJAX_DATA_DIR or ~/tensorflow_datasets
      files="",                    # glob of the user's text files; overrides `dataset`
      eval_files="",               # glob of validation files; '' = held-out tail of `files`
      eval_fraction=0.05,          # held-out fraction of each file when eval_files is empty
      text_key="text",             # feature holding the text in a catalog dataset
      train_split="train",
      eval_split="validation",
      tokenizer="byte",            # 'byte' or 'sentencepiece'
      vocab_size=0,                # sentencepiece only: size of the trained vocabulary
      tokenizer_dir="",            # where a trained tokenizer is cached; '' = next to the data
      seq_len=128,                 # tokens the model sees per sequence
      segment_ids=True,            # attention does not cross packed documents
      shuffle=True,
      shuffle_window=1024,         # packed rows shuffled together (rows of one file are adjacent)
      eval_batches=8,              # fixed validation set: this many global batches
      prefetch=2,                  # batches prepared ahead of the step, in a thread
  ), overrides)


def transformer(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      num_layers=4,
      num_heads=4,
      embed_dim=128,
      mlp_dim=512,
      dropout=0.0,
      positions="learned",         # 'learned' or 'rotary'
      tie_embeddings=True,
      vocab_multiple=128,          # pad the embedding table so it shards and tiles evenly
      dtype="float32",             # compute dtype: 'float32' or 'bfloat16' (params stay float32)
      attention="auto",            # 'auto' (cudnn on GPU, einsum on CPU, xla on TPU), 'xla'
                                   # (jax.nn.dot_product_attention), 'einsum' (fmjax's) or 'cudnn'
      scan_layers=False,           # one compiled block scanned over layers (faster compiles)
      remat="none",                # 'none', 'full', 'dots' (keep matmul outputs, recompute the rest)
  ), overrides)


def optim(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      learning_rate=3e-3,          # peak, reached after warmup
      warmup_steps=50,
      decay="cosine",              # 'cosine', 'linear' or 'constant' after warmup
      end_lr_fraction=0.1,         # final learning rate as a fraction of the peak
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,            # AdamW, decoupled; never on biases or norm scales
      grad_clip_norm=1.0,          # global norm; 0 = no clipping
  ), overrides)


def train(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      steps=600,
      batch_size=32,               # global, across all devices and hosts
      grad_accum_steps=1,          # micro-batches per step
      log_every=25,
      eval_every=200,              # 0 = only at the end
      on_nonfinite="stop",         # NaN/Inf loss: 'stop' (last good checkpoint stays newest) or
                                   # 'skip' (keep the previous state, count the skipped update)
  ), overrides)


def checkpoint(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      every=200,
      keep=3,
      async_save=True,
      init_from="",                # a workdir whose latest params seed this run (fine-tuning)
      init_subtrees="",            # with init_from: only these parts of its params, e.g. 'encoder'
                                   # or 'encoder=audio_encoder' (fmjax.param_transfer); '' = all
      allow_config_change=False,   # resume a workdir whose run was saved under another config
                                   # (fmjax.resume_checks lists the fields that may always change)
  ), overrides)


def mesh(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      data=-1,                     # -1: the devices left after the other axes
      fsdp=1,                      # shards params and optimizer state as well as the batch
      tensor=1,                    # shards heads and MLP width
      dcn_data=1,                  # slices (multi-slice TPU, GPU nodes) the data axis spans over
                                   # the data-center network; must divide `data`, which stays the
                                   # global size. 1 = a single slice
  ), overrides)


def bench(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(steps=10, warmup_steps=3), overrides)


def image_text_data(**overrides) -> ml_collections.ConfigDict:
  """Image-caption pairs (contrastive paradigm); image preprocessing is shared with later
  image paradigms."""
  return _section(dict(
      dataset="digits",            # 'digits' (offline: scikit-learn's 8x8 digits, captioned from
                                   # templates) or a prepared tfds catalog name (coco_captions,
                                   # cifar10, imagenet2012, ...)
      data_dir="",                 # tfds data dir; '' = $FMJAX_DATA_DIR or ~/tensorflow_datasets
      image_dir="",                # the user's pairs: a folder of images ...
      captions_file="",            # ... and a JSONL ({"image": path, "caption": text}) or TSV
                                   # (path<TAB>caption) file, paths relative to image_dir;
                                   # overrides `dataset`
      eval_fraction=0.1,           # user pairs: fraction of the images held out for evaluation
      image_key="image",           # catalog: the image feature
      caption_key="",              # catalog: the caption feature ('' = none: captions come from
                                   # class names and templates, as for cifar10 / imagenet2012)
      label_key="label",           # catalog: the class label feature ('' = none)
      class_names="",              # comma-separated class names; '' = the label feature's names
      templates="default",         # prompt templates for label captions and zero-shot:
                                   # 'default' (photo-style), 'digits' or 'plain' ('{}')
      train_split="train",
      eval_split="validation",     # held-out pairs: retrieval, and zero-shot when labelled
      zeroshot_dataset="",         # a labelled tfds name for zero-shot; '' = `dataset` if labelled
      zeroshot_split="",           # '' = eval_split
      tokenizer="byte",            # 'byte' or 'sentencepiece' (trained on the training captions)
      vocab_size=0,
      tokenizer_dir="",
      text_len=32,                 # caption tokens incl. BOS and EOS (longer ones are cut)
      image_size=32,               # square side the model sees
      min_crop_area=0.8,           # training: random crops keep at least this fraction of the
                                   # image (then resized); 1.0 = resize only
      flip=False,                  # training: random horizontal flips (never for digits)
      pixel_mean=(0.5, 0.5, 0.5),  # normalisation on the device: (x / 255 - mean) / std
      pixel_std=(0.5, 0.5, 0.5),
      bad_images="error",          # a missing / undecodable image or an empty caption in the
                                   # user's pairs: 'error' (name it and stop) or 'skip' (count it)
      shuffle=True,
      eval_examples=1024,          # held-out pairs evaluated (0 = the whole split)
      prefetch=2,
  ), overrides)


def speech_data(**overrides) -> ml_collections.ConfigDict:
  """(audio, transcript) utterances for the speech paradigm (fmjax.data.speech). Batches carry
  16 kHz waveforms; log-mel features are computed on the device."""
  return _section(dict(
      dataset="speech_synth",      # 'speech_synth' (offline: English commands and digit strings
                                   # synthesised with eSpeak NG; 'speech_synth/small' for tests) or
                                   # a prepared tfds catalog name (librispeech, speech_commands)
      data_dir="",                 # tfds data dir; '' = $FMJAX_DATA_DIR or ~/tensorflow_datasets
      audio_dir="",                # the user's utterances: a folder of wav / flac files ...
      transcripts_file="",         # ... and a TSV (path<TAB>transcript) or JSONL ({"audio": path,
                                   # "text": ...}) file, paths relative to audio_dir; overrides
                                   # `dataset`. '' with audio_dir set: every audio file, no text
                                   # (masked pretraining only)
      eval_fraction=0.1,           # the user's files: fraction held out for evaluation
      audio_key="audio",           # catalog: the audio feature (librispeech: 'speech')
      text_key="text",             # catalog: the transcript feature, when the dataset has one
      label_key="label",           # catalog: else the class label, whose name is the transcript
                                   # (speech_commands)
      train_split="train",
      eval_split="validation",     # librispeech: 'dev_clean'
      max_seconds=4.0,             # the window: audio is zero padded to this many seconds
      crop=False,                  # longer audio: True = a random window in training, the first in
                                   # evaluation (for masked pretraining); False = bad input
      noise_snr_db=0.0,            # training: white or pink noise at an SNR drawn from
                                   # [this, this + 20] dB; 0 = no noise
      bad_audio="error",           # a missing / undecodable / too long file or an empty transcript:
                                   # 'error' (name it and stop) or 'skip' (drop it, count it in the log)
      tokenizer="byte",            # transcripts: 'byte' or 'sentencepiece' (trained on them)
      vocab_size=0,                # sentencepiece only
      tokenizer_dir="",            # where a trained tokenizer is cached; '' = next to the data
      text_len=64,                 # transcript tokens incl. BOS and EOS (longer ones are cut)
      shuffle=True,
      eval_examples=0,             # held-out utterances evaluated (0 = the whole split)
      prefetch=2,                  # batches prepared ahead of the step, in a thread
  ), overrides)
