"""Every problem of a composed config, gathered into one message before any compute.

Orchestration only: the keys and their constraints are declared by the components themselves, as typed
parameters of the function or class a group's ``_target_`` names (``diffexp.settings``), the run's own keys in
``diffexp.run_settings``, what a sampler needs in its ``@sampler`` declaration and what an operator offers in its
``capabilities``. ``config_problems(cfg)`` asks them all and returns every problem (empty: all good); the checks
that need the loaded model (its T, the image size) are in ``model_problems``, the data's in ``validate_data``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel

from diffexp.errors import ConfigError
from diffexp.operators.base import PROVIDED as OPERATOR_PROVIDED
from diffexp.run_settings import DEVICE, RunSettings, RuntimeSettings, TaskSettings
from diffexp.runtime import resolve_device
from diffexp.samplers.registry import GRID_KEYS, PROVIDED, GridSettings, SamplerSpec, available, spec_of
from diffexp.settings import problems as settings_problems
from diffexp.settings import settings_model, valid_values

# Arguments that run() passes itself, per ``_target_`` group: never settable from the config.
PROVIDED_BY_RUN = {
    "model": (),
    "metrics": (),
    "data": ("channels", "size", "num_images"),
    "logger": ("cfg", "output_dir"),
    "sampler": PROVIDED,
    "task.operator": OPERATOR_PROVIDED,
    "noise": (),
}
GROUPS = ("model", "data", "logger", "metrics", "sampler", "task.operator", "noise")
DEFAULT_NOISE = "gaussian"  # the noise model of a config without a ``noise`` group (task.sigma_y)


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


def _scalars(node: DictConfig) -> dict[str, Any]:
    """A node's resolved values (nested groups left out)."""
    values = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in values.items() if not isinstance(v, dict)}


def _target(node: DictConfig, path: str) -> tuple[Callable[..., Any] | None, list[str]]:
    target = node.get("_target_")
    try:
        return get_object(target), []
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        return None, [f"{path}._target_={target!r}: cannot be imported ({' '.join(str(err).split())})"]


def _key_problems(node: DictConfig, path: str, target: Callable[..., Any], extra: tuple[str, ...]) -> list[str]:
    """Unknown and missing keys of a ``_target_`` group, from the signature of its function or class."""
    params = {n: p for n, p in inspect.signature(target).parameters.items() if n not in PROVIDED_BY_RUN[path]}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    allowed = sorted({*named, *extra})
    problems = [
        f"{path}.{key}={_short(_raw(node, key))}: unknown key for {node._target_}; allowed: {', '.join(allowed)}"
        for key in node
        if not (key.startswith("_") and key.endswith("_")) and key not in allowed
    ]
    return problems + [
        f"{path}.{name}: missing; {node._target_} needs it"
        for name in named
        if params[name].default is inspect.Parameter.empty and name not in node
    ]


def _plain_problems(cfg: DictConfig, node: DictConfig, prefix: str, model: type[BaseModel], extra: set[str]) -> list[str]:
    """Unknown keys and invalid values of a node without ``_target_`` (the run's own settings)."""
    allowed = set(model.model_fields) | extra
    problems = [
        f"{prefix}{key}={_short(_raw(node, key))}: unknown key; allowed: {', '.join(sorted(allowed))}"
        for key in node
        if key not in allowed
    ]
    values = {k: v for k, v in _scalars(node).items() if k in model.model_fields}
    return problems + settings_problems(model, values, prefix, key=lambda k: _source_key(cfg, k))


def _group_problems(cfg: DictConfig, path: str) -> tuple[list[str], Callable[..., Any] | None]:
    """Keys and values of one ``_target_`` group, checked against its function's or class's declaration."""
    node = OmegaConf.select(cfg, path)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return [], None
    target, problems = _target(node, path)
    if target is None:
        return problems, None
    extra = GRID_KEYS if path == "sampler" else ()
    problems = _key_problems(node, path, target, extra)
    values = {k: v for k, v in _scalars(node).items() if not (k.startswith("_") and k.endswith("_"))}
    model = settings_model(target, PROVIDED_BY_RUN[path])
    problems += settings_problems(model, values, f"{path}.", key=lambda k: _source_key(cfg, k))
    if path == "sampler":
        problems += settings_problems(GridSettings, values, "sampler.")
    return problems, target


def _overridden(prefix: str) -> set[str]:
    """The keys under ``prefix`` that the command line sets (``task.operator.kernel=motion`` → ``kernel``); none
    outside a Hydra run."""
    if not HydraConfig.initialized():
        return set()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return {k[len(prefix):] for k in keys if k.startswith(prefix) and "." not in k[len(prefix):]}


def _data_problems(cfg: DictConfig, loader: Callable[..., Any] | None) -> list[str]:
    """The data loader's own check (``diffexp.data.loaders.checked_by``) of its valid settings against
    ``num_images``: unreadable files and too few images are found here, before the model loads."""
    check = getattr(loader, "check", None)
    num_images = cfg.get("num_images")
    if check is None or isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        return []
    values = {k: v for k, v in _scalars(cfg.data).items() if not (k.startswith("_") and k.endswith("_"))}
    return check(num_images=num_images, **valid_values(settings_model(loader, PROVIDED_BY_RUN["data"]), values))


