"""What each sampler declares: ``@sampler(...)`` registers a sampler function with its capabilities.

Every field is required (no silent defaults): a posterior sampler that forgot to say it needs a measurement
would start SDEdit-style from the noisy image, one that forgot its network calls would report a wrong NFE::

    @sampler(measurement=True, unet_grad=True, operator=frozenset(), noise=frozenset({"gaussian"}),
             network_calls=per_step, sampling_steps=per_step)
    def dps(model, x, *, timesteps, generators, y=None, operator=None, callback=None, step_size: ... = 1.0): ...

The run reads the declaration (``spec_of``), pairs it with the task's operator and noise model
(``diffexp.validate.pairing_problems``) and checks the sampler's hyperparameters against the function's own
annotations (``diffexp.settings``). ``available()`` lists the samplers of ``conf/sampler/`` with their
declarations: the one list of samplers that ``make table`` (``python -m diffexp.samplers``), the error messages
and the tests use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from hydra.utils import get_object
from pydantic import BaseModel
from torch import Tensor

from diffexp.noise import available as noise_models
from diffexp.operators.base import CAPABILITIES
from diffexp.settings import STRICT, Allowed, Ge

CONF_SAMPLERS = Path(__file__).resolve().parents[2] / "conf" / "sampler"
NOISE_MODELS = frozenset(noise_models())  # the options of conf/noise/ (``diffexp.noise``)
# Arguments ``run`` passes to every sampler itself: never settable from the config.
PROVIDED = ("model", "x", "timesteps", "generators", "y", "operator", "callback")
Count = Callable[..., int]


class GridSettings(BaseModel):
    """The sampler keys ``run`` reads itself (not arguments of the function): the time grid."""

    model_config = STRICT
    name: str
    num_steps: Annotated[int, Ge(1), Allowed("an integer >= 1 (and <= the model's T)")]
    t_start: Annotated[int, Ge(0), Allowed("null or an integer >= 0 (and < the model's T)")] | None = None


GRID_KEYS = tuple(GridSettings.model_fields)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler's declaration.

    Attributes:
        name: the function's name (its config option, ``conf/sampler/<name>.yaml``).
        measurement: needs ``y`` and an operator (a posterior sampler); False: an unconditional sampler, which
            starts from the noisy image (SDEdit) on tasks that allow it (``task.sdedit``).
        unet_grad: backpropagates through the network (refused in float16).
        operator: the operator capabilities it needs (``diffexp.operators.base.CAPABILITIES``).
        noise: the noise models its likelihood handles.
        network_calls: ``(timesteps, **hyperparameters) -> int``, network evaluations per image (``nfe``).
        sampling_steps: ``(timesteps, **hyperparameters) -> int``, callbacks per batch (progress, W&B steps).
        check: ``(settings) -> list[str]``, problems between its settings (grid keys included), or None.
    """

    name: str
    measurement: bool
    unet_grad: bool
    operator: frozenset[str]
    noise: frozenset[str]
    network_calls: Count
    sampling_steps: Count
    check: Callable[[dict[str, Any]], list[str]] | None


def per_step(timesteps: Tensor, **hyperparameters: object) -> int:
    """One network call (or callback) per grid step."""
    return len(timesteps)


def sampler(
    *,
    measurement: bool,
    unet_grad: bool,
    operator: frozenset[str],
    noise: frozenset[str],
    network_calls: Count,
    sampling_steps: Count,
    check: Callable[[dict[str, Any]], list[str]] | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Declare and register a sampler function (see the module docstring); bad declarations fail at import."""
    unknown_caps = set(operator) - CAPABILITIES
    unknown_noise = set(noise) - NOISE_MODELS
    if not isinstance(operator, frozenset) or unknown_caps:
        raise TypeError(f"@sampler(operator={operator!r}): a frozenset of {', '.join(sorted(CAPABILITIES))}")
    if not isinstance(noise, frozenset) or unknown_noise or (measurement and not noise):
        raise TypeError(f"@sampler(noise={noise!r}): a non-empty frozenset of {', '.join(sorted(NOISE_MODELS))}")
    if not (isinstance(measurement, bool) and isinstance(unet_grad, bool)):
        raise TypeError("@sampler(measurement=..., unet_grad=...): both true or false")

    def register(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        function.spec = SamplerSpec(  # type: ignore[attr-defined]
            function.__name__, measurement, unet_grad, operator, noise, network_calls, sampling_steps, check
        )
        return function

    return register


def spec_of(function: Callable[..., Any]) -> SamplerSpec | None:
    """The declaration of a sampler function (or of the function inside a ``functools.partial``)."""
    while isinstance(function, functools.partial):
        function = function.func
    spec = getattr(function, "spec", None)
    return spec if isinstance(spec, SamplerSpec) else None


def available(folder: Path = CONF_SAMPLERS) -> dict[str, SamplerSpec]:
    """The samplers of ``conf/sampler/*.yaml`` (option name → declaration), in name order."""
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        spec = spec_of(get_object(target)) if isinstance(target, str) else None
        if spec is not None:
            out[path.stem] = spec
    return out

