"""Poisson noise followed by additive Gaussian noise (a photon-counting sensor with read noise):
y = Poisson(A(x)) as ``diffexp.noise.poisson`` draws it, plus σ·n in [-1, 1] units, n ~ N(0, I), both from each
image's generator (the counts first). ``conf/noise/poisson_gaussian.yaml`` leaves σ null: the operator's
``sigma_y`` (``task.sigma_y``), set by ``bind``.

The exact likelihood is a Poisson-weighted sum of Gaussians (no closed form). ``nll`` is its usual Gaussian
approximation with the variance estimated from the measurement (DPS's weighting Λ = 1/(2·Var), there with the
Poisson variance read off y): y ~ N(mean, v), v_i = 4·max(y₀₁,i, 0)/(255·rate) + σ², so

    nll = Σ (y − mean)²/(2v) + ½·log(2πv),   residual = sigma_y·(y − mean)/sqrt(v),

a weighted least-squares fit that is quadratic in ``mean``; σ > 0 keeps v > 0 where y is black (σ = 0: use
``noise=poisson``). ``sigma_y`` = sqrt(4/(255·rate) + σ²), the standard deviation of a white pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from diffexp.noise.base import NoiseModel, per_image_sum, poisson_counts
from diffexp.rng import per_image_noise
from diffexp.settings import PositiveFloat


class PoissonGaussian(NoiseModel):
    """Poisson(255·rate·x₀₁)/(255·rate) in [0, 1] units, then + σ·n in [-1, 1] units (module docstring).

    Args:
        rate: as ``Poisson``'s (DPS's λ, default 1.0).
        sigma: the Gaussian read noise, [-1, 1] units (> 0); None: the operator's ``sigma_y`` (``bind``).
    """

    name: ClassVar[str] = "poisson_gaussian"

    def __init__(self, rate: PositiveFloat = 1.0, sigma: PositiveFloat | None = None) -> None:
        self._require_valid(rate=rate, sigma=sigma)
        self.rate = float(rate)
        self.sigma = None if sigma is None else float(sigma)

    def bind(self, sigma_y: float) -> PoissonGaussian:
        if self.sigma is not None:
            return self
        if not sigma_y > 0:
            raise ValueError(f"noise=poisson_gaussian needs task.sigma_y > 0 (got {sigma_y}); use noise=poisson")
        return PoissonGaussian(self.rate, sigma_y)

    @property
    def read_sigma(self) -> float:
        if self.sigma is None:
            raise ValueError("PoissonGaussian(sigma=None): bind it to the operator's sigma_y first")
        return self.sigma

    @property
    def scale(self) -> float:
        return 255.0 * self.rate

    @property
    def sigma_y(self) -> float:
        return math.sqrt(4 / self.scale + self.read_sigma**2)

    def sample(self, mean: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        y = 2 * poisson_counts(mean, generators, self.scale) / self.scale - 1
        return y + self.read_sigma * per_image_noise(generators, y)

    def variance(self, y: Tensor) -> Tensor:
        """v = 4·max(y₀₁, 0)/(255·rate) + σ², the variance the approximation assigns to each pixel."""
        return 4 * ((y + 1) / 2).clamp(min=0) / self.scale + self.read_sigma**2

    def nll(self, y: Tensor, mean: Tensor) -> Tensor:
        v = self.variance(y)
        return per_image_sum((y - mean) ** 2 / (2 * v) + 0.5 * torch.log(2 * math.pi * v))

    def gradient(self, y: Tensor, mean: Tensor) -> Tensor:
        return self.sigma_y**2 * (mean - y) / self.variance(y)

    def residual(self, y: Tensor, mean: Tensor) -> Tensor:
        return self.sigma_y * (y - mean) / self.variance(y).sqrt()