def _names(specs: dict[str, SamplerSpec]) -> str:
    return ", ".join(specs) or "none"


def pairing_problems(
    sampler: str, spec: SamplerSpec, task: str, operator: type | None, *, sdedit: bool, noise: str = DEFAULT_NOISE
) -> list[str]:
    """Whether ``sampler`` can solve ``task`` with ``noise`` (the noise model's declared ``name``): a measurement for
    a posterior sampler, guidance (or SDEdit) for a task with one, the operator capabilities and the noise model the
    sampler declares it needs."""
    specs = available()

    def solves(s: SamplerSpec) -> bool:
        return s.measurement and s.operator <= operator.capabilities and noise in s.noise

    if operator is None:
        if spec.measurement:
            unconditional = {n: s for n, s in specs.items() if not s.measurement}
            return [f"sampler={sampler} needs a measurement; task={task} supports {_names(unconditional)}"]
        return []
    if not spec.measurement:
        if sdedit:
            return []
        return [f"sampler={sampler} cannot solve task={task}: it needs measurement guidance; use a posterior sampler "
                f"({_names({n: s for n, s in specs.items() if solves(s)})})"]
    missing = sorted(spec.operator - operator.capabilities)
    reasons = []
    if missing:
        offers = ", ".join(sorted(operator.capabilities)) or "only its forward map"
        reasons.append(f"an operator with {', '.join(missing)} ({operator.__name__} offers {offers})")
    if noise not in spec.noise:
        reasons.append(f"{' or '.join(sorted(spec.noise))} noise (noise={noise})")
    if not reasons:
        return []
    return [f"sampler={sampler} cannot solve task={task}: it needs {' and '.join(reasons)}; samplers that can: "
            f"{_names({n: s for n, s in specs.items() if solves(s)})}"]


def _device_problems(cfg: DictConfig, spec: SamplerSpec | None) -> list[str]:
    """The device must exist here; float16 is refused on the CPU (no kernels) and for samplers that backpropagate
    through the network. An unavailable device is reported together with the dtype problem it would have on the
    device that is available (``auto``), so that one try finds both."""
    name = OmegaConf.select(cfg, "runtime.device")
    if not (isinstance(name, str) and DEVICE.fullmatch(name)):
        return []  # reported by the runtime settings
    problems: list[str] = []
    try:
        device = resolve_device(name)
    except ConfigError as err:
        problems, device = err.problems, resolve_device("auto")
    if OmegaConf.select(cfg, "runtime.dtype") != "float16":
        return problems
    if device.type == "cpu":
        problems.append("runtime.dtype=float16 on the CPU: about 10x slower than float32 (no float16 CPU kernels); "
                        "allowed on CPU: float32, bfloat16")
    if spec is not None and spec.unet_grad:
        problems.append(f"runtime.dtype=float16 with sampler={cfg.sampler.name}: it backpropagates through the UNet, "
                        "which float16 underflows without loss scaling; allowed: float32, bfloat16")
    return problems


