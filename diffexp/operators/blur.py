"""Blur operators: A x = k ∗ x with reflect padding (as the official DPS code), per-channel.

``kernel=gaussian``: a sampled Gaussian truncated at 4σ (as ``scipy.ndimage.gaussian_filter`` of a
centred delta, which is how DPS builds its 61×61, σ=3 kernel), cropped to ``kernel_size`` and
normalised. ``kernel=motion``: a random camera-shake trajectory per image (below).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffexp.operators.base import LinearOperator, separable

KERNELS = ("gaussian", "motion")


def reflect_pad_matrix(n: int, pad: int) -> Tensor:
    """The (n + 2·pad) × n 0/1 matrix P with P v = reflect-padded v (``F.pad(v, (pad, pad), "reflect")``)."""
    return F.pad(torch.eye(n)[None], (pad, pad), mode="reflect")[0].T


def gaussian_kernel(size: int, std: float) -> Tensor:
    """(size, size) Gaussian kernel, float64, summing to 1."""
    radius = int(4.0 * std + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / std) ** 2)
    g = g / g.sum()
    k = torch.outer(g, g)
    half = size // 2
    if radius > half:
        k = k[radius - half : radius + half + 1, radius - half : radius + half + 1]
    else:
        k = F.pad(k, [half - radius] * 4)
    return k / k.sum()


def motion_kernel(size: int, intensity: float, g: torch.Generator, samples: int = 256) -> Tensor:
    """(size, size) motion-blur kernel from a random camera-shake trajectory, summing to 1.

    A 2-D path whose heading drifts by Gaussian increments scaled by ``intensity`` (0: a straight
    line; 1: strong shake) is centred, scaled to span the kernel, and splatted bilinearly.
    """
    u = torch.randn(samples + 1, generator=g, device=g.device).cpu().double()
    heading = 2 * math.pi * torch.rand(1, generator=g, device=g.device).cpu().double()
    angles = heading + torch.cumsum(intensity * 0.5 * u[1:], 0)
    path = torch.cumsum(torch.stack([angles.cos(), angles.sin()], 1), 0)
    path = path - (path.max(0).values + path.min(0).values) / 2
    extent = path.abs().max().clamp(min=1e-12)
    path = path / extent * (size - 1) / 2 * 0.9 + (size - 1) / 2
    k = torch.zeros(size, size, dtype=torch.float64)
    x0, y0 = path[:, 0].floor().long(), path[:, 1].floor().long()
    fx, fy = path[:, 0] - x0, path[:, 1] - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).clamp(0, size - 1), (y0 + dy).clamp(0, size - 1)
        k.index_put_((yi, xi), w, accumulate=True)
    return k / k.sum()


class Blur(LinearOperator):
    """Convolution with a fixed kernel (``task.kernel``: gaussian | motion), reflect padding.

    Args:
        kernel: kernel kind.
        kernel_size: odd side of the kernel, in pixels.
        std: Gaussian standard deviation, pixels (gaussian).
        intensity: camera-shake strength in [0, 1] (motion); one kernel per image.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: float,
        *,
        kernel: str = "gaussian",
        kernel_size: int = 9,
        std: float = 2.0,
        intensity: float = 0.5,
    ) -> None:
        super().__init__(image_shape, generators, sigma_y)
        _, h, w = self.image_shape
        if kernel not in KERNELS:
            raise ValueError(f"task.kernel={kernel!r} is not one of {KERNELS}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"task.kernel_size={kernel_size} must be odd and positive")
        if kernel_size // 2 >= min(h, w):
            raise ValueError(f"task.kernel_size={kernel_size} is too large for {h}x{w} images (reflect padding)")
        if kernel == "gaussian" and std <= 0:
            raise ValueError(f"task.std={std} must be > 0")
        if kernel == "motion" and not 0 <= intensity <= 1:
            raise ValueError(f"task.intensity={intensity} must lie in [0, 1]")
        if kernel == "gaussian":
            kernels = gaussian_kernel(kernel_size, std)[None]
        else:
            kernels = torch.stack([motion_kernel(kernel_size, intensity, g) for g in generators])
        self.register_buffer("kernels", kernels.float())
        pad = kernel_size // 2
        self.register_buffer("pad_rows", reflect_pad_matrix(h, pad), persistent=False)
        self.register_buffer("pad_cols", reflect_pad_matrix(w, pad), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = self.kernels.to(x.dtype)
        xp = separable(x, self.pad_rows, self.pad_cols)  # = F.pad(x, reflect), exactly
        if k.shape[0] == 1:
            return F.conv2d(xp, k.expand(c, 1, *k.shape[1:]), groups=c)
        if k.shape[0] != b:
            raise ValueError(f"operator holds {k.shape[0]} per-image kernels but got a batch of {b}")
        weight = k[:, None].repeat_interleave(c, 0)
        return F.conv2d(xp.reshape(1, b * c, *xp.shape[2:]), weight, groups=b * c).reshape(b, c, h, w)
