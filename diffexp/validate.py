"""Start-up checks: every setting validated before any compute, with a message naming key, value and rule.

``config_problems(cfg)`` runs first in ``run`` and needs nothing but the config: missing values, unknown
keys (each ``_target_`` group is checked against its function's signature), every numeric setting and
input paths. ``model_problems`` adds the checks that need the loaded model (T, image size); ``run`` reports
both lists together, before any output is written. ``validate(cfg)`` raises on the first list alone;
``validate_data`` checks what a data loader returned.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from diffexp.evaluation.fid import FEATURES as FID_FEATURES
from diffexp.errors import ConfigError
from diffexp.operators.blur import KERNELS
from diffexp.operators.inpaint import MASKS
from diffexp.operators.super_resolution import DOWNSAMPLERS
from diffexp.rundir.recorder import METRICS

DTYPES_ALLOWED = ("float32", "bfloat16", "float16")
SAMPLER_META_KEYS = ("name", "num_steps", "t_start")  # sampler keys read by run(), not arguments of the function
TASK_KEYS = ("name", "sigma_y", "sdedit", "operator", "step_size")  # plus keys the operator interpolates (${task.kernel})
TOP_LEVEL_KEYS = (
    "model",
    "sampler",
    "task",
    "data",
    "logger",
    "seed",
    "num_images",
    "batch_size",
    "resume",
    "overwrite",
    "optimized_metric",
    "output_dir",
    "metrics",
    "runtime",
)
RUNTIME_KEYS = ("device", "dtype", "deterministic", "compile", "channels_last", "threads")
# Arguments that run() passes itself, per ``_target_`` group: never settable from the config.
PROVIDED_BY_RUN = {
    "model": (),
    "metrics": (),
    "data": ("channels", "size", "num_images"),
    "logger": ("cfg", "output_dir"),
    "sampler": ("model", "x", "timesteps", "generators", "y", "operator", "callback"),
    "task.operator": ("image_shape", "generators"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


def _one_of(allowed: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in allowed), f"one of {', '.join(allowed)}"


_ABSENT = object()
BOOL = (lambda v: isinstance(v, bool)), "true or false"
# (key, test, what is allowed); a key absent from the composed config is skipped.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("num_images", _int_at_least(1), "an integer >= 1"),
    ("batch_size", _int_at_least(1), "an integer >= 1"),
    ("seed", _int_at_least(0), "an integer >= 0"),
    ("resume", *BOOL),
    ("overwrite", *BOOL),
    ("optimized_metric", *_one_of(METRICS)),
    ("data.offset", _int_at_least(0), "an integer >= 0"),
    ("sampler.num_steps", _int_at_least(1), "an integer >= 1 (and <= the model's T)"),
    ("sampler.t_start", lambda v: v is None or _is_int(v) and v >= 0, "null or an integer >= 0 (and < the model's T)"),
    ("sampler.step_size", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    ("sampler.eta", lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    ("sampler.corrector_steps", _int_at_least(0), "an integer >= 0"),
    ("sampler.corrector_size", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    ("sampler.lam", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    ("sampler.lr", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    ("sampler.zeta", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("sampler.ode_steps", _int_at_least(1), "an integer >= 1"),
    ("sampler.langevin_steps", _int_at_least(0), "an integer >= 0"),
    ("sampler.travel_length", _int_at_least(1), "an integer >= 1 (and < num_steps with travel_repeat > 1)"),
    ("sampler.travel_repeat", _int_at_least(1), "an integer >= 1 (1: no time travel)"),
    ("sampler.tau", lambda v: v is None or _is_number(v) and v >= 0, "null (task.sigma_y) or a finite number >= 0"),
    ("sampler.clip_denoised", lambda v: v is None or isinstance(v, bool), "null, true or false"),
    ("task.sigma_y", lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    ("task.sdedit", *BOOL),
    ("task.operator.sigma_y", lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    ("task.operator.kernel", *_one_of(KERNELS)),
    ("task.operator.kernel_size", lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    ("task.operator.std", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    ("task.operator.intensity", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("task.operator.mask", *_one_of(MASKS)),
    ("task.operator.box_size", _int_at_least(1), "an integer >= 1 (and <= the image size)"),
    ("task.operator.random_position", *BOOL),
    ("task.operator.fraction", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("task.operator.fraction_max", lambda v: v is None or _is_number(v) and 0 < v < 1, "null or a number in (0, 1)"),
    ("task.operator.factor", _int_at_least(1), "an integer >= 1 that divides the image size"),
    ("task.operator.downsample", *_one_of(DOWNSAMPLERS)),
    (
        "runtime.device",
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
        "auto, cpu, cuda, cuda:N or mps",
    ),
    ("runtime.dtype", *_one_of(DTYPES_ALLOWED)),
    ("runtime.deterministic", *BOOL),
    ("runtime.compile", *BOOL),
    ("runtime.channels_last", *BOOL),
    ("runtime.threads", _int_at_least(0), "an integer >= 0 (0: torch's default)"),
    ("logger.log_every", _int_at_least(0), "an integer >= 0 (0: off)"),
    ("logger.preview_images", _int_at_least(1), "an integer >= 1"),
    ("logger.init_timeout", lambda v: _is_number(v) and v > 0, "a finite number of seconds > 0"),
    ("metrics.lpips", *BOOL),
    ("metrics.lpips_required", *BOOL),
    ("metrics.fid", *BOOL),
    ("metrics.fid_required", *BOOL),
    ("metrics.fid_features", *_one_of(FID_FEATURES)),
    ("metrics.reference", lambda v: v is None or isinstance(v, str) and v != "", "null or a folder path"),
]


def _raw(node: DictConfig, key: str) -> Any:
    """The value of ``node[key]`` as written, interpolations unresolved."""
    return OmegaConf.to_container(node, resolve=False)[key]


def _source_key(cfg: DictConfig, key: str) -> str:
    """The key a user sets: follows a plain ``${other.key}`` (task.operator.kernel → task.kernel)."""
    parent, _, leaf = key.rpartition(".")
    raw = _raw(OmegaConf.select(cfg, parent), leaf) if parent else None
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return match.group(1) if match else key


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parameters(node: DictConfig, path: str) -> tuple[dict[str, inspect.Parameter], list[str]]:
    """The settable parameters of a ``_target_`` group's function or class (not those ``run`` passes)."""
    target = node.get("_target_")
    try:
        params = inspect.signature(get_object(target)).parameters
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        return {}, [f"{path}._target_={target!r}: cannot be imported ({' '.join(str(err).split())})"]
    provided = PROVIDED_BY_RUN.get(path, ())
    return {n: p for n, p in params.items() if n not in provided}, []


