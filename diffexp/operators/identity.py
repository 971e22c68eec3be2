"""Identity operator: denoising."""

from __future__ import annotations

from torch import Tensor

from diffexp.operators.base import LinearOperator


class Identity(LinearOperator):
    """A = I; y = x + σ_y·n."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y
