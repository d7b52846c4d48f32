"""Speech: masked prediction over log-mel frames (BEST-RQ) and Whisper-style transcription.

Pretrain an encoder, fine-tune a transcriber from it, transcribe, on the offline default data
(utterances synthesised with eSpeak NG the first time they are needed; the held-out split has
sentences and a voice never heard in training) on a laptop CPU:

    python -m fmjax.main --config experiments/speech.py:tiny-masked --workdir /tmp/speech_masked
    python -m fmjax.main --config experiments/speech.py:tiny --workdir /tmp/speech_tiny \\
        --config.checkpoint.init_from=/tmp/speech_masked --config.checkpoint.init_subtrees=encoder
    python -m fmjax.transcribe --workdir /tmp/speech_tiny --audio a.wav [--audio ...] [--beam 4]

(`tiny` also trains from scratch: leave out the two init flags.)

Variants (`get_config(arg)`):
  tiny-masked   BEST-RQ pretraining of a 4 x 128 encoder (conv stem 4x subsampling: 40 ms units)
                on 4 s windows; targets: 4 stacked normalised frames, a frozen 320 -> 16 random
                projection, nearest of 8192 random unit codes; spans of 4 units start at 10% of
                units (~33% masked), filled with N(0, 0.1). Batch 32, 1000 steps, ~16 min on 2
                CPU cores; 1.93M params (1.05M of them the 8192-way head). Measured on the 240
                held-out utterances: masked accuracy 25.3% (always the commonest code: 19.2%),
                masked loss 4.86 nats (the entropy of the held-out codes, the best loss without
                the audio: 5.42; 5.31 at step 250, 5.06 at 500, 4.92 at 750).
  tiny          A transcriber: the same encoder, a 2 x 128 decoder with cross-attention, byte
                tokens, teacher-forced cross-entropy; greedy decoding for the held-out WER/CER.
                Batch 32, 1000 steps, ~10 min on 2 CPU cores; 1.46M params. Measured from
                scratch on the 240 held-out utterances (unseen sentences, half of them in an
                unseen voice): CER 1.8%, WER 2.0% (beam 4: 1.5%, 1.7%; the unseen voice alone,
                greedy: 1.8%, 2.0%); CER 50% at step 250, 13% at 500, 4.0% at 750. The best single
                training transcript said to every utterance: CER 69%. 16 freshly synthesised
                sentences in neither split, unseen voice, no silence around the speech: CER 2.8%.
                Fine-tuned from tiny-masked's encoder (the second command above): CER 2.2%, WER
                2.5% at step 1000 (57% at 250, 14% at 500): no gain on this corpus, where the
                pretraining saw the same utterances that have transcripts.
  whisper-base  Whisper base's shape: 6 + 6 layers, 512 wide, 8 heads, 2x conv stem, 30 s windows
                (1500 encoder frames), SentencePiece 8192 (49.3M params; 74M with Whisper's
                51,865-entry vocabulary, as bench-whisper has), 128 tokens, SpecAugment, AdamW 1e-3
                (Whisper's base lr) with 2k warmup, batch 256, 200k steps, bf16, on a prepared
                librispeech (README). Topology v5e:2x4, data parallel: python -m fmjax.aot
                compiles its step at 11.3 of 16 GiB per chip, 89.6 TFLOP a step (the model's
                estimate 81.5). Not yet trained.
  best-rq-base  A 93M BEST-RQ encoder (12 x 768, 4x conv stem) on librispeech 20 s crops,
                batch 512, 200k steps, bf16, FSDP. Topology v5e:4x4: 5.1 of 16 GiB per chip,
                163 TFLOP a step (estimate 158). Not yet trained.
  bench-whisper whisper-base at batch 16, 30 s audio, 64 label tokens, vocab 51,865, bf16 on one
                GPU: what `fmjax.bench` compares with the transformers Whisper peer
                (benchmarks/gpu_whisper.sh).
  bench-best-rq best-rq-base at batch 32 on one GPU.

Any field can be overridden: --config.data.max_seconds=6 --config.speech.mask_prob=0.05.
The user's audio: --config.data.audio_dir=DIR --config.data.transcripts_file=DIR/transcripts.tsv
(path<TAB>transcript per line, or JSONL {"audio": path, "text": ...}); wav or flac, any rate.
Benchmark without data: python -m fmjax.bench --config experiments/speech.py:bench-whisper
"""

import ml_collections

from fmjax import config_defaults as defaults


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  objective = "speech_masked" if arg in ("tiny-masked", "best-rq-base", "bench-best-rq") else "speech_seq2seq"
  return defaults.apply_variant(base_config(objective), VARIANTS, arg, "experiments/speech.py")


def encoder(stem_strides=(2, 2), **transformer_fields) -> ml_collections.ConfigDict:
  section = defaults.transformer(**transformer_fields)
  section.stem_strides = tuple(stem_strides)  # conv stem (kernel 3) strides; their product subsamples
  return section


