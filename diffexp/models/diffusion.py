"""Score predictor: a diffusers ``UNet2DModel`` with its DDPM noise schedule (a ``diffexp.models.prior.Prior``).

The wrapper exposes the quantities every sampler needs (Ho et al. 2020; Song et al. 2021):
``eps(x, t)``, Tweedie's ``x0(x, t) = (x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t)`` and
``score(x, t) = −ε/sqrt(1−ᾱ_t)``, whatever the network predicts (epsilon, sample or v).
Learned-variance (``learned_range``) models such as the ADM checkpoints (``diffexp.models.adm``) output
2C channels; ``eps_v(x, t)`` returns ε and the variance interpolation weight v (improved DDPM, eq. 15).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

import torch
from diffusers import ConfigMixin, DDPMScheduler, UNet2DModel
from diffusers.utils import is_accelerate_available
from torch import Tensor, nn

from diffexp.errors import ConfigError, ModelUnavailableError


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
NO_FLOAT64_DEVICES = ("mps",)  # device types without float64 tensors: the schedule goes there in float32
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
AUTOCAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
UNSUPPORTED_SCHEDULER_FLAGS = ("thresholding", "rescale_betas_zero_snr")  # dynamic thresholding; ᾱ_T = 0


class DiffusionModel(nn.Module):
    """A network and the DDPM schedule it was trained with (a ``diffexp.models.prior.Prior``).

    Args:
        unet: the noise/sample/v predictor ``unet(x_t, t).sample``: a diffusers ``UNet2DModel``, or any module
            called like one (e.g. ``diffexp.models.gaussian.GaussianNoisePredictor``).
        scheduler: a diffusers ``DDPMScheduler`` whose config gives betas, ``prediction_type``,
            ``variance_type`` and ``clip_sample``.
        name: a label for logs and ``metrics.json``.
        image_shape: (C, H, W) of one image, for a network without a diffusers config; otherwise read from
            its config (``in_channels``, ``sample_size``), which it must then agree with.
    """

    def __init__(
        self, unet: nn.Module, scheduler: DDPMScheduler, name: str = "model",
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        cfg = scheduler.config
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={cfg.prediction_type!r} is not supported; allowed: {PREDICTION_TYPES}")
        if cfg.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type={cfg.variance_type!r} is not supported; allowed: {VARIANCE_TYPES}")
        for key in UNSUPPORTED_SCHEDULER_FLAGS:
            if getattr(cfg, key, False):
                raise ValueError(f"scheduler {key}=True is not supported by diffexp; allowed: {key}=False")
        self._image_shape = _image_shape(unet, cfg.variance_type, image_shape)
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.name = name
        self.prediction_type: str = cfg.prediction_type
        self.variance_type: str = cfg.variance_type
        self.clip_sample: bool = bool(cfg.clip_sample)
        self.clip_sample_range: float = float(getattr(cfg, "clip_sample_range", 1.0))
        self.autocast_dtype: torch.dtype | None = None
        # Not a buffer: ``.to(mps)`` would fail on float64 and ``.half()`` would round it (see ``_apply``).
        self._alphas_cumprod64 = scheduler.alphas_cumprod.to(torch.float64).clone()
        self.alphas_cumprod: Tensor = self._alphas_cumprod64

    def _apply(self, fn: Any, recurse: bool = True) -> DiffusionModel:
        """``.to()``/``.cuda()``/``.double()``/...: the network follows ``fn``; the schedule ᾱ follows the
        network's device and stays float64 (float32 on devices without float64, e.g. Apple MPS)."""
        super()._apply(fn, recurse)
        tensor = next(itertools.chain(self.unet.parameters(), self.unet.buffers()), None)
        device = self.alphas_cumprod.device if tensor is None else tensor.device
        dtype = torch.float32 if device.type in NO_FLOAT64_DEVICES else torch.float64
        self.alphas_cumprod = self._alphas_cumprod64.to(dtype).to(device)
        return self

    def prepare(self, *, device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool) -> Self:
        """On ``device``; the network under autocast to ``dtype`` unless float32 (operators stay float32), in
        channels_last memory format and ``torch.compile``d when asked."""
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"dtype={dtype} is not supported; allowed: {', '.join(map(str, AUTOCAST_DTYPES))}")
        self.to(device)
        self.autocast_dtype = None if dtype == torch.float32 else dtype
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:
            self.unet = torch.compile(self.unet)
        return self

    def problems(self) -> list[str]:
        """The model's own checks: square images."""
        _, h, w = self._image_shape
        if h != w:
            return [f"model: sample_size=[{h}, {w}] is not square; diffexp supports square images only"]
        return []

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def channels(self) -> int:
        return self._image_shape[0]

    @property
    def sample_size(self) -> int:
        return self._image_shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t broadcast to ``like`` (shape (B,1,1,1), dtype of ``like``)."""
        ab = self.alphas_cumprod[t.to(self.alphas_cumprod.device)].to(like.dtype)
        return ab.reshape(-1, *([1] * (like.ndim - 1)))

    def _timesteps(self, t: Tensor | int, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.long)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def _unet(self, x: Tensor, t: Tensor) -> Tensor:
        """The raw UNet output in ``x``'s dtype; under ``torch.autocast`` when ``autocast_dtype`` is set."""
        if self.autocast_dtype is None:
            return self.unet(x, t).sample.to(x.dtype)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            out = self.unet(x, t).sample
        return out.to(x.dtype)

    def eps_v(self, x: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor | None]:
        """Predicted noise ε_θ(x_t, t) and, for ``learned_range`` models, v = (model_var_output + 1)/2 ∈ [0, 1]
        (improved DDPM, Nichol & Dhariwal 2021, eq. 15: log σ_t² = v·log β_t + (1−v)·log β̃_t); None otherwise."""
        t = self._timesteps(t, x)
        out = self._unet(x, t)
        v = None
        if self.variance_type == "learned_range":
            out, var_out = out.split(x.shape[1], dim=1)
            v = (var_out + 1) / 2
        if self.prediction_type == "epsilon":
            return out, v
        ab = self.alpha_bar(t, x)
        if self.prediction_type == "sample":
            return (x - ab.sqrt() * out) / (1 - ab).sqrt(), v
        return ab.sqrt() * out + (1 - ab).sqrt() * x, v  # v-pred = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0

    def eps(self, x: Tensor, t: Tensor | int) -> Tensor:
        """Predicted noise ε_θ(x_t, t) (the first C channels of a learned-variance model)."""
        return self.eps_v(x, t)[0]

    def x0_from_eps(self, x: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """Tweedie's x̂0 = (x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t) for a given ε (one UNet call for ε, v and x̂0)."""
        ab = self.alpha_bar(self._timesteps(t, x), x)
        return (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    def x0(self, x: Tensor, t: Tensor | int) -> Tensor:
        """Tweedie's denoised estimate x̂0 = (x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t)."""
        return self.x0_from_eps(x, t, self.eps(x, t))

    def score(self, x: Tensor, t: Tensor | int) -> Tensor:
        """Score ∇ log p_t(x_t) = −ε/sqrt(1−ᾱ_t)."""
        t = self._timesteps(t, x)
        return -self.eps(x, t) / (1 - self.alpha_bar(t, x)).sqrt()


def _image_shape(
    unet: nn.Module, variance_type: str, image_shape: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """(C, H, W) from a diffusers network's config (checked against ``image_shape`` and ``variance_type``), or
    ``image_shape`` for a network without one."""
    if not isinstance(unet, ConfigMixin):
        if image_shape is None or len(image_shape) != 3:
            raise ValueError(f"{type(unet).__name__} has no diffusers config: pass image_shape=(C, H, W), "
                             f"not {image_shape}")
        c, h, w = image_shape
        return (int(c), int(h), int(w))
    config = unet.config
    factor = 2 if variance_type == "learned_range" else 1
    if config.out_channels != factor * config.in_channels:
        raise ValueError(
            f"UNet out_channels={config.out_channels} with in_channels={config.in_channels} does not fit "
            f"variance_type={variance_type!r}: allowed is out_channels = {factor} x in_channels"
        )
    size = config.sample_size
    h, w = size if isinstance(size, (tuple, list)) else (size, size)
    shape = (int(config.in_channels), int(h), int(w))
    if image_shape is not None and tuple(image_shape) != shape:
        raise ValueError(f"image_shape={tuple(image_shape)} disagrees with the UNet config's {shape}")
    return shape


def tiny_unet(sample_size: int = 16, channels: int = 3, seed: int = 0) -> UNet2DModel:
    """A few-thousand-parameter random UNet (with one attention block) for tests and debugging."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )


def tiny_model(sample_size: int = 16, channels: int = 3, seed: int = 0, **scheduler_kwargs: Any) -> DiffusionModel:
    """``model=tiny``: a tiny random UNet built in memory with a linear T=1000 DDPM schedule."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", **scheduler_kwargs)
    return DiffusionModel(tiny_unet(sample_size, channels, seed), scheduler, name="tiny")


def _find(folder: Path, names: tuple[str, ...], subdir: str) -> Path | None:
    for base in (folder, folder / subdir):
        for name in names:
            if (base / name).is_file():
                return base
    return None


def load_folder(folder: Path, name: str) -> DiffusionModel:
    """A diffusers folder: the UNet (config.json + weights) and scheduler_config.json, at the root or in
    ``unet/`` and ``scheduler/``."""
    unet_dir = _find(folder, WEIGHT_FILES, "unet")
    if unet_dir is None or not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"model folder {folder} has no UNet: expected config.json and one of {WEIGHT_FILES} "
            "at its root or in unet/"
        )
    sched_dir = _find(folder, ("scheduler_config.json",), "scheduler")
    if sched_dir is None:
        raise FileNotFoundError(f"model folder {folder} has no scheduler_config.json at its root or in scheduler/")
    scheduler_class = json.loads((sched_dir / "scheduler_config.json").read_text()).get("_class_name")
    if scheduler_class != "DDPMScheduler":
        raise ConfigError([f"model folder {folder}: scheduler_config.json has _class_name={scheduler_class!r}; "
                           "allowed: 'DDPMScheduler' (diffexp implements DDPM schedules only)"])
    # without accelerate, diffusers' default low_cpu_mem_usage=True falls back to False with a warning
    unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=is_accelerate_available())
    scheduler = DDPMScheduler.from_pretrained(sched_dir)
    return DiffusionModel(unet, scheduler, name=name)


