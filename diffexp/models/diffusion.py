"""Score predictor: a diffusers ``UNet2DModel`` with its DDPM noise schedule (a ``diffexp.models.prior.Prior``).

The wrapper exposes the quantities every sampler needs (Ho et al. 2020; Song et al. 2021):
``eps(x, t)``, Tweedie's ``x0(x, t) = (x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t)`` and
``score(x, t) = −ε/sqrt(1−ᾱ_t)``, whatever the network predicts (epsilon, sample or v).
Learned-variance (``learned_range``) models such as the ADM checkpoints (``diffexp.models.adm``) output
2C channels; ``eps_v(x, t)`` returns ε and the variance interpolation weight v (improved DDPM, eq. 15).
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import pickle
import re
import socket
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

import torch
from diffusers import ConfigMixin, DDPMScheduler, UNet2DModel
from diffusers.utils import is_accelerate_available
from torch import Tensor, nn

from diffexp.errors import ConfigError, ModelUnavailableError, UnsafeFileError, UnsupportedModelError
from diffexp.models.schedule import alphas_cumprod_problems


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
NO_FLOAT64_DEVICES = ("mps",)  # device types without float64 tensors: the schedule goes there in float32
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
AUTOCAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The scheduler config diffexp reads. diffusers computes ᾱ from beta_schedule (or trained_betas), which diffexp
# uses as it is; timestep_spacing and steps_offset only shape diffusers' own inference grid, which diffexp
# replaces with its own (sampler.num_steps), so any value diffusers knows is accepted.
SCHEDULER_CLASS = "DDPMScheduler"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SCHEDULER_DEFAULTS = {name: p.default for name, p in inspect.signature(DDPMScheduler.__init__).parameters.items()
                      if name != "self"}
IGNORED_SCHEDULER_KEYS = ("tensor_format",)  # old diffusers: numpy or torch arrays, no effect on the schedule
NOT_YET = (  # scheduler class names of model families diffexp does not implement yet
    ("FlowMatch", "a flow matching model (rectified flow: x_t = (1 − t)·x0 + t·ε)"),
    ("EDM", "an EDM model (Karras et al. 2022: σ-parametrised, x_t = x0 + σ·ε)"),
    ("ScoreSdeVe", "a variance-exploding score SDE model (Song et al. 2021: x_t = x0 + σ_t·ε)"),
    ("KarrasVe", "a variance-exploding model (Karras et al. 2022: x_t = x0 + σ_t·ε)"),
)
UNSAFE_FILE_ADVICE = (
    "If you trust the file's source, convert it on a trusted machine, in an environment you can throw away, into "
    "a tensors-only file: load its state dict there and write it with safetensors "
    "(`safetensors.torch.save_file(state_dict, PATH)`, tensors only)"
)


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
        problems = scheduler_problems({"_class_name": type(scheduler).__name__, **cfg})
        problems = problems or alphas_cumprod_problems(scheduler.alphas_cumprod)
        if problems:
            raise UnsupportedModelError(problems, title=f"scheduler of model {name!r} not supported")
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
        """The model's own checks: square images, of a size its UNet can down-sample and up-sample back."""
        _, h, w = self._image_shape
        problems = downsampling_problems(self.unet, (h, w))
        if h != w:
            problems.insert(0, f"model: sample_size=[{h}, {w}] is not square; diffexp supports square images only")
        return problems

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
        raise UnsupportedModelError([
            f"UNet out_channels={config.out_channels} with in_channels={config.in_channels} does not fit "
            f"variance_type={variance_type!r}: allowed is out_channels = {factor} x in_channels"
        ], title="model read wrongly")
    size = config.sample_size
    h, w = size if isinstance(size, (tuple, list)) else (size, size)
    shape = (int(config.in_channels), int(h), int(w))
    if image_shape is not None and tuple(image_shape) != shape:
        raise ValueError(f"image_shape={tuple(image_shape)} disagrees with the UNet config's {shape}")
    return shape