def base_config(objective: str) -> ml_collections.ConfigDict:
  """The tiny models on the offline synthesised speech."""
  c = defaults.run(objective)
  c.data = defaults.speech_data(max_seconds=4.0, text_len=64)
  c.model = ml_collections.ConfigDict()
  c.model.encoder = encoder(stem_strides=(2, 2), num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512)
  if objective == "speech_seq2seq":
    c.model.decoder = defaults.transformer(num_layers=2, num_heads=4, embed_dim=128, mlp_dim=512)
  c.features = ml_collections.ConfigDict(dict(
      num_mels=80,                   # Whisper's 80 Slaney mel bins, 25 ms windows, 10 ms hop
      normalize=True,                # per-utterance mean / variance over the valid frames
      spec_augment=False,            # training only: time and frequency masks
      freq_masks=2, freq_width=27,   # masks, and mel bins at most per mask
      time_masks=2, time_width=40,   # masks, and frames (10 ms) at most per mask
  ))
  c.speech = ml_collections.ConfigDict(dict(
      # speech_masked (BEST-RQ)
      codebook_size=8192,            # random codes the quantiser picks the nearest of
      codebook_dim=16,               # the random projection's output width
      quantizer_seed=1234,           # the projection and codebook: frozen, regenerated from this
      mask_prob=0.1,                 # per encoder unit: the chance a masked span starts there
      mask_span=4,                   # units per span (4 units = 16 frames = 160 ms here)
      mask_noise_std=0.1,            # masked input frames are replaced by N(0, this) noise
      # speech_seq2seq
      label_smoothing=0.0,           # evaluation decodes greedily; fmjax.transcribe has --beam
  ))
  c.optim = defaults.optim(learning_rate=2e-3, warmup_steps=100, b2=0.98, weight_decay=0.01)
  c.train = defaults.train(steps=1000, batch_size=32, log_every=50, eval_every=250)
  c.checkpoint = defaults.checkpoint(every=500)
  c.mesh = defaults.mesh()
  c.bench = defaults.bench()
  return c


def _tiny(c):
  del c


def _whisper_base(c, batch_size=256):
  c.data.update(dataset="librispeech", audio_key="speech", text_key="text", train_split="train_clean100+train_clean360+train_other500",
                eval_split="dev_clean", max_seconds=30.0, text_len=128, tokenizer="sentencepiece", vocab_size=8192,
                eval_examples=512)
  c.model.encoder = encoder(stem_strides=(1, 2), num_layers=6, num_heads=8, embed_dim=512, mlp_dim=2048,
                            dtype="bfloat16", scan_layers=True, remat="dots")
  c.model.decoder = defaults.transformer(num_layers=6, num_heads=8, embed_dim=512, mlp_dim=2048, dtype="bfloat16",
                                         scan_layers=True, remat="dots")
  c.features.spec_augment = True
  c.speech.label_smoothing = 0.1
  c.optim.update(learning_rate=1e-3, warmup_steps=2000, b2=0.98, weight_decay=0.01)
  c.train.update(steps=200_000, batch_size=batch_size, log_every=100, eval_every=10_000)
  c.checkpoint.update(every=5000)
  c.topology = "v5e:2x4"  # data parallel over 8 chips (python -m fmjax.aot: 11.3 of 16 GiB per chip)


def _best_rq_base(c, batch_size=512):
  c.data.update(dataset="librispeech", audio_key="speech", text_key="text", train_split="train_clean100+train_clean360+train_other500",
                eval_split="dev_clean", max_seconds=20.0, crop=True, eval_examples=512)
  c.model.encoder = encoder(stem_strides=(2, 2), num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072,
                            dtype="bfloat16", scan_layers=True, remat="dots")
  c.speech.update(mask_prob=0.04, mask_span=10)  # 400 ms spans, ~33% of units masked
  c.optim.update(learning_rate=5e-4, warmup_steps=10_000, b2=0.98, weight_decay=0.01)
  c.train.update(steps=200_000, batch_size=batch_size, log_every=100, eval_every=10_000)
  c.checkpoint.update(every=5000)
  c.mesh.update(data=1, fsdp=-1)
  c.topology = "v5e:4x4"  # FSDP over 16 chips (python -m fmjax.aot: 5.1 of 16 GiB per chip)


def _bench_whisper(c):
  _whisper_base(c, batch_size=16)
  c.data.update(text_len=65, vocab_size=51865)  # 64 labels after the start token, the peer's vocabulary
  c.model.encoder.update(scan_layers=False, remat="none")
  c.model.decoder.update(scan_layers=False, remat="none")
  c.topology = ""  # a one-GPU benchmark


def _bench_best_rq(c):
  _best_rq_base(c, batch_size=32)
  c.model.encoder.update(scan_layers=False, remat="none")
  c.mesh.update(data=-1, fsdp=1)
  c.topology = ""


VARIANTS = {
    "tiny-masked": _tiny,
    "tiny": _tiny,
    "whisper-base": _whisper_base,
    "best-rq-base": _best_rq_base,
    "bench-whisper": _bench_whisper,
    "bench-best-rq": _bench_best_rq,
}
