"""Poisson (shot) noise as DPS defines it (Chung et al., ICLR 2023; ``PoissonNoise`` in its
``guided_diffusion/measurements.py``): in [0, 1] units

    y₀₁ = k / (255·rate),   k ~ Poisson(255·rate·x₀₁),   x₀₁ = max((A(x) + 1)/2, 0),

mapped back to [-1, 1] (y = 2·y₀₁ − 1). ``rate`` scales the photon count: a pixel of value v ∈ [0, 1] collects
255·rate·v photons on average, so its relative noise is 1/sqrt(255·rate·v) and a larger rate is a cleaner image.
Default 1.0: the DPS paper's Poisson experiments (the official code has no default: its README asks for ``rate``).

Differences from DPS's code, on purpose:
- k is drawn with ``torch.poisson`` from each image's generator (DPS: unseeded ``np.random.poisson``);
- y is not clipped to [-1, 1] afterwards (DPS clips, which censors every count above 255·rate, about half of those of
  a white pixel, and would make the likelihood below wrong);
- DPS guides with ‖y − A(x̂0)‖/|y| (a rescaled Gaussian step, undefined at y = 0, common on digits); here
  ``residual`` is the Poisson deviance residual, so DPS follows the true Poisson likelihood (``Poisson`` below).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from diffexp.noise.base import NoiseModel, per_image_sum, poisson_counts
from diffexp.settings import PositiveFloat

MIN_COUNT = 0.5  # below this expected count the NLL of a measured photon continues along its tangent (``_f``)


class Poisson(NoiseModel):
    """y₀₁ = Poisson(255·rate·x₀₁)/(255·rate) (module docstring).

    - ``nll``: the exact Poisson NLL in counts, Σ λ − k·log λ + log k!, with λ = 255·rate·mean₀₁ and k the counts
      of y. Where a photon was measured (k > 0) but the prediction is darker than ``MIN_COUNT`` = 0.5 expected counts,
      λ − k·log λ continues along its tangent at λ = 0.5 (a finite convex lower bound, so a dark prediction under a
      measured photon is pulled up with a bounded gradient instead of an infinite one); where k = 0 it is max(λ, 0)
      (a prediction below black costs nothing, as it measures nothing).
    - ``residual``: sigma_y · (deviance residual), d_i = sign(k_i − λ_i)·sqrt(2(f(λ_i) − f(k_i))), f the per-pixel
      NLL above, so ‖residual‖²/(2·sigma_y²) = nll − Σ (f(k) + log k!), exactly (a constant in ``mean``).
    - ``sigma_y`` (effective σ): 2/sqrt(255·rate), the standard deviation of a white pixel (x₀₁ = 1) in [-1, 1]
      units, the largest of any pixel in [-1, 1]: 0.125 at rate 1.

    Args:
        rate: photons per unit of [0, 1] intensity, in units of 255 (DPS's λ; > 0).
    """

    name: ClassVar[str] = "poisson"

    def __init__(self, rate: PositiveFloat = 1.0) -> None:
        self._require_valid(rate=rate)
        self.rate = float(rate)

    @property
    def scale(self) -> float:
        """Counts per unit of [0, 1] intensity: 255·rate."""
        return 255.0 * self.rate

    @property
    def sigma_y(self) -> float:
        return 2.0 / math.sqrt(self.scale)

    def sample(self, mean: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        return 2 * poisson_counts(mean, generators, self.scale) / self.scale - 1

    def counts(self, v: Tensor) -> Tensor:
        """255·rate·(v + 1)/2: the count (expected, for ``mean``) that a value in [-1, 1] stands for."""
        return self.scale * (v + 1) / 2

    def _f(self, k: Tensor, lam: Tensor) -> Tensor:
        """The per-pixel NLL without log k!: λ − k·log λ, tangent-continued below ``MIN_COUNT`` where k > 0, and
        max(λ, 0) where k = 0 (class docstring)."""
        safe = lam.clamp(min=MIN_COUNT)
        tangent = (1 - k / MIN_COUNT) * (lam - MIN_COUNT).clamp(max=0)
        return torch.where(k > 0, safe - k * safe.log() + tangent, lam.clamp(min=0))

    def nll(self, y: Tensor, mean: Tensor) -> Tensor:
        k = self.counts(y).clamp(min=0)
        return per_image_sum(self._f(k, self.counts(mean)) + torch.lgamma(k + 1))

    def gradient(self, y: Tensor, mean: Tensor) -> Tensor:
        """sigma_y²·∂nll/∂mean = 2·f'(λ): 2(1 − k/λ) where k > 0 (with λ at least ``MIN_COUNT``), 2 where k = 0 and
        λ > 0, 0 where k = 0 and λ ≤ 0 (sigma_y² = 4/(255·rate) times ∂λ/∂mean = 255·rate/2)."""
        k, lam = self.counts(y).clamp(min=0), self.counts(mean)
        slope = torch.where(k > 0, 1 - k / lam.clamp(min=MIN_COUNT), (lam > 0).to(lam.dtype))
        return 2 * slope

    def residual(self, y: Tensor, mean: Tensor) -> Tensor:
        k = self.counts(y).clamp(min=0)
        lam = self.counts(mean)
        best = torch.where(k > 0, k - k * k.clamp(min=MIN_COUNT).log(), torch.zeros_like(k))  # f(k, k), k ≥ 1
        deviance = 2 * (self._f(k, lam) - best)
        positive = deviance > 1e-12  # sqrt's gradient at 0 is infinite: the pixel's share of ∇‖r‖² is 0 there
        root = torch.where(positive, deviance, torch.ones_like(deviance)).sqrt() * positive
        return self.sigma_y * torch.where(k > lam, root, -root)