def downsampling_problems(unet: nn.Module, size: tuple[int, int]) -> list[str]:
    """``sample_size`` against the UNet's down-sampling blocks: each halves the image and the up-sampling path
    doubles it back onto the skip connections, so each side must be a multiple of 2^(number of down-samplings)
    (a diffusers ``UNet2DModel``: every down block but the last). Nothing for a network without down blocks."""
    blocks = getattr(unet, "down_blocks", None)
    if blocks is None:
        return []
    n = sum(getattr(block, "downsamplers", None) is not None for block in blocks)
    step = 2**n
    if all(side % step == 0 for side in size):
        return []
    shown = size[0] if size[0] == size[1] else list(size)
    return [f"model: sample_size={shown} cannot pass the UNet's {n} down-sampling blocks ({len(blocks)} down blocks, "
            f"each but the last halving the image, which the up-sampling path doubles back): allowed sample sizes "
            f"are multiples of {step} = 2^{n} ({step}, {2 * step}, {3 * step}, ...); use a UNet with fewer down "
            "blocks for this size"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(map(repr, values))


def _class_problem(name: Any) -> str | None:
    if name == SCHEDULER_CLASS:
        return None
    family = next((what for prefix, what in NOT_YET if isinstance(name, str) and name.startswith(prefix)), None)
    why = (f"{family}: not supported yet; diffexp implements discrete-time DDPM (variance-preserving) models only"
           if family else "diffexp implements DDPM schedules only and does not read this class's settings")
    return f"scheduler _class_name={name!r}; allowed: {SCHEDULER_CLASS!r} ({why})"


def scheduler_problems(config: Mapping[str, Any]) -> list[str]:
    """Every setting of a scheduler config (``scheduler_config.json``, or a ``DDPMScheduler``'s ``config``, with
    ``_class_name``) that diffexp would read wrongly, each naming the key, its value and what is allowed. Keys a
    ``DDPMScheduler`` does not take are refused too: diffusers would ignore them without a word."""
    wrong_class = _class_problem(config.get("_class_name"))
    if wrong_class:  # its other keys are another class's settings
        return [wrong_class]
    problems: list[str] = []
    cfg = {**SCHEDULER_DEFAULTS, **config}

    def bad(key: str, allowed: str, why: str = "") -> None:
        problems.append(f"scheduler {key}={cfg[key]!r} is not supported{why}; allowed: {allowed}")

    if cfg["prediction_type"] not in PREDICTION_TYPES:
        bad("prediction_type", _allowed(PREDICTION_TYPES))
    if cfg["variance_type"] not in VARIANCE_TYPES:
        bad("variance_type", _allowed(VARIANCE_TYPES))
    for key in ("clip_sample", "thresholding", "rescale_betas_zero_snr"):
        if not isinstance(cfg[key], bool):
            bad(key, "true or false (a JSON boolean)")
    if cfg["thresholding"] is True:
        bad("thresholding", "thresholding=False", ": diffexp does not implement dynamic thresholding (Imagen)")
    if cfg["rescale_betas_zero_snr"] is True:
        bad("rescale_betas_zero_snr", "rescale_betas_zero_snr=False",
            ": it rescales the betas to zero terminal SNR (ᾱ_T = 0: x_T is pure noise, and x̂0 and the score at T "
            "are undefined), which diffexp's samplers and x̂0 = (x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t) cannot use")
    if cfg["timestep_spacing"] not in TIMESTEP_SPACINGS:
        bad("timestep_spacing", _allowed(TIMESTEP_SPACINGS) + " (diffexp uses its own time grid in any case)")
    if not _is_int(cfg["steps_offset"]) or cfg["steps_offset"] < 0:
        bad("steps_offset", "an integer >= 0")
    if not _is_int(cfg["num_train_timesteps"]) or cfg["num_train_timesteps"] < 1:
        bad("num_train_timesteps", "an integer >= 1")
    if not _is_number(cfg["clip_sample_range"]) or cfg["clip_sample_range"] <= 0:
        bad("clip_sample_range", "a number > 0")
    betas = cfg["trained_betas"]
    betas = betas.tolist() if hasattr(betas, "tolist") else betas  # a numpy array or tensor passed in Python
    if betas is None:
        if cfg["beta_schedule"] not in BETA_SCHEDULES:
            bad("beta_schedule", _allowed(BETA_SCHEDULES) + ", or trained_betas")
        for key in ("beta_start", "beta_end"):
            if not _is_number(cfg[key]):
                bad(key, "a number")
    elif not isinstance(betas, (list, tuple)) or not all(_is_number(b) for b in betas):
        problems.append(f"scheduler trained_betas={str(betas)[:60]!r} is not supported; allowed: null or a list of "
                        "numbers, one per training timestep")
    elif len(betas) != cfg["num_train_timesteps"]:
        problems.append(f"scheduler trained_betas has {len(betas)} values but num_train_timesteps="
                        f"{cfg['num_train_timesteps']!r}; allowed: one beta per training timestep")
    for key in sorted(set(config) - set(SCHEDULER_DEFAULTS)):
        if key.startswith("_") or key in IGNORED_SCHEDULER_KEYS:
            continue
        if key == "predict_epsilon":  # old diffusers: predict_epsilon=False meant a sample-predicting model
            problems.append(f"scheduler predict_epsilon={config[key]!r} is an old diffusers key that diffusers now "
                            "ignores (the model would be read as prediction_type='epsilon'); allowed: remove it and "
                            "set prediction_type ('epsilon' for predict_epsilon=true, 'sample' for false)")
        else:
            problems.append(f"scheduler {key}={config[key]!r} is not a DDPMScheduler setting (diffusers would ignore "
                            "it, and the model might be read wrongly); allowed: only DDPMScheduler's keys "
                            f"({', '.join(SCHEDULER_DEFAULTS)})")
    return problems


def load_tensors(path: Path, *, what: str, advice: str, mmap: bool = False) -> Any:
    """``path`` read as tensors and plain containers only (torch's restricted unpickler): never unpickled code. A
    file that would need more is refused with ``UnsafeFileError`` (nothing from it ran; ``advice`` says what to
    do), one that cannot be read with ``ConfigError``. ``mmap``: map the tensors of a zip-format file instead of
    reading them (a check that the file is safe costs no memory)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:  # its text would advise loading the file as arbitrary code
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # the object it would import and call
        why = (f"reading it needs unpickling arbitrary Python objects (code, here {found.group(1)})" if found else
               "it is not a tensors-only file: reading it would need unpickling arbitrary Python objects (code), "
               "or it is corrupt")
        raise UnsafeFileError([f"{what} {path} was refused: {why}, which diffexp never does; no code from it was "
                               f"run. {advice}"], title="unsafe file refused") from None
    except (RuntimeError, KeyError, EOFError, ValueError, IndexError) as err:
        raise ConfigError([f"{what} {path} cannot be read: not a torch file of tensors, or corrupt or truncated "
                           f"({type(err).__name__}). {advice}"], title="unreadable file") from None


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
    sched_file = sched_dir / "scheduler_config.json"
    try:
        sched_config = json.loads(sched_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError([f"{sched_file} is not valid JSON ({err})"], title="model folder unreadable") from None
    problems = (scheduler_problems(sched_config) if isinstance(sched_config, dict)
                else [f"{sched_file} holds {type(sched_config).__name__}, not a JSON object of scheduler settings"])
    if problems:
        raise UnsupportedModelError(problems, title=f"model folder {folder}: its scheduler_config.json is not "
                                                     "supported")
    if not (unet_dir / WEIGHT_FILES[0]).is_file():  # diffusers would unpickle the .bin: refuse it if that needs code
        load_tensors(unet_dir / WEIGHT_FILES[1], what="UNet weights", advice=(
            f"{UNSAFE_FILE_ADVICE} as {unet_dir / WEIGHT_FILES[0]}, next to config.json."), mmap=True)
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
