"""Measurement operators: ``nn.Module``s with ``forward`` (A) and, for linear ones, ``adjoint`` (Aᵀ).

Measurements are y = A(x) + σ_y·n with n ~ N(0, I) in [-1, 1] image units (the DPS convention:
σ_y = 0.05 here is 0.025 in [0, 1] units). Random parameters (masks, motion kernels) are drawn once
per image, at construction, from that image's generator, and stay fixed for the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffexp.samplers.base import per_image_noise


def separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ colsᵀ`` over the last two axes: a separable linear map of images as two matmuls, whose
    backward is deterministic on CUDA (reflect-pad and bicubic backward kernels are not)."""
    return rows.to(x.dtype) @ x @ cols.to(x.dtype).T


class LinearOperator(nn.Module):
    """A linear A with ``forward``, ``adjoint`` and a measurement-noise level ``sigma_y``.

    Args:
        image_shape: (C, H, W) of the images A acts on.
        generators: one generator per image of the batch this operator serves.
        sigma_y: measurement noise standard deviation, [-1, 1] units.
    """

    def __init__(self, image_shape: Sequence[int], generators: Sequence[torch.Generator], sigma_y: float) -> None:
        super().__init__()
        if sigma_y < 0:
            raise ValueError(f"task.sigma_y={sigma_y} must be >= 0")
        self.image_shape = tuple(image_shape)
        self.sigma_y = float(sigma_y)
        self.batch_size = len(generators)

    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀy as the vector-Jacobian product of the linear map (exact for any linear ``forward``)."""
        x = torch.zeros(y.shape[0], *self.image_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return out

    def measure(self, x: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """y = A(x) + σ_y·n, n drawn per image."""
        y = self.forward(x)
        return y + self.sigma_y * per_image_noise(generators, y) if self.sigma_y > 0 else y

    def baseline(self, y: Tensor) -> Tensor:
        """The measurement mapped back to image space without a prior (what a metric baseline scores)."""
        return y
