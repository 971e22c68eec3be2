"""Train a diffusers ``UNet2DModel`` (ε-prediction DDPM, Ho et al. 2020) on MNIST or an image folder.

``python -m diffexp.training.ddpm data.path=DIR`` (config ``conf/train.yaml``). AdamW with warm-up and cosine
decay, EMA weights, periodic checkpoints that ``resume=true`` continues exactly (model, optimizer,
EMA, step, RNG), W&B logging (one run per output directory, continued on resume), and a diffusers folder
with a model card at the end. Trains on a GPU when there is one (``device=auto``); ``dtype=bfloat16``
autocasts the UNet's forward pass. Batches and noise are drawn on the CPU, so a run's data order and
noise do not depend on the device.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from diffexp.cli import clean_errors, hydra_main
from diffexp.data.loaders import folder, read_idx
from diffexp.data.ranges import from_unit
from diffexp.errors import ConfigError
from diffexp.runtime import resolve_device
from diffexp.rundir.images import make_grid
from diffexp.tracking.wandb import WandbRun
from diffexp.models.diffusion import DiffusionModel, downsampling_problems, load_tensors, scheduler_problems
from diffexp.samplers.ddpm import ddpm
from diffexp.models.schedule import alphas_cumprod_problems, respaced_timesteps

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # float16 would need loss scaling


def load_training_images(path: str, channels: int, size: int) -> tuple[Tensor, str]:
    """All training images in [-1, 1]: MNIST ``train-images*idx3-ubyte[.gz]`` if present, else a folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={str(root)!r} is not a folder")
    idx = sorted(root.glob("train-images*idx3-ubyte*"))
    if idx:
        arr = torch.from_numpy(read_idx(idx[0]).copy()).float()[:, None] / 255
        if arr.shape[-1] != size:
            arr = F.interpolate(arr, size=(size, size), mode="bilinear", antialias=True)
        return from_unit(arr).repeat(1, channels, 1, 1), f"MNIST ({idx[0].name}, {len(arr)} images)"
    files = [p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return folder(str(root), channels=channels, size=size, num_images=len(files)), f"{root} ({len(files)} images)"


@torch.no_grad()
def sample_grid(unet: UNet2DModel, scheduler: DDPMScheduler, n: int, steps: int, seed: int) -> Image.Image:
    device = next(unet.parameters()).device
    model = DiffusionModel(unet, scheduler).to(device)
    gens = [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]
    x = torch.stack([torch.randn(model.image_shape, generator=g, device=device) for g in gens])
    x = ddpm(model, x, timesteps=respaced_timesteps(model.num_train_timesteps, steps), generators=gens)
    unet.train().requires_grad_(True)
    return make_grid(x, nrow=int(np.ceil(np.sqrt(n))))


CHECKPOINT_KEYS = ("unet", "ema", "opt", "lr_sched", "rng", "step", "losses", "elapsed")


def _rng_state(g_data: torch.Generator, g_noise: torch.Generator) -> dict:
    """The generators' states: uint8 tensors, which the tensors-only loader reads."""
    return {"data": g_data.get_state(), "noise": g_noise.get_state(), "torch": torch.get_rng_state()}


def load_checkpoint(path: Path) -> dict:
    """The training checkpoint ``path`` read as tensors and plain values only: a file that would need unpickling
    code (an old or crafted pickle) is refused before any of it runs, and one without diffexp's keys is named."""
    advice = (f"To continue, start a fresh training run in a new output directory (without resume=true), or "
              f"delete {path} and run here again without resume=true; checkpoints diffexp writes are never refused.")
    state = load_tensors(path, what="training checkpoint", advice=advice)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    rng = state.get("rng") if isinstance(state, dict) else None
    rng_ok = isinstance(rng, dict) and all(isinstance(rng.get(k), Tensor) for k in ("data", "noise", "torch"))
    if missing or not rng_ok:
        raise ConfigError([f"{path} is not a diffexp training checkpoint (missing or malformed: "
                           f"{', '.join(missing) or 'rng'}). {advice}"], title="training checkpoint refused")
    return state


def training_problems(unet: UNet2DModel, scheduler: DDPMScheduler, size: int) -> list[str]:
    """What would make the trained model unusable or read wrongly, before any training step: a schedule diffexp
    does not implement, an objective this loop does not train (it trains ε-prediction, fixed variance), or a size
    the UNet cannot down-sample."""
    config = {"_class_name": type(scheduler).__name__, **scheduler.config}
    problems = scheduler_problems(config) or alphas_cumprod_problems(scheduler.alphas_cumprod)
    if config["prediction_type"] != "epsilon":
        problems.append(f"scheduler.prediction_type={config['prediction_type']!r} is not trained here; allowed: "
                        "'epsilon' (this loop trains ε-prediction)")
    if config["variance_type"] == "learned_range":
        problems.append("scheduler.variance_type='learned_range' is not trained here; allowed: 'fixed_small' or "
                        "'fixed_large' (this loop learns no variance)")
    return problems + downsampling_problems(unet, (size, size))


def write_card(out: Path, cfg: DictConfig, info: dict) -> None:
    unet = OmegaConf.to_container(cfg.unet, resolve=True)
    unet.pop("_target_")
    text = f"""# diffexp MNIST DDPM

A small ε-prediction DDPM (Ho et al. 2020) UNet trained with `python -m diffexp.training.ddpm`.

- Data: {info['data']}. MNIST by Yann LeCun and Corinna Cortes, licence CC BY-SA 3.0.
- Architecture: diffusers `UNet2DModel` {json.dumps(unet)}; {info['params']:,} parameters.
- Schedule: linear β {cfg.scheduler.beta_start} → {cfg.scheduler.beta_end}, T = {cfg.scheduler.num_train_timesteps},
  variance `{cfg.scheduler.variance_type}`, clip_sample {cfg.scheduler.clip_sample}.
- Training: {info['steps']} steps of batch {cfg.batch_size}, AdamW lr {cfg.lr} (warm-up {cfg.warmup_steps},
  cosine decay), EMA (decay ≤ {cfg.ema.decay}, power {cfg.ema.power}); these are the EMA weights.
- Final loss (mean of last 100 steps): {info['final_loss']:.4f}; training time {info['minutes']:.1f} min
  on {info['device']} ({torch.get_num_threads()} threads).
- Samples below: {cfg.num_card_samples} DDPM samples, {cfg.card_sample_steps} respaced steps, seed {cfg.seed}.

![samples](samples.png)
"""
    (out / "README.md").write_text(text)


def train_device(cfg: DictConfig) -> tuple[torch.device, torch.dtype]:
    """``device`` (auto: cuda, then mps, then cpu) and ``dtype`` (float32 | bfloat16) of the training run."""
    if cfg.dtype not in DTYPES:
        raise ConfigError([f"dtype={cfg.dtype!r} is invalid: allowed {', '.join(DTYPES)} (float16 would need "
                           "loss scaling)"])
    return resolve_device(str(cfg.device)), DTYPES[cfg.dtype]


def train(cfg: DictConfig) -> dict:
    """Train, checkpoint and export; returns a summary (steps, final loss, minutes)."""
    out_dir = Path(cfg.export_dir).parent
    device, dtype = train_device(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    images, data_desc = load_training_images(cfg.data.path, cfg.data.channels, cfg.data.size)
    torch.manual_seed(cfg.seed)
    unet: UNet2DModel = instantiate(cfg.unet, _convert_="all").to(device)
    scheduler: DDPMScheduler = instantiate(cfg.scheduler, _convert_="all")
    problems = training_problems(unet, scheduler, int(cfg.data.size))
    if problems:
        raise ConfigError(problems)
    ema = EMAModel(unet.parameters(), decay=cfg.ema.decay, use_ema_warmup=True, power=cfg.ema.power)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    g_data = torch.Generator().manual_seed(cfg.seed)
    g_noise = torch.Generator().manual_seed(cfg.seed + 1)
    ab = scheduler.alphas_cumprod.float().to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    step, losses, elapsed = 0, [], 0.0
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"resume=true but there is no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path)  # on the CPU: the RNG states stay CPU tensors
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        g_data.set_state(state["rng"]["data"])
        g_noise.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        step, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    tracker = WandbRun(
        out_dir, resume=bool(cfg.resume), mode=cfg.wandb.mode, init_timeout=cfg.wandb.init_timeout,
        project=cfg.wandb.project, entity=cfg.wandb.entity, job_type="train",
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    exit_code = 1
    try:
        unet.train()
        start = time.time() - elapsed
        for step in tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc="train"):
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=g_data)
            x0 = images[idx].to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g_noise)
            noise = torch.randn(x0.shape, generator=g_noise).to(device)
            t = t.to(device)
            a = ab[t].view(-1, 1, 1, 1)
            with autocast:
                pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            opt.step()
            lr_sched.step()
            ema.step(unet.parameters())
            losses.append(loss.item())
            done = step + 1
            if done % 50 == 0:
                tracker.log_metrics({"loss": float(np.mean(losses[-50:])), "lr": lr_sched.get_last_lr()[0]}, step=done)
            if done % cfg.sample_every == 0 or done == cfg.steps:
                ema.store(unet.parameters())
                ema.copy_to(unet.parameters())
                grid = sample_grid(unet, scheduler, 16, 50, cfg.seed)
                ema.restore(unet.parameters())
                tracker.log_images({"samples": grid}, step=done)
            stop = cfg.stop_at is not None and done >= cfg.stop_at
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                state = {  # tensors and plain Python values only: ``load_checkpoint`` reads it without unpickling code
                    "unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "lr_sched": lr_sched.state_dict(), "rng": _rng_state(g_data, g_noise), "step": done,
                    "losses": [float(v) for v in losses], "elapsed": float(time.time() - start),
                }
                torch.save(state, ckpt_path.with_suffix(".tmp"))
                ckpt_path.with_suffix(".tmp").replace(ckpt_path)
            if stop:
                print(f"Stopped at step {done} (stop_at); continue with resume=true hydra.run.dir={out_dir}")
                exit_code = 0
                return {"steps": done}
        minutes = (time.time() - start) / 60
        export = Path(cfg.export_dir)
        ema.copy_to(unet.parameters())
        unet.eval()
        unet.save_pretrained(export)
        scheduler.save_pretrained(export)
        sample_grid(unet, scheduler, cfg.num_card_samples, cfg.card_sample_steps, cfg.seed).save(export / "samples.png")
        info = {
            "data": data_desc, "params": sum(p.numel() for p in unet.parameters()), "steps": cfg.steps,
            "final_loss": float(np.mean(losses[-100:])), "minutes": minutes,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper(),
        }
        write_card(export, cfg, info)
        tracker.log_summary(info)
        print(f"Model written to {export}")
        exit_code = 0
        return info
    finally:
        tracker.finish(exit_code)
        hint = tracker.console_hint()
        if hint:
            print(hint)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    clean_errors(lambda: train(cfg))


if __name__ == "__main__":
    hydra_main(main)