def config_problems(cfg: DictConfig) -> list[str]:
    """Every missing value, unknown key, out-of-range setting, impossible pairing and missing input path."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        return [f"{key}: missing value (???); set it on the command line, e.g. {key}=..." for key in missing]
    problems = _plain_problems(cfg, cfg, "", RunSettings, {"noise"})
    if isinstance(cfg.get("runtime"), DictConfig):
        problems += _plain_problems(cfg, cfg.runtime, "runtime.", RuntimeSettings, set())
    targets, group_problems = {}, []
    for path in GROUPS:
        found, targets[path] = _group_problems(cfg, path)
        group_problems += found
    operator_cls = targets["task.operator"]
    if isinstance(cfg.get("task"), DictConfig):
        raw = OmegaConf.to_container(cfg.task, resolve=False).get("operator") or {}
        shortcuts = {k for v in raw.values() if isinstance(v, str) for k in re.findall(r"\$\{task\.(\w+)\}", v)}
        shortcuts |= {k for k in _overridden("task.operator.") if k in cfg.task}  # its target set directly
        problems += _plain_problems(cfg, cfg.task, "task.", TaskSettings, shortcuts)
    problems += group_problems
    spec = spec_of(targets["sampler"]) if targets["sampler"] is not None else None
    if targets["sampler"] is not None and spec is None:
        problems.append(f"sampler._target_={cfg.sampler._target_!r} is not a declared sampler: decorate it with "
                        "@diffexp.samplers.registry.sampler(...)")
    if spec is not None:
        if spec.check is not None:
            problems += spec.check(_scalars(cfg.sampler))
        has_operator = OmegaConf.select(cfg, "task.operator") is not None
        if operator_cls is not None or not has_operator:
            noise = getattr(targets["noise"], "name", DEFAULT_NOISE)  # the noise model's declared name
            problems += pairing_problems(str(cfg.sampler.get("name")), spec, str(cfg.task.get("name")), operator_cls,
                                         sdedit=cfg.task.get("sdedit", False) is True, noise=noise)
    problems += _device_problems(cfg, spec) + _data_problems(cfg, targets["data"])
    return list(dict.fromkeys(problems))  # task.sigma_y is also checked as task.operator.sigma_y


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem ``config_problems`` finds."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _model_file(model_cfg: DictConfig, names: tuple[str, ...]) -> dict[str, Any] | None:
    """The first of ``names`` (relative to the local model folder ``model.pretrained``) that reads as a JSON
    object; None for other models."""
    path = OmegaConf.select(model_cfg, "pretrained", default=None)
    if not isinstance(path, str):
        return None
    folder = Path(path).expanduser()
    return next((found for name in names if (found := _json(folder / name)) is not None), None)


def peek_num_train_timesteps(model_cfg: DictConfig) -> int | None:
    """The model's T without loading it: from ``scheduler_config.json`` of a local model folder (root or
    ``scheduler/``), 1000 for ``model=tiny``; None when it cannot be known without loading."""
    if str(model_cfg.get("_target_", "")).endswith(".tiny_model"):
        return 1000
    scheduler = _model_file(model_cfg, ("scheduler_config.json", "scheduler/scheduler_config.json"))
    value = (scheduler or {}).get("num_train_timesteps", 1000)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def peek_image_shape(model_cfg: DictConfig) -> tuple[int, int, int] | None:
    """The model's (C, H, W) without loading it: from the UNet's ``config.json`` of a local model folder (root or
    ``unet/``), or ``model=tiny``'s settings; None when it cannot be known without loading."""
    if str(model_cfg.get("_target_", "")).endswith(".tiny_model"):
        unet = {"sample_size": model_cfg.get("sample_size"), "in_channels": model_cfg.get("channels")}
    else:
        unet = _model_file(model_cfg, ("config.json", "unet/config.json")) or {}
    size, channels = unet.get("sample_size"), unet.get("in_channels")
    if isinstance(size, list) and len(size) == 2:
        size = size if all(isinstance(v, int) for v in size) else None
    elif isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    else:
        size = None
    if size is None or not isinstance(channels, int) or isinstance(channels, bool):
        return None
    return channels, size[0], size[1]


def unloaded_model_problems(cfg: DictConfig) -> list[str]:
    """The checks of ``model_problems`` that the model's files allow without loading it (the grid against its T,
    the operator against its image shape): reported with the config's problems, so one try finds them all."""
    T, shape = peek_num_train_timesteps(cfg.model), peek_image_shape(cfg.model)
    problems = grid_problems(cfg.sampler, T) if T is not None else []
    return problems + (_operator_problems(cfg, shape) if shape is not None else [])


def _operator_problems(cfg: DictConfig, image_shape: tuple[int, int, int]) -> list[str]:
    operator = cfg.task.get("operator")
    if not isinstance(operator, DictConfig) or "_target_" not in operator:
        return []
    try:
        cls = get_object(operator._target_)
    except (ImportError, AttributeError, ValueError, TypeError):
        return []  # reported by config_problems
    return cls.check(image_shape, _scalars(operator)) if hasattr(cls, "check") else []


def grid_problems(sampler: DictConfig, T: int) -> list[str]:
    """The time grid against the model's T: 1 <= num_steps <= T, t_start < T."""
    problems = []
    steps, t_start = sampler.get("num_steps"), sampler.get("t_start")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > T:
        problems.append(f"sampler.num_steps={steps} is invalid: allowed is 1..{T} (the model's T)")
    if isinstance(t_start, int) and not isinstance(t_start, bool) and t_start >= T:
        problems.append(f"sampler.t_start={t_start} is invalid: allowed is null or 0..{T - 1} (the model's T - 1)")
    return problems


def model_problems(cfg: DictConfig, model: Any) -> list[str]:
    """Checks that need the loaded model: its own (``model.problems()``), the grid against its T, and the
    operator's checks against its image shape (``Operator.check``)."""
    problems = model.problems() + grid_problems(cfg.sampler, model.num_train_timesteps)
    return problems + _operator_problems(cfg, model.image_shape)


def validate_data(images: torch.Tensor, cfg: DictConfig, shape: tuple[int, int, int]) -> None:
    """A data loader must return ``num_images`` finite images of the model's (C, H, W) in [-1, 1]."""
    expected = (cfg.num_images, *shape)
    if tuple(images.shape) != expected:
        raise ConfigError(
            [f"data ({cfg.data._target_}) returned images of shape {tuple(images.shape)}; expected {expected}"]
        )
    if not torch.isfinite(images).all() or images.abs().max() > 1:
        raise ConfigError([f"data ({cfg.data._target_}) returned values outside [-1, 1] or NaN/Inf"])
