"""Inpainting masks: A = diag(m), with m ∈ {0, 1} (1 = observed). Zero-filled measurement as baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffexp.operators.base import LinearOperator


def box_mask(h: int, w: int, g: torch.Generator, size: int, random_position: bool) -> Tensor:
    """Zero a ``size``×``size`` square: centred, or at a uniformly random position."""
    if random_position:
        top = int(torch.randint(0, h - size + 1, (1,), generator=g, device=g.device))
        left = int(torch.randint(0, w - size + 1, (1,), generator=g, device=g.device))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    m = torch.ones(h, w)
    m[top : top + size, left : left + size] = 0
    return m


def random_mask(h: int, w: int, g: torch.Generator, fraction: float, fraction_max: float | None = None) -> Tensor:
    """Drop each pixel independently with probability ``fraction``, or with a probability drawn per
    image uniformly from [fraction, fraction_max] (DPS: 0.3–0.7)."""
    if fraction_max is not None:
        fraction = fraction + (fraction_max - fraction) * float(torch.rand(1, generator=g, device=g.device))
    return (torch.rand(h, w, generator=g, device=g.device) >= fraction).float().cpu()


def half_mask(h: int, w: int) -> Tensor:
    """Drop the right half of the image."""
    m = torch.ones(h, w)
    m[:, w // 2 :] = 0
    return m


MASKS = ("box", "random", "half")


class Inpaint(LinearOperator):
    """Pixel masking (``task.mask``: box | random | half), one mask per image, fixed for the run.

    Args:
        mask: mask kind.
        box_size: side of the missing square (box), in pixels.
        random_position: place the box at a random position per image (box).
        fraction: fraction of pixels dropped, in (0, 1) (random).
        fraction_max: if set, each image drops a fraction drawn uniformly from [fraction, fraction_max].
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: float,
        *,
        mask: str = "box",
        box_size: int = 12,
        random_position: bool = False,
        fraction: float = 0.7,
        fraction_max: float | None = None,
    ) -> None:
        super().__init__(image_shape, generators, sigma_y)
        _, h, w = self.image_shape
        if mask not in MASKS:
            raise ValueError(f"task.mask={mask!r} is not one of {MASKS}")
        if mask == "box" and not 1 <= box_size <= min(h, w):
            raise ValueError(f"task.box_size={box_size} must lie in [1, {min(h, w)}] for {h}x{w} images")
        if mask == "random" and not 0 < fraction < 1:
            raise ValueError(f"task.fraction={fraction} must lie in (0, 1)")
        if mask == "random" and fraction_max is not None and not fraction <= fraction_max < 1:
            raise ValueError(f"task.fraction_max={fraction_max} must lie in [fraction={fraction}, 1)")
        makers = {
            "box": lambda g: box_mask(h, w, g, box_size, random_position),
            "random": lambda g: random_mask(h, w, g, fraction, fraction_max),
            "half": lambda g: half_mask(h, w),
        }
        self.register_buffer("mask", torch.stack([makers[mask](g) for g in generators])[:, None])

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x.dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self.mask.to(y.dtype)
