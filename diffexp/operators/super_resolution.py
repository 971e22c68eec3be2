"""Super-resolution: A = down-sampling by an integer ``factor`` (average pooling or bicubic).

Average pooling has AAᵀ = I/f² and AᵀA = Π/f² (Π: the orthogonal projection onto images constant on
f×f blocks), so its adjoint, pseudo-inverse, solve and prox are closed forms (the prox by Woodbury:
(Π/f² + ρI)⁻¹ = (I − Π)/ρ + Π/(1/f² + ρ), applied to Aᵀy + ρz: (I − Π)z + (Aᵀy + ρΠz)/(1/f² + ρ)). Bicubic is separable, A X = R X Cᵀ, and solves exactly
through the SVDs of R and C (``SeparableSVD``).

Both offer their SVD (``svd``: DDNM+'s per-direction noise budget). Average pooling's V is the orthonormal 2-D DCT-II
of each f×f block (``block_dct``): its (0, 0) coefficient (1/f)·Σ_block x is the block's mean direction, the row of A
being (1/f²)·1ᵀ of norm 1/f, so its singular value is 1/f (U = I); the other f² − 1 coefficients of a block span the
rest of it, A's null space (singular value 0). Bicubic's V is ``SeparableSVD``'s, completed by the null space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor

from diffexp.noise.base import NoiseModel
from diffexp.operators.base import PREFIX, LinearOperator, Weight, separable
from diffexp.operators.separable import SeparableSVD
from diffexp.settings import Allowed, NonNegativeFloat


def bicubic_matrix(n: int, factor: int) -> Tensor:
    """The (n / factor) × n matrix of antialiased bicubic down-sampling along one axis (as ``F.interpolate``)."""
    eye = torch.eye(n)[None, None]  # resizing only the height of the identity image gives R (R @ I = R)
    return F.interpolate(eye, size=(n // factor, n), mode="bicubic", align_corners=False, antialias=True)[0, 0]


def block_dct(n: int, factor: int) -> Tensor:
    """The n × n block-diagonal orthogonal matrix of the 1-D orthonormal DCT-II on each run of ``factor`` entries,
    float64: row k·factor + u holds basis function u of block k (u = 0: the constant 1/sqrt(factor))."""
    u = torch.arange(factor, dtype=torch.float64)[:, None]
    d = torch.cos(torch.pi * (2 * u.T + 1) * u / (2 * factor)) * (2 / factor) ** 0.5
    d[0] = factor**-0.5
    return torch.block_diag(*[d] * (n // factor))


class SuperResolution(LinearOperator):
    """y = D x: ``avgpool`` (mean of factor×factor blocks) or ``bicubic`` (antialiased bicubic resize).

    The baseline is the bicubic up-sampling of y.
    """

    capabilities: ClassVar[frozenset[str]] = LinearOperator.capabilities | {"svd"}  # closed forms (avgpool) or SVD (bicubic)

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: NonNegativeFloat,
        *,
        noise: NoiseModel | None = None,
        factor: Annotated[int, Ge(1), Allowed("an integer >= 1 that divides the image size")] = 4,
        downsample: Literal["avgpool", "bicubic"] = "avgpool",
    ) -> None:
        super().__init__(image_shape, generators, sigma_y, noise)
        self._require_valid(factor=factor, downsample=downsample)
        _, h, w = self.image_shape
        self.factor = factor
        self.downsample = downsample
        if downsample == "bicubic":  # as two matmuls: F.interpolate's bicubic backward is nondeterministic on CUDA
            self.register_buffer("rows", bicubic_matrix(h, factor), persistent=False)
            self.register_buffer("cols", bicubic_matrix(w, factor), persistent=False)
            self.svd = SeparableSVD(self.rows, self.cols)
        else:  # svd_vt(x) = Dₕ X D_wᵀ, the block DCT of module docstring
            self.register_buffer("dct_rows", block_dct(h, factor).float(), persistent=False)
            self.register_buffer("dct_cols", block_dct(w, factor).float(), persistent=False)

    @classmethod
    def check(cls, image_shape: tuple[int, int, int], settings: dict[str, Any]) -> list[str]:
        """The factor divides the image's height and width."""
        factor = cls.valid_settings(settings).get("factor")
        _, h, w = image_shape
        if factor is not None and (h % factor or w % factor):
            size = h if h == w else f"{h}x{w}"
            return [f"{PREFIX}factor={factor} is invalid: allowed is a divisor of the image size {size}"]
        return []

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample == "avgpool":
            return F.avg_pool2d(x, self.factor)
        return separable(x, self.rows, self.cols)

    def adjoint(self, y: Tensor) -> Tensor:
        if self.downsample == "avgpool":
            return self._repeat(y) / self.factor**2
        return separable(y, self.rows.T, self.cols.T)

    def pinv(self, y: Tensor) -> Tensor:
        if self.downsample == "avgpool":  # Aᵀ(AAᵀ)⁻¹ = f²·Aᵀ: nearest-neighbour up-sampling
            return self._repeat(y)
        return self.svd.pinv(y)

    def svd_vt(self, x: Tensor) -> Tensor:
        """Vᵀx: the orthonormal DCT of every f×f block (avgpool), or ``SeparableSVD.svd_vt`` (bicubic)."""
        if self.downsample == "avgpool":
            return separable(x, self.dct_rows, self.dct_cols)
        return self.svd.svd_vt(x)

    def svd_v(self, z: Tensor) -> Tensor:
        """Vz, the inverse of ``svd_vt``."""
        if self.downsample == "avgpool":
            return separable(z, self.dct_rows.T, self.dct_cols.T)
        return self.svd.svd_v(z)

    def svd_singulars(self) -> Tensor:
        """Σ on ``svd_vt``'s coefficients, (H, W): 1/f at each block's (0, 0) coefficient, 0 elsewhere (avgpool);
        the products of the 1-D singular values (bicubic, full row rank: A⁺ is exact)."""
        if self.downsample != "avgpool":
            return self.svd.singulars()
        _, h, w = self.image_shape
        f = self.factor
        dev = self.dct_rows.device
        on = (torch.arange(h, device=dev)[:, None] % f == 0) & (torch.arange(w, device=dev) % f == 0)
        return on.to(self.dct_rows.dtype) / f

    def solve_aat(self, v: Tensor, *, aat_weight: Weight, noise_var: Weight) -> Tensor:
        if self.downsample == "avgpool":
            return v / (aat_weight / self.factor**2 + noise_var)
        return self.svd.solve_aat(v, aat_weight=aat_weight, noise_var=noise_var)

    def prox(self, z: Tensor, y: Tensor, *, rho: Weight) -> Tensor:
        if self.downsample != "avgpool":
            return self.svd.prox(z, y, rho=rho)
        # (I − Π)(Aᵀy + ρz) = ρ(I − Π)z, as Aᵀy is block-constant: no division by ρ
        block = self._repeat(F.avg_pool2d(z, self.factor))  # Π z
        return z - block + (self.adjoint(y) + rho * block) / (1 / self.factor**2 + rho)

    def _repeat(self, y: Tensor) -> Tensor:
        """Each pixel copied onto its f×f block (an expand: its backward is a deterministic sum)."""
        b, c, h, w = y.shape
        f = self.factor
        return y[:, :, :, None, :, None].expand(b, c, h, f, w, f).reshape(b, c, h * f, w * f)

    def baseline(self, y: Tensor) -> Tensor:
        up = F.interpolate(y, scale_factor=self.factor, mode="bicubic", align_corners=False)
        return up.clamp(-1, 1)
