"""Denoising diffusion (DDPM): noise prediction; DDPM / DDIM sampling with classifier-free guidance.

Train the tiny variant on the offline default data (scikit-learn's 8x8 handwritten digits with
their template captions, a fifth held out) on a laptop CPU, then draw digits from a caption:

    python -m fmjax.main --config experiments/diffusion.py:tiny --workdir /tmp/diffusion_tiny
    python -m fmjax.sample --workdir /tmp/diffusion_tiny --prompt "the digit seven" \\
        --prompt "a handwritten 3" --num 8 --out grid.png

Variants (`get_config(arg)`):
  tiny          Caption-conditioned U-Net on digits at their native 8x8, grey: base 16 channels,
                mults (1, 2, 2), 2 residual blocks per level, self-attention at 4 and 2 px; the
                caption through a 2 x 64 causal text tower (byte tokens), condition dropout 0.1;
                cosine schedule, 1000 steps, eps prediction, EMA 0.999; batch 128, 2000 steps;
                574k params. CPU (2 shared cores, jax 0.10.2): 0.29 s/step unloaded, about 12 min
                with the evaluations (19 min measured while a compile shared the cores).
                Evaluation draws 360 DDIM samples (50 steps, guidance 3) for the captions of the
                355 held-out digits. Measured at step 2000 (500 / 1000): held-out denoising loss
                0.136 (0.156 / 0.142); samples recognised as the digit their caption names by the
                run's judge (98.0% on real held-out digits): 100% (70.8% / 98.3%; chance 10%);
                Frechet distance to the held-out digits 1.56 (2.47 / 1.99; 360 real training
                digits score 0.50).
  tiny-label    The same conditioned on the class label (10 classes) instead of the caption.
  tiny-dit      A DiT (4 x 64, patch 2, adaLN-Zero) in place of the U-Net, caption-conditioned.
  ddpm-cifar10  The DDPM paper's CIFAR-10 model: U-Net 128 channels, mults (1, 2, 2, 2), 2 blocks,
                attention at 16 px, dropout 0.1 (35.7M params), linear schedule, eps, EMA 0.9999,
                Adam 2e-4 (5k warmup), clip 1, batch 128, 800k steps, random flips;
                unconditional (FID 3.17 in the paper). Prepare cifar10 first (README). Target
                topology v5e:2x2, data parallel (the bf16 step needs 1.81 of 16 GiB per chip).
                Not yet trained.
  dit-b2        DiT-B/2 in pixel space on 64 px ImageNet (imagenet2012 prepared, resized on the
                fly): 12 x 768, patch 2 (1024 tokens), class-conditional with guidance 4,
                linear schedule, EMA 0.9999, AdamW 1e-4, batch 256, 400k steps, bf16, scanned
                and rematerialised layers, FSDP over v5e:4x4 (2.63 of 16 GiB per chip; 131M
                params). Not yet trained.
  bench-ddpm    ddpm-cifar10 at batch 128 in bf16 on one GPU: what `fmjax.bench` compares with
                the PyTorch peer (diffusers UNet2DModel, benchmarks/gpu_diffusion.sh). On
                v5e:2x2 (python -m fmjax.aot --topology v5e:2x2) it needs 1.81 of 16 GiB per chip;
                the compile takes ~14 min on 2 CPU cores. Not yet measured on a GPU.
  bench-dit     DiT-B/2 at 32 px (256 tokens), 10 classes, batch 128, bf16, one GPU.

Any field can be overridden: --config.diffusion.target=v --config.diffusion.schedule=linear.
The user's images: --config.data.image_dir=DIR --config.data.captions_file=DIR/captions.jsonl
(caption-conditioned), or a labelled tfds dataset with --config.diffusion.condition=label.
Benchmark without data: python -m fmjax.bench --config experiments/diffusion.py:bench-ddpm
"""

import ml_collections

from fmjax import config_defaults as defaults


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  return defaults.apply_variant(base_config(), VARIANTS, arg, "experiments/diffusion.py")


def unet(**overrides) -> ml_collections.ConfigDict:
  fields = dict(
      base_channels=16,              # channels of the first level; the time embedding is 4x this
      channel_mults=(1, 2, 2),       # per level; the image side halves between levels
      num_res_blocks=2,              # residual blocks per level (the up path has one more)
      attention_resolutions=(4, 2),  # feature-map sides (px) with self-attention
      attention_heads=4,
      dropout=0.0,
      num_groups=4,                  # GroupNorm groups; must divide every level's channels
      remat=False,                   # recompute each level's activations in the backward pass
  )
  unknown = set(overrides) - set(fields)
  if unknown:
    raise KeyError(f"unknown U-Net fields {sorted(unknown)}")
  return ml_collections.ConfigDict({**fields, **overrides})


def dit(patch_size=2, **transformer_fields) -> ml_collections.ConfigDict:
  section = defaults.transformer(**transformer_fields)
  section.patch_size = patch_size    # square patches; image_size must divide
  return section


