"""Super-resolution: A = down-sampling by an integer ``factor`` (average pooling or bicubic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffexp.operators.base import LinearOperator, separable

DOWNSAMPLERS = ("avgpool", "bicubic")


def bicubic_matrix(n: int, factor: int) -> Tensor:
    """The (n / factor) × n matrix of antialiased bicubic down-sampling along one axis (as ``F.interpolate``)."""
    eye = torch.eye(n)[None, None]  # resizing only the height of the identity image gives R (R @ I = R)
    return F.interpolate(eye, size=(n // factor, n), mode="bicubic", align_corners=False, antialias=True)[0, 0]


class SuperResolution(LinearOperator):
    """y = D x: ``avgpool`` (mean of factor×factor blocks) or ``bicubic`` (antialiased bicubic resize).

    The baseline is the bicubic up-sampling of y.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: float,
        *,
        factor: int = 4,
        downsample: str = "avgpool",
    ) -> None:
        super().__init__(image_shape, generators, sigma_y)
        _, h, w = self.image_shape
        if downsample not in DOWNSAMPLERS:
            raise ValueError(f"task.downsample={downsample!r} is not one of {DOWNSAMPLERS}")
        if factor < 1 or h % factor or w % factor:
            raise ValueError(f"task.factor={factor} must be a positive divisor of the image size {h}x{w}")
        self.factor = factor
        self.downsample = downsample
        if downsample == "bicubic":  # as two matmuls: F.interpolate's bicubic backward is nondeterministic on CUDA
            self.register_buffer("rows", bicubic_matrix(h, factor), persistent=False)
            self.register_buffer("cols", bicubic_matrix(w, factor), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample == "avgpool":
            return F.avg_pool2d(x, self.factor)
        return separable(x, self.rows, self.cols)

    def baseline(self, y: Tensor) -> Tensor:
        up = F.interpolate(y, scale_factor=self.factor, mode="bicubic", align_corners=False)
        return up.clamp(-1, 1)
