"""Super-resolution: A = down-sampling by an integer ``factor`` (average pooling or bicubic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffexp.operators.base import LinearOperator

DOWNSAMPLERS = ("avgpool", "bicubic")


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

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample == "avgpool":
            return F.avg_pool2d(x, self.factor)
        size = (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)

    def baseline(self, y: Tensor) -> Tensor:
        up = F.interpolate(y, scale_factor=self.factor, mode="bicubic", align_corners=False)
        return up.clamp(-1, 1)