def base_config() -> ml_collections.ConfigDict:
  """The tiny caption-conditioned U-Net on digits."""
  c = defaults.run("diffusion")
  c.data = defaults.image_text_data(dataset="digits", templates="digits", image_size=8, text_len=48,
                                    min_crop_area=1.0, flip=False, eval_examples=0)
  c.model = ml_collections.ConfigDict()
  c.model.arch = "unet"              # 'unet' or 'dit'
  c.model.channels = 1               # image channels: 1 (grey) or 3 (RGB)
  c.model.dtype = "float32"          # compute dtype of the denoiser; params stay float32
  c.model.cond_dim = 128             # width of the condition vector (class / caption / null)
  c.model.num_classes = 0            # label conditioning: 0 = the dataset's class count
  c.model.unet = unet()
  c.model.dit = dit(num_layers=4, num_heads=4, embed_dim=64, mlp_dim=256)
  c.model.text = defaults.transformer(num_layers=2, num_heads=4, embed_dim=64, mlp_dim=256)
  c.model.text.pool = "eos"          # caption pooling: 'eos' or 'mean'
  c.model.text.causal = True
  c.diffusion = ml_collections.ConfigDict(dict(
      condition="text",              # 'none', 'label' or 'text'
      cond_dropout=0.1,              # training rows whose condition is replaced by the null one
      schedule="cosine",             # 'linear' (DDPM, 1e-4..0.02) or 'cosine' (Nichol & Dhariwal)
      num_steps=1000,                # T, the forward process's steps
      target="eps",                  # what the network predicts: 'eps' (noise) or 'v'
      ema_decay=0.999,               # moving average of the params used to evaluate and sample
      sampler="ddim",                # evaluation's sampler: 'ddim' or 'ddpm' (ancestral)
      sample_steps=50,
      eta=0.0,                       # DDIM stochasticity: 0 deterministic, 1 = DDPM-like
      guidance=3.0,                  # classifier-free guidance scale (1 = none)
      clip_x0=True,                  # clamp predicted clean images to [-1, 1] while sampling
      eval_samples=360,              # samples judged at each evaluation (0 = none)
  ))
  c.optim = defaults.optim(learning_rate=1e-3, warmup_steps=100, b2=0.999, weight_decay=0.0)
  c.train = defaults.train(steps=2000, batch_size=128, log_every=50, eval_every=500)
  c.checkpoint = defaults.checkpoint(every=500)
  c.mesh = defaults.mesh()
  c.bench = defaults.bench()
  return c


def _tiny_label(c):
  c.diffusion.condition = "label"


def _tiny_dit(c):
  c.model.arch = "dit"


def _ddpm_cifar10(c):
  c.data.update(dataset="cifar10", label_key="label", caption_key="", templates="default", image_size=32,
                train_split="train", eval_split="test", flip=True, eval_examples=10_000)
  c.model.update(arch="unet", channels=3)
  c.model.unet = unet(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                      attention_heads=1, dropout=0.1, num_groups=32)
  c.diffusion.update(condition="none", guidance=1.0, schedule="linear", target="eps", ema_decay=0.9999,
                     eval_samples=1000, sample_steps=100)
  c.optim.update(learning_rate=2e-4, warmup_steps=5000, decay="constant", end_lr_fraction=1.0, b2=0.999,
                 weight_decay=0.0, grad_clip_norm=1.0)
  c.train.update(steps=800_000, batch_size=128, log_every=100, eval_every=20_000)
  c.checkpoint.update(every=10_000)
  c.topology = "v5e:2x2"


def _dit_b2(c, image_size=64, batch_size=256, dataset="imagenet2012", classes=1000):
  c.data.update(dataset=dataset, label_key="label", caption_key="", templates="default", image_size=image_size,
                train_split="train", eval_split="validation", flip=True, eval_examples=10_000)
  c.model.update(arch="dit", channels=3, num_classes=classes, cond_dim=768, dtype="bfloat16")
  c.model.dit = dit(patch_size=2, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072, dtype="bfloat16",
                    scan_layers=True, remat="full")
  c.diffusion.update(condition="label", guidance=4.0, schedule="linear", target="eps", ema_decay=0.9999,
                     eval_samples=1000, sample_steps=50)
  c.optim.update(learning_rate=1e-4, warmup_steps=0, decay="constant", end_lr_fraction=1.0, b2=0.999,
                 weight_decay=0.0, grad_clip_norm=1.0)
  c.train.update(steps=400_000, batch_size=batch_size, log_every=100, eval_every=20_000)
  c.checkpoint.update(every=10_000)
  c.mesh.update(data=1, fsdp=-1)
  c.topology = "v5e:4x4"


def _bench_ddpm(c):
  _ddpm_cifar10(c)
  c.model.dtype = "bfloat16"
  # A one-GPU benchmark; its TPU fit is ddpm-cifar10's (the same U-Net, 1.81 GiB per v5e chip in bf16).
  c.topology = ""


def _bench_dit(c):
  _dit_b2(c, image_size=32, batch_size=128, dataset="cifar10", classes=10)
  c.model.dit.update(scan_layers=False, remat="none")
  c.mesh.update(data=-1, fsdp=1)
  c.topology = ""  # a one-GPU benchmark


VARIANTS = {"tiny": lambda c: None, "tiny-label": _tiny_label, "tiny-dit": _tiny_dit,
            "ddpm-cifar10": _ddpm_cifar10, "dit-b2": _dit_b2, "bench-ddpm": _bench_ddpm, "bench-dit": _bench_dit}
