"""Fourier phase retrieval: y = |F pad(x)|, the amplitude of a centred orthonormal 2-D DFT per channel.

As DPS (Chung et al. 2023, ``guided_diffusion/measurements.py: PhaseRetrievalOperator``) and DAPS (Zhang et al.
2025, ``forward_operator/__init__.py: PhaseRetrieval``): the image is zero-padded by pad = int(oversample/8·H)
rows (and int(oversample/8·W) columns) per side (oversample 2 → 64 px at 256 px, 7 px at 28 px), then
F = fftshift ∘ fft2(norm="ortho") ∘ ifftshift (fastMRI's ``fft2c``), and y = |F pad(x)| + σ_y·n.

``convention`` chooses what is padded:
- ``dps`` (default): x in [-1, 1] is padded with 0, i.e. with grey (0.5 in [0, 1] units). On digits with a black
  background the grey frame marks where the image lies, which removes the shift ambiguity; −x has the same
  measurement (a global sign of a real image), and so has the 180° rotation.
- ``daps``: x is mapped to [0, 1] first, (x + 1)/2, and padded with 0, i.e. with black. A digit can then move
  inside its window (shifts), or be rotated by 180°, without changing y; −x01 is outside [0, 1].

The operator is not linear: it offers only its forward map and an autograd ``vjp`` (the gradient of |z| is
Re(conj(z)/|z|·∂z), 0 where z = 0). Its ``align`` names the equivalent images (``diffexp.evaluation.aligned``) for
the ``aligned_psnr`` metric. Baseline: the zero-phase back-projection (daps) or the black image (dps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffexp.evaluation.aligned import align_shift_flip
from diffexp.noise.base import NoiseModel
from diffexp.operators.base import Operator
from diffexp.settings import NonNegativeFloat

DIMS = (-2, -1)


def centred_fft2(x: Tensor) -> Tensor:
    """fftshift(fft2(ifftshift(x), norm="ortho")) over the last two axes (unitary, origin at the centre)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=DIMS), norm="ortho"), dim=DIMS)


def centred_ifft2(z: Tensor) -> Tensor:
    """The inverse of ``centred_fft2``."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(z, dim=DIMS), norm="ortho"), dim=DIMS)


class PhaseRetrieval(Operator):
    """y = |F pad(x)| per channel, F the centred orthonormal 2-D DFT (see the module docstring).

    Args:
        oversample: padding per side as a fraction ×8 of the image size: pad = int(oversample/8·H) (DPS: 2.0).
        convention: ``dps``: pad x in [-1, 1] with 0 (grey); ``daps``: pad (x + 1)/2 with 0 (black).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"differentiable"})  # autograd vjp; no adjoint, pinv, prox

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: NonNegativeFloat,
        *,
        noise: NoiseModel | None = None,
        oversample: NonNegativeFloat = 2.0,
        convention: Literal["dps", "daps"] = "dps",
    ) -> None:
        super().__init__(image_shape, generators, sigma_y, noise)
        self._require_valid(oversample=oversample, convention=convention)
        _, h, w = self.image_shape
        self.oversample, self.convention = float(oversample), convention
        self.pad = (int(oversample / 8.0 * h), int(oversample / 8.0 * w))  # rows, columns per side

    def _padded(self, x: Tensor) -> Tensor:
        v = (x + 1) / 2 if self.convention == "daps" else x
        ph, pw = self.pad
        return F.pad(v, (pw, pw, ph, ph))

    def forward(self, x: Tensor) -> Tensor:
        return centred_fft2(self._padded(x)).abs().to(x.dtype)

    def baseline(self, y: Tensor) -> Tensor:
        """The better of two prior-free estimates on digits (``docs/operators.md``): for ``daps``, the zero-phase
        back-projection, the centre H×W of Re F⁻¹(y) mapped to [-1, 1] (a centred blob with the energy of the padded
        truth, by Parseval); for ``dps``, whose back-projection mixes the grey frame into it, the zero image in [0, 1]
        units (black, −1)."""
        if self.convention == "dps":
            return torch.full((y.shape[0], *self.image_shape), -1.0, dtype=y.dtype, device=y.device)
        ph, pw = self.pad
        _, h, w = self.image_shape
        v = centred_ifft2(y.to(torch.complex128 if y.dtype == torch.float64 else torch.complex64)).real
        return v[..., ph : ph + h, pw : pw + w].to(y.dtype) * 2 - 1

    def align(self, x: Tensor, truth: Tensor) -> Tensor:
        """``x`` moved to the closest of its equivalents: shifts of up to ``pad`` px on the padded canvas (what they
        bring in is the padding's value), the 180° rotation and, for ``dps``, the sign (−x)."""
        fill = -1.0 if self.convention == "daps" else 0.0
        signs = (1.0, -1.0) if self.convention == "dps" else (1.0,)
        return align_shift_flip(x, truth, pad=self.pad, fill=fill, signs=signs)
