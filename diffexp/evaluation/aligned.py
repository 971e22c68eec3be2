"""Metrics up to a measurement's ambiguities: the best alignment of a reconstruction to the ground truth.

Phase retrieval measures |F pad(x)|, which cannot tell x from a circular shift of its padded canvas, from its 180°
rotation (the conjugate reflection of a real image) nor, when the padding is 0 in [-1, 1] units, from −x (the
global phase of a real image). A reconstruction is therefore scored against the truth after moving it to the
equivalent image closest to the truth: ``aligned_psnr`` is max over the equivalents x' of PSNR(x', truth). The
operator names its equivalents (``Operator.align``, e.g. ``PhaseRetrieval``); the search is here.

``best_window`` scores every H×W window of every candidate canvas against the truth at once: the squared error of
the window at offset o is Σ c²[o+n] − 2·Σ c[o+n]·t[n] + Σ t², two correlations computed with FFTs (float64), so
the search costs a few FFTs per candidate at any image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _correlate(canvas: Tensor, kernel: Tensor) -> Tensor:
    """Σ_n canvas[..., o + n] · kernel[..., n] for every offset o with the kernel inside the canvas (no wrap)."""
    (p, q), (h, w) = canvas.shape[-2:], kernel.shape[-2:]
    padded = F.pad(kernel, (0, q - w, 0, p - h))
    out = torch.fft.irfft2(torch.fft.rfft2(canvas) * torch.fft.rfft2(padded).conj(), s=(p, q))
    return out[..., : p - h + 1, : q - w + 1]


def best_window(canvases: Tensor, truth: Tensor) -> Tensor:
    """The H×W window, over every candidate canvas and every offset that keeps it inside the canvas, with the least
    squared error to ``truth``, per image.

    Args:
        canvases: (K, B, C, P, Q) candidate canvases of each of B images (P >= H, Q >= W).
        truth: (B, C, H, W).
    Returns:
        (B, C, H, W), the chosen windows (in the dtype of ``canvases``).
    """
    k, b, c, p, q = canvases.shape
    h, w = truth.shape[-2:]
    cv, t = canvases.double(), truth.double()
    err = _correlate(cv * cv, torch.ones_like(t)) - 2 * _correlate(cv, t.expand_as(cv[..., :h, :w]))
    err = err.sum(dim=2)  # over channels: (K, B, P - H + 1, Q - W + 1); + Σt² is the same for every window
    flat = err.permute(1, 0, 2, 3).reshape(b, -1).argmin(dim=1)
    oh, ow = p - h + 1, q - w + 1
    kk, rest = flat // (oh * ow), flat % (oh * ow)
    top, left = rest // ow, rest % ow
    return torch.stack([canvases[kk[i], i, :, top[i] : top[i] + h, left[i] : left[i] + w] for i in range(b)])


def align_shift_flip(
    x: Tensor, truth: Tensor, *, pad: tuple[int, int], fill: float, signs: Sequence[float] = (1.0,)
) -> Tensor:
    """``x`` (B, C, H, W) moved to its equivalent closest to ``truth`` among: a sign of ``signs`` applied to the
    values relative to ``fill``, times {x, x rotated by 180°}, shifted by (dy, dx) with |dy| <= pad[0] and
    |dx| <= pad[1] on its canvas (x padded with ``fill``, pad[0] rows and pad[1] columns per side; what a shift
    brings in is ``fill``). The identity is one of the candidates, so the result is never farther from the truth
    than ``x``."""
    ph, pw = pad
    candidates = [s * (v - fill) + fill for s in signs for v in (x, torch.flip(x, dims=(-2, -1)))]
    canvases = torch.stack([F.pad(v, (pw, pw, ph, ph), value=fill) for v in candidates])
    return best_window(canvases, truth)
