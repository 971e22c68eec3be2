"""High dynamic range: y = clip(scale·x, −1, 1) in [-1, 1] units, scale 2 (DAPS, RED-diff: the sensor saturates).

Nonlinear (piecewise linear). Its ``vjp`` is autograd's: (∂A/∂x)ᵀ v = scale·v where |scale·x| <= 1 and 0 where the
value is clipped (a saturated pixel says only that |x| >= 1/scale), so a likelihood gradient has no pull there and
the prior decides. ‖∂A/∂x‖ = scale: a step size relative to a unit Lipschitz bound (DAPS's Langevin ``step_size``)
is scale² times larger in effect. Baseline: y/scale (exact where not clipped; ±1/scale where clipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from diffexp.noise.base import NoiseModel
from diffexp.operators.base import Operator
from diffexp.settings import NonNegativeFloat, PositiveFloat


class HDR(Operator):
    """y = clip(scale·x, −1, 1).

    Args:
        scale: the exposure gain before clipping (DAPS and RED-diff: 2).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"differentiable"})  # autograd vjp; no adjoint, pinv, prox

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: NonNegativeFloat,
        *,
        noise: NoiseModel | None = None,
        scale: PositiveFloat = 2.0,
    ) -> None:
        super().__init__(image_shape, generators, sigma_y, noise)
        self._require_valid(scale=scale)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return (self.scale * x).clamp(-1, 1)

    def baseline(self, y: Tensor) -> Tensor:
        """y/scale: the unclipped inverse (a clipped pixel maps to ±1/scale)."""
        return y.clamp(-1, 1) / self.scale