def _download(repo_id: str) -> Path:
    """Fetch a hub snapshot (cache first); fail fast with a clear message when the hub is unreachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = ["*.json", "*.safetensors", "unet/*", "scheduler/*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except HFValidationError as err:
        raise ValueError(f"pretrained={repo_id!r} is neither an existing local folder nor a valid hub id") from err
    except Exception:  # noqa: BLE001 - not cached: fall through to a network attempt
        pass
    message = (
        f"could not load pretrained={repo_id!r}: it is not a local folder, not in the Hugging Face cache, and "
        "the hub was not reachable (no network/hub access{}). Download it on a machine with internet "
        "(`make prefetch`, or `hf download <id> --local-dir DIR`) and pass "
        "model.pretrained=DIR, a local folder in diffusers layout."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not _hub_reachable():
        raise ModelUnavailableError([message.format("")], title="model not available")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds of network errors
        raise ModelUnavailableError([message.format(f"; {type(err).__name__}")], title="model not available") from err


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds (DNS included)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(socket.create_connection, (host, 443), timeout)
    pool.shutdown(wait=False)
    try:
        future.result(timeout=timeout + 1).close()
        return True
    except (OSError, FutureTimeout):
        return False


def load_pretrained(pretrained: str, name: str | None = None) -> DiffusionModel:
    """``model=pretrained``: load a hub id or a local diffusers folder (UNet and scheduler config
    at the root or in ``unet/`` and ``scheduler/``)."""
    path = Path(pretrained).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"pretrained={pretrained!r} is a file; expected a diffusers model folder")
        return load_folder(path, name or path.name)
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1:
        raise FileNotFoundError(f"pretrained={pretrained!r}: no such local folder (and it is not a hub id 'owner/name')")
    return load_folder(_download(pretrained), name or pretrained)
