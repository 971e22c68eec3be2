"""The output contract checked for consistency, not presence: every number in metrics.json is recomputed
from the files the run wrote (images/*.png, measurements/*.pt), and grid.png is laid out from those PNGs.

References are independent of diffexp: scikit-image for PSNR/SSIM, numpy/scipy for the operators.
Saved PNGs are 8-bit, so each comparison allows exactly what 8-bit rounding can change (bounds below).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from conftest import FAST, make_cfg
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import diffexp
from diffexp.rundir.images import GRID_PADDING

NUM_IMAGES = 3  # with batch_size=2: one full batch and one partial
ROUNDING = 1 / 255  # |float − PNG| per pixel in [-1, 1] units: half an 8-bit level of [0, 1]
FACTOR = 4  # conf/task/super_resolution.yaml


def _mask(x: np.ndarray, p: dict[str, torch.Tensor]) -> np.ndarray:
    return x * p["mask"].numpy()


def _blur(mode: str):
    def forward(x: np.ndarray, p: dict[str, torch.Tensor]) -> np.ndarray:
        k = p["kernel"].double().numpy()
        return np.stack([scipy.ndimage.correlate(c, k, mode=mode) for c in x])

    return forward


def _avgpool(x: np.ndarray, p: dict[str, torch.Tensor]) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(2, 4))


def _bicubic(x: np.ndarray, p: dict[str, torch.Tensor]) -> np.ndarray:
    t = torch.from_numpy(x)[None]
    size = (x.shape[1] // FACTOR, x.shape[2] // FACTOR)
    return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)[0].numpy()


# task overrides, the forward operator A from the saved per-image parameters, the names of those parameters
CASES = {
    "denoise": (["task=denoise"], lambda x, p: x, set()),
    "inpaint_box": (["task=inpaint"], _mask, {"mask"}),
    "inpaint_random": (["task=inpaint", "task.mask=random", "task.operator.fraction_max=0.9"], _mask, {"mask"}),
    "deblur_gaussian": (["task=deblur"], _blur("mirror"), {"kernel"}),  # torch's reflect = scipy's mirror
    "deblur_circular": (["task=deblur", "task.padding=circular"], _blur("wrap"), {"kernel"}),
    "deblur_motion": (["task=deblur", "task.kernel=motion"], _blur("mirror"), {"kernel"}),
    "sr_avgpool": (["task=super_resolution"], _avgpool, set()),
    "sr_bicubic": (["task=super_resolution", "task.operator.downsample=bicubic"], _bicubic, set()),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def run_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One DPS run of the tiny model per case: 3 images in batches of 2."""
    name = request.param
    out = tmp_path_factory.mktemp(name)
    overrides, _, _ = CASES[name]
    diffexp.run(make_cfg([*FAST, *overrides, f"num_images={NUM_IMAGES}", "metrics.lpips=false"], out))
    return name, out


def png(out: Path, index: int, suffix: str = "") -> np.ndarray:
    """images/<index><suffix>.png as (C, H, W) float64 in [-1, 1]."""
    arr = np.asarray(Image.open(out / "images" / f"{index:05d}{suffix}.png"), dtype=np.float64) / 255 * 2 - 1
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def rows(out: Path) -> list[dict[str, Any]]:
    result = json.loads((out / "metrics.json").read_text())
    assert [r["index"] for r in result["per_image"]] == list(range(NUM_IMAGES))
    return result["per_image"]


