"""Identity operator: denoising."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from diffexp.operators.base import LinearOperator, PixelBasisSVD, Weight


class Identity(PixelBasisSVD, LinearOperator):
    """A = I; y = x + σ_y·n. Every solve is a scalar division."""

    capabilities: ClassVar[frozenset[str]] = LinearOperator.capabilities | {"svd"}

    def svd_singulars(self) -> Tensor:
        """Σ = I (a 0-d one, broadcast)."""
        return torch.ones(())

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def pinv(self, y: Tensor) -> Tensor:
        return y

    def solve_aat(self, v: Tensor, *, aat_weight: Weight, noise_var: Weight) -> Tensor:
        return v / (aat_weight + noise_var)

    def prox(self, z: Tensor, y: Tensor, *, rho: Weight) -> Tensor:
        return (y + rho * z) / (1 + rho)
