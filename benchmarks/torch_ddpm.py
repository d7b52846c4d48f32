"""The PyTorch peer for fmjax's diffusion benchmark: DDPM training with a diffusers UNet2DModel.

What a PyTorch user would train DDPM on CIFAR-10 with: `diffusers.UNet2DModel` built from the
google/ddpm-cifar10-32 configuration (written out below, so nothing is downloaded: 35.7M
parameters at 128 base channels), the DDPM forward process with the linear 1000-step schedule
(betas 1e-4 .. 0.02), an MSE loss on the predicted noise, fused AdamW (lr 2e-4, no weight decay,
as fmjax's ddpm-cifar10: Adam), gradient clipping at norm 1, and an EMA of the weights updated
every step, under bf16 autocast, channels_last and torch.compile. The step is the same work as
`python -m fmjax.bench --config experiments/diffusion.py:bench-ddpm`: same model size, batch,
image size, dropout, clipping and EMA, on random images.

    python benchmarks/torch_ddpm.py --batch 128                   # the benchmark, on a GPU
    python benchmarks/torch_ddpm.py --base-channels 32 --image 16 --batch 8 --steps 2 --warmup 1 --no-compile

Prints one JSON line: {"peer": "diffusers-ddpm", "examples_per_s", "step_time_s", "params",
"batch_size", "device", ...}; the parameter count also goes to stderr. Exits 2 when diffusers
cannot be imported (the device image may lack it: its wheels travel in .whl/, see
benchmarks/README.md).
"""

import argparse
import json
import sys
import time
import warnings

import torch
import torch.nn.functional as F

NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
EMA_DECAY = 0.9999
# diffusers and what it imports beyond torch and numpy (checked with a bare torch install); the
# device image may lack or hold older ones (diffusers needs huggingface-hub >= 1.32).
DIFFUSERS_WHEELS = ("diffusers huggingface-hub safetensors pillow pyyaml packaging requests urllib3 idna certifi "
                    "charset-normalizer httpx2 httpcore2 h11 anyio truststore tqdm")
FETCH_HINT = (f"on the CPU machine, in the project root: bash ../shared/device/fetch_wheels.sh {DIFFUSERS_WHEELS}; "
              "then send .whl along (carry)")


def import_unet_class():
  """diffusers.UNet2DModel, or exit 2 with what to send: a missing wheel is a setup error, not a
  benchmark result."""
  try:
    from diffusers import UNet2DModel
  except ImportError as e:
    print(f"torch_ddpm: diffusers is not importable ({e}); send the diffusers wheels: {FETCH_HINT}", file=sys.stderr)
    sys.exit(2)
  return UNet2DModel


def ddpm_cifar10_unet_config(base_channels: int, image_size: int, dropout: float) -> dict:
  """google/ddpm-cifar10-32's UNet2DModel arguments, with the channel widths scaled by
  base_channels / 128 (a smaller model for smoke runs; 128 is the published one)."""
  widths = (base_channels, 2 * base_channels, 2 * base_channels, 2 * base_channels)
  return dict(
      sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=widths,
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      layers_per_block=2, norm_num_groups=32, norm_eps=1e-6, freq_shift=1, flip_sin_to_cos=False,
      time_embedding_type="positional", downsample_padding=0, mid_block_scale_factor=1, act_fn="silu",
      attention_head_dim=None,  # None: one head as wide as the block, as the DDPM paper's attention
      center_input_sample=False, dropout=dropout)


def linear_alpha_bars(num_steps: int, device) -> torch.Tensor:
  """abar_t = prod_{s <= t} (1 - beta_s) for DDPM's linear betas, computed in float64 (the
  product of 1000 factors loses digits in float32), stored in float32."""
  betas_T = torch.linspace(BETA_START, BETA_END, num_steps, dtype=torch.float64)
  return torch.cumprod(1.0 - betas_T, dim=0).to(device=device, dtype=torch.float32)


def make_loss_fn(model, alpha_bars_T: torch.Tensor, device_type: str):
  """uint8 images -> the DDPM training loss: noise each image to a random step t, predict the
  noise, mean squared error. The noising sits inside the function so torch.compile fuses it with
  the model, as fmjax's step does it on the device."""
  def loss_fn(images_u8_BxCxHxW: torch.Tensor) -> torch.Tensor:
    x0_BxCxHxW = images_u8_BxCxHxW.float() / 127.5 - 1.0
    b = x0_BxCxHxW.shape[0]
    t_B = torch.randint(0, alpha_bars_T.shape[0], (b,), device=x0_BxCxHxW.device)
    eps_BxCxHxW = torch.randn_like(x0_BxCxHxW)
    abar_Bx1x1x1 = alpha_bars_T[t_B].view(b, 1, 1, 1)
    xt_BxCxHxW = abar_Bx1x1x1.sqrt() * x0_BxCxHxW + (1.0 - abar_Bx1x1x1).sqrt() * eps_BxCxHxW
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
      pred_BxCxHxW = model(xt_BxCxHxW, t_B, return_dict=False)[0]
    return F.mse_loss(pred_BxCxHxW.float(), eps_BxCxHxW)
  return loss_fn