def _check_keys(node: DictConfig, path: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Unknown and missing keys of a ``_target_`` group, from the signature of its function or class."""
    params, problems = _parameters(node, path)
    if problems or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return problems
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    allowed = sorted({*named, *extra})
    for key in node:
        if not (key.startswith("_") and key.endswith("_")) and key not in allowed:
            value = _short(_raw(node, key))
            problems.append(f"{path}.{key}={value}: unknown key for {node._target_}; allowed: {', '.join(allowed)}")
    for name in named:
        if params[name].default is inspect.Parameter.empty and name not in node:
            problems.append(f"{path}.{name}: missing; {node._target_} needs it")
    return problems


def _check_plain(node: DictConfig, path: str, allowed: tuple[str, ...] | set[str]) -> list[str]:
    """Unknown keys of a config node without ``_target_``."""
    return [
        f"{path}{key}={_short(_raw(node, key))}: unknown key; allowed: {', '.join(sorted(allowed))}"
        for key in node
        if key not in allowed
    ]


def _unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys that nothing reads: a misspelling or ``+group.key=...`` that would otherwise be ignored or fail late."""
    problems = _check_plain(cfg, "", TOP_LEVEL_KEYS)
    if isinstance(cfg.get("runtime"), DictConfig):
        problems += _check_plain(cfg.runtime, "runtime.", RUNTIME_KEYS)
    for group in ("model", "data", "logger", "metrics"):
        if isinstance(cfg.get(group), DictConfig) and "_target_" in cfg[group]:
            problems += _check_keys(cfg[group], group)
    if isinstance(cfg.get("sampler"), DictConfig):
        problems += _check_keys(cfg.sampler, "sampler", SAMPLER_META_KEYS)
    if isinstance(cfg.get("task"), DictConfig):
        task_keys = set(TASK_KEYS)
        if isinstance(cfg.task.get("operator"), DictConfig):
            problems += _check_keys(cfg.task.operator, "task.operator")
            raw = OmegaConf.to_container(cfg.task.operator, resolve=False).values()
            task_keys |= {k for v in raw if isinstance(v, str) for k in re.findall(r"\$\{task\.(\w+)\}", v)}
        problems += _check_plain(cfg.task, "task.", task_keys)
    return problems


def _path_problems(cfg: DictConfig) -> list[str]:
    """Input folders named in the config (``data.path``) must exist."""
    path = OmegaConf.select(cfg, "data.path", default=None)
    if not isinstance(path, str):
        return []
    folder = Path(path).expanduser()
    if not folder.exists():
        return [f"data.path={path!r}: no such folder"]
    if not folder.is_dir():
        return [f"data.path={path!r} is a file; allowed: a folder of PNG/JPEG images"]
    return []


def _travel_problems(cfg: DictConfig) -> list[str]:
    """DDNM's time travel jumps back ``travel_length`` grid steps: fewer than ``num_steps``."""
    keys = ("travel_length", "travel_repeat", "num_steps")
    length, repeat, steps = (OmegaConf.select(cfg, f"sampler.{k}") for k in keys)
    if all(_is_int(v) for v in (length, repeat, steps)) and repeat > 1 and length >= steps:
        return [
            f"sampler.travel_length={length} is invalid with sampler.travel_repeat={repeat}: allowed is "
            f"1..{steps - 1} (fewer than sampler.num_steps={steps})"
        ]
    return []


def config_problems(cfg: DictConfig) -> list[str]:
    """Every missing value, unknown key, out-of-range setting and missing input path (empty: all good)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        return [f"{key}: missing value (???); set it on the command line, e.g. {key}=..." for key in missing]
    problems = _unknown_keys(cfg)
    for key, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not ok(value):
            problems.append(f"{_source_key(cfg, key)}={value!r} is invalid: allowed is {allowed}")
    return problems + _travel_problems(cfg) + _path_problems(cfg)


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem ``config_problems`` finds."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)


def peek_num_train_timesteps(model_cfg: DictConfig) -> int | None:
    """The model's T without loading it: from ``scheduler_config.json`` of a local model folder (root or
    ``scheduler/``), 1000 for ``model=tiny``; None when it cannot be known without loading."""
    if str(model_cfg.get("_target_", "")).endswith(".tiny_model"):
        return 1000
    path = OmegaConf.select(model_cfg, "pretrained", default=None)
    if not isinstance(path, str):
        return None
    folder = Path(path).expanduser()
    for candidate in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            try:
                return int(json.loads(candidate.read_text()).get("num_train_timesteps", 1000))
            except (json.JSONDecodeError, TypeError, ValueError):
                return None
    return None


def model_problems(cfg: DictConfig, model: Any) -> list[str]:
    """Checks that need the loaded model: 1 <= num_steps <= T, t_start < T, operator sizes vs the image."""
    T, size = model.num_train_timesteps, model.sample_size
    problems = []
    unet_size = model.unet.config.sample_size
    if isinstance(unet_size, (tuple, list)) and len(set(unet_size)) != 1:
        problems.append(f"model: sample_size={list(unet_size)} is not square; diffexp supports square images only")
    if _is_int(cfg.sampler.num_steps) and cfg.sampler.num_steps > T:
        problems.append(f"sampler.num_steps={cfg.sampler.num_steps} is invalid: allowed is 1..{T} (the model's T)")
    t_start = cfg.sampler.get("t_start")
    if _is_int(t_start) and t_start >= T:
        problems.append(f"sampler.t_start={t_start} is invalid: allowed is null or 0..{T - 1} (the model's T - 1)")
    op = cfg.task.get("operator")
    if op is not None:
        if _is_int(op.get("kernel_size")) and op.kernel_size // 2 >= size:
            problems.append(
                f"task.operator.kernel_size={op.kernel_size} is invalid: allowed is an odd integer <= {2 * size - 1} "
                f"for {size}x{size} images (reflect padding)"
            )
        if op.get("mask") == "box" and _is_int(op.get("box_size")) and op.box_size > size:
            problems.append(
                f"task.operator.box_size={op.box_size} is invalid: allowed is 1..{size} for {size}x{size} images"
            )
        if _is_int(op.get("factor")) and op.factor >= 1 and size % op.factor:
            problems.append(
                f"task.operator.factor={op.factor} is invalid: allowed is a divisor of the image size {size}"
            )
    return problems


def validate_data(images: torch.Tensor, cfg: DictConfig, shape: tuple[int, int, int]) -> None:
    """A data loader must return ``num_images`` finite images of the model's (C, H, W) in [-1, 1]."""
    expected = (cfg.num_images, *shape)
    if tuple(images.shape) != expected:
        raise ConfigError(
            [f"data ({cfg.data._target_}) returned images of shape {tuple(images.shape)}; expected {expected}"]
        )
    if not torch.isfinite(images).all() or images.abs().max() > 1:
        raise ConfigError([f"data ({cfg.data._target_}) returned values outside [-1, 1] or NaN/Inf"])
