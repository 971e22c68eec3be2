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
from typing import Annotated, Any, ClassVar, Literal

import torch
from annotated_types import Ge, Gt, Lt
from torch import Tensor

from diffexp.noise.base import NoiseModel
from diffexp.operators.base import PREFIX, LinearOperator, PixelBasisSVD, Weight
from diffexp.settings import Allowed, NonNegativeFloat

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


class Inpaint(PixelBasisSVD, LinearOperator):
    """Pixel masking (``task.mask``: box | random | half), one mask per image, fixed for the run.

    Args:
        mask: mask kind.
        box_size: side of the missing square (box), in pixels.
        random_position: place the box at a random position per image, ``margin`` px from the border (box).
        margin: border kept free of a randomly placed box; None: DPS's 16 px at 256 px, scaled to the image.
        fraction: fraction of pixels dropped, in (0, 1) (random).
        fraction_max: if set, each image drops a fraction drawn uniformly from [fraction, fraction_max].
    """

    capabilities: ClassVar[frozenset[str]] = LinearOperator.capabilities | {"svd"}  # closed forms: A = AᵀA = diag(m)

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: NonNegativeFloat,
        *,
        noise: NoiseModel | None = None,
        mask: Literal["box", "random", "half"] = "box",
        box_size: Annotated[int, Ge(1), Allowed("an integer >= 1 (and <= the image size)")] = 12,
        random_position: bool = False,
        margin: Annotated[int, Ge(0), Allowed("null or an integer >= 0")] | None = None,
        fraction: Annotated[float, Gt(0), Lt(1), Allowed("a number in (0, 1)")] = 0.7,
        fraction_max: Annotated[float, Gt(0), Lt(1), Allowed("null or a number in (0, 1)")] | None = None,
    ) -> None:
        super().__init__(image_shape, generators, sigma_y, noise)
        self._require_valid(mask=mask, box_size=box_size, random_position=random_position, margin=margin,
                            fraction=fraction, fraction_max=fraction_max)
        _, h, w = self.image_shape
        makers = {
            "box": lambda g: box_mask(h, w, g, box_size, random_position, margin),
            "random": lambda g: random_mask(h, w, g, fraction, fraction_max),
            "half": lambda g: half_mask(h, w),
        }
        self.register_buffer("mask", torch.stack([makers[mask](g) for g in generators])[:, None])

    @classmethod
    def check(cls, image_shape: tuple[int, int, int], settings: dict[str, Any]) -> list[str]:
        """A box fits the image (a randomly placed one inside the margins); ``fraction_max`` >= ``fraction``."""
        valid = cls.valid_settings(settings)
        _, h, w = image_shape
        mask, box, fraction_max = valid.get("mask"), valid.get("box_size"), valid.get("fraction_max")
        if mask == "box" and box is not None and box > min(h, w):
            return [f"{PREFIX}box_size={box} is invalid: allowed is 1..{min(h, w)} for {h}x{w} images"]
        if mask == "box" and box is not None and valid.get("random_position") and "margin" in valid:
            mh, mw = box_margins(h, w, valid["margin"])
            room = min(h - 2 * mh, w - 2 * mw)
            if box >= room:
                px = f"{mh}" if mh == mw else f"{mh}, {mw}"
                margin = valid["margin"] if valid["margin"] is not None else f"null ({px} px)"
                return [f"{PREFIX}box_size={box} is invalid: allowed is 1..{room - 1} for {h}x{w} images with "
                        f"random_position and margin={margin} (box_size + 2*margin < image size)"]
        if mask == "random" and fraction_max is not None and "fraction" in valid and fraction_max < valid["fraction"]:
            return [f"{PREFIX}fraction_max={fraction_max} is invalid: allowed is null or a number in "
                    f"[fraction={valid['fraction']}, 1)"]
        return []

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x.dtype)

    def svd_singulars(self) -> Tensor:
        """Σ = diag(m): 1 on observed pixels, 0 on the null space, per image (N, 1, H, W)."""
        return self.mask

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