def ema_weight(step: int) -> float:
  """The averaging weight of update `step` (0-based), with the same warm-up as fmjax.train:
  min(decay, (1 + step) / (10 + step))."""
  return min(EMA_DECAY, (1.0 + step) / (10.0 + step))


def train_flops(loss_fn, images_u8_BxCxHxW: torch.Tensor, model) -> float | None:
  """FLOPs of one forward + backward (matmuls, convolutions, attention), counted by running it
  once eagerly; None where the counter fails, since the MFU is a by-product of the benchmark."""
  try:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
      loss_fn(images_u8_BxCxHxW).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
  except Exception as e:  # noqa: BLE001: any failure only costs the MFU column
    print(f"torch_ddpm: could not count FLOPs ({type(e).__name__}: {e})", file=sys.stderr)
    model.zero_grad(set_to_none=True)
    return None


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image", type=int, default=32, help="image side in pixels")
  p.add_argument("--base-channels", type=int, default=128, help="first level's channels (128: the published model)")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
  p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device, for the MFU")
  p.add_argument("--no-compile", action="store_true", help="run eagerly (CPU smoke runs)")
  a = p.parse_args(argv)
  for name in ("batch", "image", "base_channels", "steps"):
    if getattr(a, name) < 1:
      p.error(f"--{name.replace('_', '-')}={getattr(a, name)} must be positive")
  if a.base_channels % 32:
    p.error(f"--base-channels={a.base_channels} must be a multiple of 32 (the GroupNorm groups)")
  if a.image % 8:
    p.error(f"--image={a.image} must be a multiple of 8 (the U-Net halves it three times)")
  if a.warmup < 0:
    p.error(f"--warmup={a.warmup} must be zero or more")
  return a


def main(argv=None):
  a = parse_args(argv)
  # diffusers' version checks are lru_cache'd; Dynamo traces through them (correctly) and warns
  # once per call site, which buries the log.
  warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
  unet_class = import_unet_class()
  import diffusers

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick each convolution's fastest algorithm
  model = unet_class(**ddpm_cifar10_unet_config(a.base_channels, a.image, a.dropout))
  model = model.to(dev, memory_format=torch.channels_last).train()
  params = [p for p in model.parameters() if p.requires_grad]
  num_params = sum(p.numel() for p in params)
  print(f"torch_ddpm: diffusers UNet2DModel (ddpm-cifar10-32 layout, base {a.base_channels}): "
        f"{num_params:,} parameters", file=sys.stderr)
  ema_params = [p.detach().clone() for p in params]
  opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=(dev == "cuda"))
  loss_fn = make_loss_fn(model, linear_alpha_bars(NUM_TIMESTEPS, dev), dev)

  # A few fixed random batches, already on the device in channels_last, so no input pipeline is timed.
  gen = torch.Generator(device=dev).manual_seed(0)
  batches = [torch.randint(0, 256, (a.batch, 3, a.image, a.image), dtype=torch.uint8, device=dev, generator=gen)
             .contiguous(memory_format=torch.channels_last) for _ in range(3)]
  flops_per_step = train_flops(loss_fn, batches[0], model)
  step_loss = loss_fn if a.no_compile else torch.compile(loss_fn)

  def step(i: int, images_u8_BxCxHxW: torch.Tensor) -> torch.Tensor:
    loss = step_loss(images_u8_BxCxHxW)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
      torch._foreach_lerp_(ema_params, params, 1.0 - ema_weight(i))  # ema += (1 - w) (p - ema)
    return loss

  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  for i in range(a.warmup):
    step(i, batches[i % 3])
  sync()
  warmup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(a.steps):
    loss = step(a.warmup + i, batches[i % 3])
  sync()
  step_s = (time.perf_counter() - t0) / a.steps
  loss = loss.item()

  tflops_per_s = None if flops_per_step is None else flops_per_step / step_s / 1e12
  print(json.dumps(dict(
      peer="diffusers-ddpm", examples_per_s=round(a.batch / step_s, 1), step_time_s=round(step_s, 5),
      params=num_params, batch_size=a.batch, device=torch.cuda.get_device_name() if dev == "cuda" else "cpu",
      image_size=a.image, base_channels=a.base_channels, compiled=not a.no_compile,
      tflops_per_s=None if tflops_per_s is None else round(tflops_per_s, 3),
      mfu=None if tflops_per_s is None else round(tflops_per_s / a.peak_tflops, 4),
      warmup_s=round(warmup_s, 1), loss=round(loss, 4), torch=torch.__version__, diffusers=diffusers.__version__)))


if __name__ == "__main__":
  main()
