"""Blur operators: A x = k ∗ x, per channel, with reflect (as the official DPS code) or circular padding.

``padding=reflect`` (default) keeps the image size by mirroring the border, as DPS. ``padding=circular``
wraps the image around: A is then circulant, diagonal in Fourier space (eigenvalues â = FFT of the
point-spread function), so its solve, prox and pseudo-inverse are exact FFT divisions. With reflect
padding the Gaussian blur is separable, A X = B X Bᵀ with B = (1-D taps band matrix)·(reflect-padding
matrix), and solves exactly through the SVD of B (``SeparableSVD``); motion blur with reflect padding
runs conjugate gradients on A and Aᵀ. A blur is numerically singular (a Gaussian's
transfer function is ~1e-9 at Nyquist), so ``pinv`` is the regularised pseudo-inverse
Aᵀ(AAᵀ + c²I)⁻¹ = (AᵀA + c²I)⁻¹Aᵀ with c = ``pinv_cutoff``: singular values s ≫ c are inverted,
s ≪ c suppressed (s/(s² + c²)); DDRM likewise zeroes blur singular values below 3e-2.

Where A has the structure (circular padding; a Gaussian kernel with reflect padding) the operator also offers its
SVD (``svd``, DDNM+'s per-direction noise budget), truncated as DDRM's and DDNM's ``Deblurring`` (``ZERO = 3e-2``):
singular values below ``pinv_cutoff`` count as 0, i.e. as null space. Circular: V is the unitary 2-D DFT,
``svd_vt(x)`` = fft2(x, norm="ortho") (complex, Hermitian-symmetric for real x), ``svd_v(z)`` = the real part of
ifft2(z, norm="ortho"), Σ = |â| per frequency (U = V·diag(â/|â|)); a real factor symmetric under f → −f, as
every function of Σ is (|â(−f)| = |â(f)| for a real kernel), keeps V(·) real, so the real part drops only
rounding. Reflect + Gaussian: ``SeparableSVD``'s real V. Motion blur with reflect padding has no SVD here
(the FFT does not diagonalise a reflect-padded convolution, and a motion kernel is not separable).

``kernel=gaussian``: a sampled Gaussian truncated at 4σ (as ``scipy.ndimage.gaussian_filter`` of a
centred delta, which is how DPS builds its 61×61, σ=3 kernel), cropped to ``kernel_size`` and
normalised. ``kernel=motion``: one random kernel per image, drawn as DPS draws its motion kernels
(``diffexp.operators.motion``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Predicate
from torch import Tensor

from diffexp.noise.base import NoiseModel
from diffexp.operators.base import PREFIX, LinearOperator, Weight, separable
from diffexp.operators.motion import motion_kernel
from diffexp.operators.separable import SeparableSVD
from diffexp.settings import Allowed, NonNegativeFloat, PositiveFloat, UnitFloat


def is_odd(n: int) -> bool:
    """Whether ``n`` is odd (a kernel with a centre pixel)."""
    return n % 2 == 1


OddSize = Annotated[int, Ge(1), Predicate(is_odd), Allowed("an odd integer >= 1")]


def pad_matrix(n: int, pad: int, mode: str) -> Tensor:
    """The (n + 2·pad) × n 0/1 matrix P with P v = padded v (``F.pad(v, (pad, pad), mode)``)."""
    return F.pad(torch.eye(n)[None], (pad, pad), mode=mode)[0].T


def gaussian_taps(size: int, std: float) -> Tensor:
    """The 1-D factor of ``gaussian_kernel``: ``size`` taps of a 4σ-truncated sampled Gaussian, float64, sum 1."""
    radius = int(4.0 * std + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / std) ** 2)
    half = size // 2
    g = g[radius - half : radius + half + 1] if radius > half else F.pad(g, [half - radius] * 2)
    return g / g.sum()


def gaussian_kernel(size: int, std: float) -> Tensor:
    """(size, size) Gaussian kernel, float64, summing to 1: the outer product of ``gaussian_taps`` (the
    4σ-truncated kernel of scipy.ndimage.gaussian_filter, cropped or zero-padded to ``size``, renormalised)."""
    g = gaussian_taps(size, std)
    return torch.outer(g, g)


def correlation_matrix(taps: Tensor, n: int) -> Tensor:
    """The n × (n + len(taps) − 1) band matrix T of 1-D valid cross-correlation: (T v)[i] = Σ_u taps[u]·v[i + u]."""
    t = torch.zeros(n, n + len(taps) - 1, dtype=taps.dtype)
    rows = torch.arange(n)
    for u, tap in enumerate(taps):
        t[rows, rows + u] = tap
    return t


class Blur(LinearOperator):
    """Convolution with a fixed kernel (``task.kernel``: gaussian | motion), reflect or circular padding.

    Args:
        kernel: kernel kind.
        kernel_size: odd side of the kernel, in pixels.
        std: Gaussian standard deviation, pixels (gaussian).
        intensity: camera-shake strength in [0, 1] (motion); one kernel per image.
        padding: reflect (as DPS) | circular (diagonal in Fourier space: exact FFT solves).
        pinv_cutoff: c of the regularised pseudo-inverse (AᵀA + c²I)⁻¹Aᵀ.
    """

    capabilities: ClassVar[frozenset[str]] = LinearOperator.capabilities  # exact SVD/FFT solves, else CG
    # an instance with an SVD (circular padding, or a Gaussian with reflect padding) adds "svd" (module docstring)

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: NonNegativeFloat,
        *,
        noise: NoiseModel | None = None,
        kernel: Literal["gaussian", "motion"] = "gaussian",
        kernel_size: OddSize = 9,
        std: PositiveFloat = 2.0,
        intensity: UnitFloat = 0.5,
        padding: Literal["reflect", "circular"] = "reflect",
        pinv_cutoff: PositiveFloat = 0.03,
    ) -> None:
        super().__init__(image_shape, generators, sigma_y, noise)
        self._require_valid(kernel=kernel, kernel_size=kernel_size, std=std, intensity=intensity, padding=padding,
                            pinv_cutoff=pinv_cutoff)
        _, h, w = self.image_shape
        if kernel == "gaussian":
            kernels = gaussian_kernel(kernel_size, std)[None]
        else:
            kernels = torch.stack([motion_kernel(kernel_size, intensity, g) for g in generators])
        self.register_buffer("kernels", kernels.float())
        self.padding = padding
        self.pinv_cutoff = float(pinv_cutoff)
        pad = kernel_size // 2
        self.register_buffer("pad_rows", pad_matrix(h, pad, padding), persistent=False)
        self.register_buffer("pad_cols", pad_matrix(w, pad, padding), persistent=False)
        self.svd = None  # Gaussian with reflect padding is separable: exact solves by SVD
        if kernel == "gaussian" and padding == "reflect":
            taps = gaussian_taps(kernel_size, std)
            rows = correlation_matrix(taps, h) @ self.pad_rows.double()
            self.svd = SeparableSVD(rows, correlation_matrix(taps, w) @ self.pad_cols.double())
        if padding == "circular" or self.svd is not None:
            self.capabilities = type(self).capabilities | {"svd"}

    @classmethod
    def check(cls, image_shape: tuple[int, int, int], settings: dict[str, Any]) -> list[str]:
        """The kernel's radius must be below the image size (the padding mirrors or wraps at most one image)."""
        valid = cls.valid_settings(settings)
        _, h, w = image_shape
        size = min(h, w)
        if "kernel_size" in valid and valid["kernel_size"] // 2 >= size:
            padding = valid.get("padding", "reflect")
            return [f"{PREFIX}kernel_size={valid['kernel_size']} is invalid: allowed is an odd integer <= "
                    f"{2 * size - 1} for {h}x{w} images ({padding} padding)"]
        return []

    def forward(self, x: Tensor) -> Tensor:
        xp = separable(x, self.pad_rows, self.pad_cols)  # = F.pad(x, padding), exactly
        return self._grouped(F.conv2d, xp, x.shape)

    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ = Pᵀ Kᵀ: the transposed convolution (full size), then the padding folded back."""
        padded = (*y.shape[:2], self.pad_rows.shape[0], self.pad_cols.shape[0])
        z = self._grouped(F.conv_transpose2d, y, padded)
        return separable(z, self.pad_rows.T, self.pad_cols.T)

    def image_parameters(self, j: int) -> dict[str, Tensor]:
        super().image_parameters(j)
        return {"kernel": self.kernels[j if self.kernels.shape[0] > 1 else 0]}

    def pinv(self, y: Tensor) -> Tensor:
        """Regularised pseudo-inverse (AᵀA + c²I)⁻¹Aᵀ y, c = ``pinv_cutoff`` (module docstring)."""
        if self.padding == "circular":
            a, fy = self._otf(y), torch.fft.rfft2(y)
            return self._irfft(a.conj() * fy / (a.abs() ** 2 + self.pinv_cutoff**2), y)
        if self.svd is not None:
            return self.svd.pinv(y, cutoff=self.pinv_cutoff)
        return self.adjoint(self.solve_aat(y, aat_weight=1.0, noise_var=self.pinv_cutoff**2))

    def svd_vt(self, x: Tensor) -> Tensor:
        """Vᵀx (Vᴴx): the unitary DFT (circular, complex) or the separable SVD's V (reflect + Gaussian)."""
        if self.padding == "circular":
            return torch.fft.fft2(x, norm="ortho")
        return self._svd().svd_vt(x)

    def svd_v(self, z: Tensor) -> Tensor:
        """Vz: the real part of the unitary inverse DFT (circular; module docstring), or the separable V."""
        if self.padding == "circular":
            return torch.fft.ifft2(z, norm="ortho").real
        return self._svd().svd_v(z)

    def svd_singulars(self) -> Tensor:
        """Σ on ``svd_vt``'s coefficients, singular values below ``pinv_cutoff`` set to 0: |â| per frequency and
        kernel, (N, 1, H, W) (circular), or the products of the 1-D singular values, (H, W)."""
        if self.padding != "circular":
            return self._svd().singulars(self.pinv_cutoff)
        delta = torch.zeros(self.kernels.shape[0], 1, *self.image_shape[1:], dtype=self.kernels.dtype,
                            device=self.kernels.device)
        delta[..., 0, 0] = 1
        s = torch.fft.fft2(self.forward(delta)).abs()
        return torch.where(s >= self.pinv_cutoff, s, torch.zeros_like(s))

    def _svd(self) -> SeparableSVD:
        if self.svd is None:
            raise NotImplementedError("motion blur with reflect padding has no SVD here (padding=circular has)")
        return self.svd

    def solve_aat(self, v: Tensor, *, aat_weight: Weight, noise_var: Weight) -> Tensor:
        if self.svd is not None:
            return self.svd.solve_aat(v, aat_weight=aat_weight, noise_var=noise_var)
        if self.padding != "circular":
            return super().solve_aat(v, aat_weight=aat_weight, noise_var=noise_var)
        eig = self._otf(v).abs() ** 2
        return self._irfft(torch.fft.rfft2(v) / (aat_weight * eig + noise_var), v)

    def prox(self, z: Tensor, y: Tensor, *, rho: Weight) -> Tensor:
        if self.svd is not None:
            return self.svd.prox(z, y, rho=rho)
        if self.padding != "circular":
            return super().prox(z, y, rho=rho)
        a = self._otf(z)
        return self._irfft((a.conj() * torch.fft.rfft2(y) + rho * torch.fft.rfft2(z)) / (a.abs() ** 2 + rho), z)

    def _otf(self, like: Tensor) -> Tensor:
        """The transfer function â = rfft2(A δ) of circular blur (A x = irfft2(â · rfft2(x))), per kernel."""
        n = like.shape[0] if self.kernels.shape[0] > 1 else 1
        delta = torch.zeros(n, *like.shape[1:], dtype=like.dtype, device=like.device)
        delta[..., 0, 0] = 1
        return torch.fft.rfft2(self.forward(delta))

    @staticmethod
    def _irfft(spectrum: Tensor, like: Tensor) -> Tensor:
        return torch.fft.irfft2(spectrum, s=like.shape[-2:])

    def _grouped(self, conv: Callable[..., Tensor], x: Tensor, out_shape: Sequence[int]) -> Tensor:
        """``conv`` (conv2d or conv_transpose2d) of every channel with its image's kernel."""
        b, c = x.shape[:2]
        k = self.kernels.to(x.dtype)
        if k.shape[0] == 1:
            return conv(x, k.expand(c, 1, *k.shape[1:]), groups=c)
        if k.shape[0] != b:
            raise ValueError(f"operator holds {k.shape[0]} per-image kernels but got a batch of {b}")
        weight = k[:, None].repeat_interleave(c, 0)
        return conv(x.reshape(1, b * c, *x.shape[2:]), weight, groups=b * c).reshape(*out_shape)
