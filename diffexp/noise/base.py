"""What a noise model offers: ``sample``, ``nll``, ``residual`` and an effective ``sigma_y``.

All tensors are in the project's [-1, 1] image units; ``mean`` is the clean measurement A(x), shaped (B, ...), and
y a measurement of the same shape. Every method works per image: row i of ``sample`` draws only from
``generators[i]`` (so a measurement never depends on its batch), and ``nll`` returns one value per image.

``residual(y, mean)`` is the vector r, in y's units, with

    nll(y, mean) = ‖r‖² / (2·sigma_y²) + (a constant in ``mean``),

so a DPS-style sampler that follows ∇‖r‖ follows the likelihood, and for Gaussian noise r is exactly y − mean (the
residual every sampler used before noise models existed). ``gradient(y, mean)`` = ½∂‖r‖²/∂mean =
sigma_y²·∂nll/∂mean, what a Langevin step on the likelihood pushes back through Aᵀ (DAPS): mean − y for Gaussian
noise, bit for bit. ``sigma_y`` is the noise model's standard deviation in
[-1, 1] units: σ for Gaussian noise, an effective value (documented by each model) for the others; code that needs
one noise level (the divergence check of the evaluation, SDEdit's start) reads it through ``operator.sigma_y``.

A noise model declares its settings as typed keyword parameters of its constructor (``diffexp.settings``), which
refuses bad values with the config validation's messages (``noise.<key>=<value> is invalid: allowed is ...``), and
its ``name``: the option of ``conf/noise/`` that the samplers' ``@sampler(noise=...)`` declarations name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffexp.settings import problems, settings_model

PREFIX = "noise."  # where the settings live in the config


class NoiseModel(ABC):
    """A measurement noise model (module docstring). Stateless once built: one instance may serve every batch."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a concrete subclass that does not declare its own ``name``."""
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None) and not isinstance(vars(cls).get("name"), str):
            raise TypeError(f"{cls.__qualname__} must declare name: ClassVar[str] (its option in conf/noise/)")

    def bind(self, sigma_y: float) -> NoiseModel:
        """This model with its Gaussian σ set to the operator's ``sigma_y`` where the config leaves it null (the
        ``noise.sigma: null`` of conf/noise/: ``task.sigma_y``, without an interpolation into the noise node, which
        Hydra's instantiate would resolve in place in the run's config); itself by default."""
        return self

    def _require_valid(self, **settings: Any) -> None:
        """Raise ``ValueError`` naming every one of ``settings`` that the typed constructor parameters refuse."""
        found = problems(settings_model(type(self)), settings, PREFIX)
        if found:
            raise ValueError("; ".join(found))

    @property
    @abstractmethod
    def sigma_y(self) -> float:
        """The noise's standard deviation in [-1, 1] units (an effective one where it depends on the signal)."""

    @abstractmethod
    def sample(self, mean: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """A noisy measurement of ``mean``, row i drawn from ``generators[i]``."""

    @abstractmethod
    def nll(self, y: Tensor, mean: Tensor) -> Tensor:
        """−log p(y | mean) per image, shaped (B,) (differentiable in ``mean``)."""

    @abstractmethod
    def residual(self, y: Tensor, mean: Tensor) -> Tensor:
        """r with nll = ‖r‖²/(2·sigma_y²) + const, shaped like y (differentiable in ``mean``)."""

    def gradient(self, y: Tensor, mean: Tensor) -> Tensor:
        """½∂‖residual‖²/∂mean = sigma_y²·∂nll/∂mean, shaped like y (by autograd here; models override it with the
        written-out form). A plain tensor: no graph is kept, and it works under ``torch.no_grad``."""
        with torch.enable_grad():
            mean = mean.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.residual(y, mean).pow(2).sum() / 2, mean)
        return grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def check_generators(generators: Sequence[torch.Generator], like: Tensor) -> None:
    if len(generators) != like.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {like.shape[0]} images")


def poisson_counts(mean: Tensor, generators: Sequence[torch.Generator], scale: float) -> Tensor:
    """Counts k ~ Poisson(scale·max(mean₀₁, 0)), mean₀₁ = (mean + 1)/2, row i drawn with ``generators[i]``
    (``torch.poisson``, on mean's device and dtype)."""
    check_generators(generators, mean)
    rate = scale * ((mean + 1) / 2).clamp(min=0)
    return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rate, generators, strict=True)])


def per_image_sum(v: Tensor) -> Tensor:
    return v.flatten(1).sum(1)