def test_psnr_ssim_equal_what_the_saved_pngs_give(run_dir: tuple[str, Path]) -> None:
    """PSNR and SSIM of images/<i>.png (and of the baseline, <i>_measurement.png) against <i>_truth.png.

    PSNR: rounding changes each image by at most ROUNDING per pixel, so the RMSE of the saved pair lies within
    2·ROUNDING (in [-1, 1] units) of the RMSE the run measured. SSIM: within 0.01 (measured: ~1e-3).
    """
    _, out = run_dir
    for row in rows(out):
        i = row["index"]
        truth = png(out, i, "_truth")
        for prefix, suffix in (("", ""), ("baseline_", "_measurement")):
            image = png(out, i, suffix)
            unit = lambda a: (a.transpose(1, 2, 0) + 1) / 2  # noqa: E731 - (H, W, C) in [0, 1]
            rmse = np.sqrt(np.mean((image - truth) ** 2))  # [-1, 1] units
            low, high = rmse - 2 * ROUNDING, rmse + 2 * ROUNDING
            psnr = row[f"{prefix}psnr"]
            assert 20 * math.log10(2 / high) <= psnr <= 20 * math.log10(2 / max(low, 1e-12)), (i, prefix)
            reference = peak_signal_noise_ratio(unit(truth), unit(image), data_range=1.0)
            assert abs(psnr - reference) < 0.2, (i, prefix)
            ssim = structural_similarity(
                unit(truth), unit(image), data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False,
            )
            assert row[f"{prefix}ssim"] == pytest.approx(ssim, abs=0.01), (i, prefix)


def test_residual_equals_the_norm_recomputed_from_the_saved_measurement(run_dir: tuple[str, Path]) -> None:
    """‖A(x̂) − y‖ with y and the image's operator parameters from measurements/<i>.pt, A written here from
    the paper's definition, x̂ from images/<i>.png (and the baseline from <i>_measurement.png).

    ‖A‖₂ ≤ √2 for these operators (reflect padding counts a border pixel twice), so 8-bit rounding moves
    the residual by at most √2·ROUNDING·√(pixels). y itself must be A(truth) plus noise of norm ≈ σ_y·√m.
    """
    name, out = run_dir
    _, forward, parameter_names = CASES[name]
    sigma_y = float(make_cfg([*FAST, *CASES[name][0]], out).task.sigma_y)
    for row in rows(out):
        i = row["index"]
        saved = torch.load(out / "measurements" / f"{i:05d}.pt")
        assert set(saved) == {"y", *parameter_names}, f"measurements/{i:05d}.pt holds {sorted(saved)}"
        y = saved["y"].double().numpy()
        params = {k: v for k, v in saved.items() if k != "y"}
        for prefix, suffix in (("", ""), ("baseline_", "_measurement")):
            image = png(out, i, suffix)
            bound = math.sqrt(2) * ROUNDING * math.sqrt(image.size) + 1e-4
            assert abs(row[f"{prefix}residual"] - np.linalg.norm(forward(image, params) - y)) <= bound, (i, prefix)
        noise = np.linalg.norm(forward(png(out, i, "_truth"), params) - y)
        expected = sigma_y * math.sqrt(y.size)
        slack = math.sqrt(2) * ROUNDING * math.sqrt(image.size)
        assert 0.7 * expected - slack < noise < 1.3 * expected + slack, i


def test_grid_rows_are_images_and_columns_truth_measurement_output(run_dir: tuple[str, Path]) -> None:
    _, out = run_dir
    grid = np.asarray(Image.open(out / "grid.png"))
    truth = np.asarray(Image.open(out / "images" / "00000_truth.png"))
    h, w = truth.shape[:2]
    pad = GRID_PADDING
    assert grid.shape[:2] == (pad + NUM_IMAGES * (h + pad), pad + 3 * (w + pad))
    white = np.ones(grid.shape[:2], bool)
    for i in range(NUM_IMAGES):
        for column, suffix in enumerate(("_truth", "_measurement", "")):
            top, left = pad + i * (h + pad), pad + column * (w + pad)
            tile = grid[top : top + h, left : left + w]
            np.testing.assert_array_equal(tile, np.asarray(Image.open(out / "images" / f"{i:05d}{suffix}.png")))
            white[top : top + h, left : left + w] = False
    assert (grid[white] == 255).all(), "the padding between tiles is white"
