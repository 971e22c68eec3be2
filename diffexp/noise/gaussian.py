"""Additive white Gaussian noise: y = A(x) + σ·n, n ~ N(0, I), σ in [-1, 1] image units (DPS's convention:
σ = 0.05 here is 0.025 in [0, 1] units). ``conf/noise/gaussian.yaml`` leaves σ null: the operator's ``sigma_y``
(``task.sigma_y``), set by ``bind``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from diffexp.noise.base import NoiseModel, per_image_sum
from diffexp.rng import per_image_noise
from diffexp.settings import NonNegativeFloat


class Gaussian(NoiseModel):
    """N(mean, σ²I): nll = ‖y − mean‖²/(2σ²) + const, residual = y − mean, ``sigma_y`` = σ.

    Args:
        sigma: the standard deviation, [-1, 1] units (0: noiseless; ``nll`` then refuses); None: the operator's
            ``sigma_y`` (``bind``), unusable before.
    """

    name: ClassVar[str] = "gaussian"

    def __init__(self, sigma: NonNegativeFloat | None = None) -> None:
        self._require_valid(sigma=sigma)
        self.sigma = None if sigma is None else float(sigma)

    def bind(self, sigma_y: float) -> Gaussian:
        return Gaussian(sigma_y) if self.sigma is None else self

    @property
    def sigma_y(self) -> float:
        if self.sigma is None:
            raise ValueError("Gaussian(sigma=None): bind it to the operator's sigma_y first")
        return self.sigma

    def sample(self, mean: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """mean + σ·n, n drawn per image (``per_image_noise``); mean itself, drawing nothing, when σ = 0."""
        sigma = self.sigma_y
        return mean + sigma * per_image_noise(generators, mean) if sigma > 0 else mean

    def nll(self, y: Tensor, mean: Tensor) -> Tensor:
        if self.sigma_y == 0:
            raise ValueError("noise.sigma=0: noiseless, the likelihood has no density")
        constant = y[0].numel() * (0.5 * math.log(2 * math.pi) + math.log(self.sigma))
        return per_image_sum((y - mean) ** 2) / (2 * self.sigma**2) + constant

    def residual(self, y: Tensor, mean: Tensor) -> Tensor:
        return y - mean

    def gradient(self, y: Tensor, mean: Tensor) -> Tensor:
        return mean - y
