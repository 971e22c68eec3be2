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
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel

from diffexp.errors import ConfigError
from diffexp.operators.base import PROVIDED as OPERATOR_PROVIDED
from diffexp.run_settings import DEVICE, RunSettings, RuntimeSettings, TaskSettings
from diffexp.runtime import resolve_device
from diffexp.samplers.registry import GRID_KEYS, PROVIDED, GridSettings, SamplerSpec, available, spec_of
from diffexp.settings import problems as settings_problems
from diffexp.settings import settings_model

# Arguments that run() passes itself, per ``_target_`` group: never settable from the config.
PROVIDED_BY_RUN = {
    "model": (),
    "metrics": (),
    "data": ("channels", "size", "num_images"),
    "logger": ("cfg", "output_dir"),
    "sampler": PROVIDED,
    "task.operator": OPERATOR_PROVIDED,
}
GROUPS = ("model", "data", "logger", "metrics", "sampler", "task.operator")
TASK_NOISE = "gaussian"  # the noise model of every task today (task.sigma_y)


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


def _names(specs: dict[str, SamplerSpec]) -> str:
    return ", ".join(specs) or "none"


def pairing_problems(
    sampler: str, spec: SamplerSpec, task: str, operator: type | None, *, sdedit: bool, noise: str = TASK_NOISE
) -> list[str]:
    """Whether ``sampler`` can solve ``task``: a measurement for a posterior sampler, guidance (or SDEdit) for a
    task with one, the operator capabilities and the noise model the sampler declares it needs."""
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
        reasons.append(f"{' or '.join(sorted(spec.noise))} noise (the task has {noise} noise)")
    if not reasons:
        return []
    return [f"sampler={sampler} cannot solve task={task}: it needs {' and '.join(reasons)}; samplers that can: "
            f"{_names({n: s for n, s in specs.items() if solves(s)})}"]


def _device_problems(cfg: DictConfig, spec: SamplerSpec | None) -> list[str]:
    """The device must exist here; float16 is refused on the CPU (no kernels) and for samplers that backpropagate
    through the network."""
    name = OmegaConf.select(cfg, "runtime.device")
    if not (isinstance(name, str) and DEVICE.fullmatch(name)):
        return []  # reported by the runtime settings
    try:
        device = resolve_device(name)
    except ConfigError as err:
        return err.problems
    if OmegaConf.select(cfg, "runtime.dtype") != "float16":
        return []
    if device.type == "cpu":
        return ["runtime.dtype=float16 on the CPU: about 10x slower than float32 (no float16 CPU kernels); "
                "allowed on CPU: float32, bfloat16"]
    if spec is not None and spec.unet_grad:
        return [f"runtime.dtype=float16 with sampler={cfg.sampler.name}: it backpropagates through the UNet, "
                "which float16 underflows without loss scaling; allowed: float32, bfloat16"]
    return []


def config_problems(cfg: DictConfig) -> list[str]:
    """Every missing value, unknown key, out-of-range setting, impossible pairing and missing input path."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        return [f"{key}: missing value (???); set it on the command line, e.g. {key}=..." for key in missing]
    problems = _plain_problems(cfg, cfg, "", RunSettings, set())
    if isinstance(cfg.get("runtime"), DictConfig):
        problems += _plain_problems(cfg, cfg.runtime, "runtime.", RuntimeSettings, set())
    if isinstance(cfg.get("task"), DictConfig):
        raw = OmegaConf.to_container(cfg.task, resolve=False).get("operator") or {}
        interpolated = {k for v in raw.values() if isinstance(v, str) for k in re.findall(r"\$\{task\.(\w+)\}", v)}
        problems += _plain_problems(cfg, cfg.task, "task.", TaskSettings, interpolated)
    targets = {}
    for path in GROUPS:
        group_problems, targets[path] = _group_problems(cfg, path)
        problems += group_problems
    operator_cls = targets["task.operator"]
    spec = spec_of(targets["sampler"]) if targets["sampler"] is not None else None
    if targets["sampler"] is not None and spec is None:
        problems.append(f"sampler._target_={cfg.sampler._target_!r} is not a declared sampler: decorate it with "
                        "@diffexp.samplers.registry.sampler(...)")
    if spec is not None:
        if spec.check is not None:
            problems += spec.check(_scalars(cfg.sampler))
        has_operator = OmegaConf.select(cfg, "task.operator") is not None
        if operator_cls is not None or not has_operator:
            problems += pairing_problems(str(cfg.sampler.get("name")), spec, str(cfg.task.get("name")), operator_cls,
                                         sdedit=cfg.task.get("sdedit", False) is True)
    return list(dict.fromkeys(problems + _device_problems(cfg, spec) + _path_problems(cfg)))  # sigma_y: twice


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
    operator = cfg.task.get("operator")
    if operator is not None:
        cls = get_object(operator._target_)
        problems += cls.check(model.image_shape, _scalars(operator))
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
