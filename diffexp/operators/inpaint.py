"""Inpainting masks: A = diag(m), with m ∈ {0, 1} (1 = observed). Zero-filled measurement m·y as baseline.

DPS (Chung et al. 2023, official code ``util/img_utils.py: mask_generator``) draws, per image,
- ``box``: a square of side drawn from ``mask_len_range`` ((128, 129) in its config: always 128 at
  256 px) at a random position whose top/left lie in [margin, H − margin − size) (numpy's ``randint``
  excludes the upper end), margin = 16 px; ``box`` with ``random_position=true`` does the same, with
  the margin scaled to the image (16·H/256, rounded) unless ``margin`` is given; ``random_position=false``
  centres the box instead;
- ``random``: a fraction p ~ U(0.3, 0.7) and exactly ⌊p·HW⌋ distinct pixels dropped (the same in every
  channel); ``random`` does the same with p ~ U(fraction, fraction_max), or p = fraction when
  ``fraction_max`` is null.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffexp.operators.base import LinearOperator, Weight

DPS_MARGIN = 16  # pixels at DPS's 256-px resolution


def box_margins(h: int, w: int, margin: int | None) -> tuple[int, int]:
    """Margins (rows, columns) of a randomly placed box: ``margin``, or DPS's 16 px at 256 px scaled, rounded."""
    return (round(DPS_MARGIN * h / 256), round(DPS_MARGIN * w / 256)) if margin is None else (margin, margin)


def box_mask(h: int, w: int, g: torch.Generator, size: int, random_position: bool, margin: int | None = None) -> Tensor:
    """Zero a ``size``×``size`` square: centred, or (``random_position``) with its top and left drawn
    uniformly from [margin, H − margin − size), as DPS (``box_margins``)."""
    if random_position:
        mh, mw = box_margins(h, w, margin)
        top = int(torch.randint(mh, h - mh - size, (1,), generator=g, device=g.device))
        left = int(torch.randint(mw, w - mw - size, (1,), generator=g, device=g.device))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    m = torch.ones(h, w)
    m[top : top + size, left : left + size] = 0
    return m


def random_mask(h: int, w: int, g: torch.Generator, fraction: float, fraction_max: float | None = None) -> Tensor:
    """Drop exactly ⌊p·HW⌋ distinct pixels, p = ``fraction`` or, with ``fraction_max``, p drawn per image
    uniformly from [fraction, fraction_max] (DPS: 0.3–0.7)."""
    if fraction_max is not None:
        fraction = fraction + (fraction_max - fraction) * float(torch.rand(1, generator=g, device=g.device))
    dropped = torch.randperm(h * w, generator=g, device=g.device)[: int(fraction * h * w)].cpu()
    m = torch.ones(h * w)
    m[dropped] = 0
    return m.reshape(h, w)


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
        random_position: place the box at a random position per image, ``margin`` px from the border (box).
        margin: border kept free of a randomly placed box; None: DPS's 16 px at 256 px, scaled to the image.
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
        margin: int | None = None,
        fraction: float = 0.7,
        fraction_max: float | None = None,
    ) -> None:
        super().__init__(image_shape, generators, sigma_y)
        _, h, w = self.image_shape
        if mask not in MASKS:
            raise ValueError(f"task.mask={mask!r} is not one of {MASKS}")
        if mask == "box" and not 1 <= box_size <= min(h, w):
            raise ValueError(f"task.box_size={box_size} must lie in [1, {min(h, w)}] for {h}x{w} images")
        if mask == "box" and random_position:
            mh, mw = box_margins(h, w, margin)
            if min(mh, mw) < 0 or min(h - 2 * mh, w - 2 * mw) <= box_size:
                raise ValueError(
                    f"task.box_size={box_size} with margin={margin} leaves no room for a random position in {h}x{w} "
                    "images: need box_size + 2*margin < image size (margin null: 16 px at 256 px, scaled)"
                )
        if mask == "random" and not 0 < fraction < 1:
            raise ValueError(f"task.fraction={fraction} must lie in (0, 1)")
        if mask == "random" and fraction_max is not None and not fraction <= fraction_max < 1:
            raise ValueError(f"task.fraction_max={fraction_max} must lie in [fraction={fraction}, 1)")
        makers = {
            "box": lambda g: box_mask(h, w, g, box_size, random_position, margin),
            "random": lambda g: random_mask(h, w, g, fraction, fraction_max),
            "half": lambda g: half_mask(h, w),
        }
        self.register_buffer("mask", torch.stack([makers[mask](g) for g in generators])[:, None])

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x.dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self.mask.to(y.dtype)

    def pinv(self, y: Tensor) -> Tensor:
        return y * self.mask.to(y.dtype)

    def solve_aat(self, v: Tensor, *, aat_weight: Weight, noise_var: Weight) -> Tensor:
        """AAᵀ = diag(m): an elementwise division; entries with w·m + s = 0 (the hole, s = 0) give 0,
        as the pseudo-inverse does."""
        denom = aat_weight * self.mask.to(v.dtype) + noise_var
        return torch.where(denom > 0, v / torch.where(denom > 0, denom, 1), 0)

    def prox(self, z: Tensor, y: Tensor, *, rho: Weight) -> Tensor:
        m = self.mask.to(z.dtype)
        return (m * y + rho * z) / (m + rho)

    def image_parameters(self, j: int) -> dict[str, Tensor]:
        super().image_parameters(j)
        return {"mask": self.mask[j]}

    def baseline(self, y: Tensor) -> Tensor:
        """The zero-filled measurement m·y (y itself carries noise inside the hole)."""
        return y * self.mask.to(y.dtype)
