"""Image-quality metrics on [0, 1] with torchmetrics, per image: PSNR, SSIM, LPIPS (AlexNet).

PSNR uses ``data_range=1`` and ``dim=(1, 2, 3)`` (per image, as scikit-image); SSIM ``data_range=1``
with its 11×11, σ=1.5 Gaussian window, averaged over windows inside the image (as scikit-image); LPIPS ``normalize=True``. LPIPS needs the ImageNet AlexNet
backbone that torchvision keeps in ``$TORCH_HOME/hub/checkpoints/``; images under 64 px are
bilinearly up-sampled to 64 px (AlexNet's pooling needs that) and gray images repeated to RGB.

Given the operator, an operator whose measurement cannot tell some images apart (``Operator.align``: phase
retrieval) adds ``aligned_psnr``: the PSNR of the reconstruction moved to its equivalent closest to the truth
(``diffexp.evaluation.aligned``), next to the plain ``psnr``; other tasks have no such key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import MinLen
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from diffexp.data.ranges import to_unit
from diffexp.settings import Allowed

log = logging.getLogger(__name__)
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"
LPIPS_MIN_SIZE = 64
_warned = False


def lpips_backbone_path() -> Path:
    """Where torchvision looks for the AlexNet weights (``$TORCH_HOME/hub/checkpoints/``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE


SSIM_PAD = 5  # half-width of SSIM's 11×11 Gaussian window (σ = 1.5, truncated at 3.5σ)


def _ssim(p: Tensor, t: Tensor) -> Tensor:
    """Per-image SSIM averaged over the windows that lie inside the image (Wang et al. 2004; as
    scikit-image). torchmetrics ≥ 1.5 also averages the reflect-padded border windows: we crop them."""
    _, full = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none", return_full_image=True)
    return full[..., SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD].mean(dim=(1, 2, 3))


def _psnr(p: Tensor, t: Tensor) -> list[float]:
    """Per-image PSNR of images in [0, 1]."""
    return peak_signal_noise_ratio(p, t, data_range=1.0, dim=(1, 2, 3), reduction="none").tolist()


class Metrics:
    """Per-image PSNR, SSIM and LPIPS of images in [-1, 1] against a ground truth.

    Args:
        lpips: compute LPIPS when its backbone is available (else ``None`` with one warning).
        lpips_required: raise, before any sampling, when the backbone is missing.
        fid, fid_features, fid_required, reference: the end-of-run FID/KID settings, which share the
            ``metrics`` node; ``run`` reads them with ``diffexp.evaluation.fid.DistributionMetrics.from_metrics_config``
            (FID/KID need the model's image size and also serve task=generate, where this class is not built).
    """

    def __init__(
        self,
        lpips: bool = True,
        lpips_required: bool = False,
        fid: bool = True,
        fid_features: Literal["auto", "mnist", "inception"] = "auto",
        fid_required: bool = False,
        reference: Annotated[str, MinLen(1), Allowed("null or a folder path")] | None = None,
    ) -> None:
        global _warned
        self._lpips = None
        if not lpips:
            if lpips_required:
                raise ValueError("metrics.lpips_required=true contradicts metrics.lpips=false")
            return
        path = lpips_backbone_path()
        if path.is_file():
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self._lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=True)
            self._lpips.eval().requires_grad_(False)
            return
        message = (
            f"LPIPS backbone not found at {path}: lpips is reported as null. Place {LPIPS_BACKBONE} under "
            "$TORCH_HOME/hub/checkpoints/ (run `make prefetch` on a machine with internet)."
        )
        if lpips_required:
            raise FileNotFoundError(message + " (metrics.lpips_required=true)")
        if not _warned:
            log.warning(message)
            _warned = True

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor, operator: Any = None) -> dict[str, list[float | None]]:
        """Per-image values ``{"psnr": [...], "ssim": [...], "lpips": [...] or [None, ...]}``, and ``aligned_psnr``
        after ``psnr`` when ``operator.align`` offers an alignment (module docstring)."""
        p, t = to_unit(pred.float()), to_unit(target.float())
        out: dict[str, list[float | None]] = {"psnr": _psnr(p, t)}
        aligned = operator.align(pred.float(), target.float()) if operator is not None else None
        if aligned is not None:
            out["aligned_psnr"] = _psnr(to_unit(aligned), t)
        out["ssim"] = _ssim(p, t).tolist()
        out["lpips"] = self._lpips_values(p, t) if self._lpips is not None else [None] * len(p)
        return out

    def _lpips_values(self, p: Tensor, t: Tensor) -> list[float]:
        if p.shape[1] == 1:
            p, t = p.repeat(1, 3, 1, 1), t.repeat(1, 3, 1, 1)
        if min(p.shape[-2:]) < LPIPS_MIN_SIZE:
            size = (LPIPS_MIN_SIZE, LPIPS_MIN_SIZE)
            p = F.interpolate(p, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        self._lpips.to(p.device)
        return self._lpips(p, t).flatten().tolist()
