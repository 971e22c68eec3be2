"""Metrics against independent references: scikit-image for PSNR/SSIM, the lpips package for LPIPS."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffexp.evaluation import metrics as metrics_module
from diffexp.evaluation.metrics import LPIPS_BACKBONE, Metrics


def _pair(channels: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, channels, size, size, generator=g) * 2 - 1
    pred = (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    return pred, target


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_ssim_match_scikit_image(channels: int) -> None:
    pred, target = _pair(channels)
    values = Metrics(lpips=False)(pred, target)
    for i in range(3):
        p = ((pred[i] + 1) / 2).numpy().transpose(1, 2, 0).astype(np.float64)
        t = ((target[i] + 1) / 2).numpy().transpose(1, 2, 0).astype(np.float64)
        assert values["psnr"][i] == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), abs=1e-4)
        ssim = structural_similarity(
            t, p, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert values["ssim"][i] == pytest.approx(ssim, abs=1e-5)
    assert values["lpips"] == [None, None, None]


def test_lpips_agrees_with_reference_package(torch_home: Path) -> None:
    import lpips

    pred, target = _pair(3, 64)
    ours = Metrics()(pred, target)["lpips"]
    reference = lpips.LPIPS(net="alex", verbose=False).eval()
    with torch.no_grad():
        expected = reference(pred, target).flatten().tolist()  # lpips takes [-1, 1]
    assert ours == pytest.approx(expected, abs=1e-5)
    assert len(set(ours)) == 3 and min(ours) > 0


def test_lpips_small_gray_images_run(torch_home: Path) -> None:
    pred, target = _pair(1, 28)
    values = Metrics()(pred, target)["lpips"]
    assert all(v is not None and v > 0 for v in values)
    assert Metrics()(target, target)["lpips"] == pytest.approx([0, 0, 0], abs=1e-6)


def test_missing_backbone_warns_once_or_raises(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics_module, "_warned", False)
    with caplog.at_level(logging.WARNING):
        Metrics()
        Metrics()
    warnings = [r for r in caplog.records if LPIPS_BACKBONE in r.getMessage()]
    assert len(warnings) == 1 and "hub/checkpoints" in warnings[0].getMessage()
    with pytest.raises(FileNotFoundError, match=LPIPS_BACKBONE):
        Metrics(lpips_required=True)
