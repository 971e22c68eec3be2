"""Operators: adjointness <A x, v> = <x, A^T v> for every config, the DPS Gaussian kernel, shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.ndimage import gaussian_filter

from diffexp.operators.blur import Blur, gaussian_kernel, motion_kernel
from diffexp.operators.super_resolution import SuperResolution
from tests.conftest import CONF

SHAPE = (3, 32, 32)
OPERATOR_CONFIGS = {
    "denoise": {},
    "inpaint-box": {"mask": "box", "box_size": 10},
    "inpaint-box-random": {"mask": "box", "box_size": 10, "random_position": True},
    "inpaint-random": {"mask": "random", "fraction": 0.5},
    "inpaint-half": {"mask": "half"},
    "deblur-gaussian": {"kernel": "gaussian", "kernel_size": 9, "std": 2.0},
    "deblur-motion": {"kernel": "motion", "kernel_size": 9, "intensity": 0.5},
    "super_resolution-avgpool": {"factor": 4, "downsample": "avgpool"},
    "super_resolution-bicubic": {"factor": 2, "downsample": "bicubic"},
}


def build(name: str, batch: int = 3, sigma_y: float = 0.05):
    task = name.split("-")[0]
    cfg = OmegaConf.load(CONF / "task" / f"{task}.yaml").operator
    cfg = OmegaConf.merge(cfg, {"sigma_y": sigma_y, **OPERATOR_CONFIGS[name]})
    gens = [torch.Generator().manual_seed(100 + i) for i in range(batch)]
    return instantiate(cfg)(image_shape=SHAPE, generators=gens).double()


@pytest.mark.parametrize("name", sorted(OPERATOR_CONFIGS))
def test_adjointness(name: str) -> None:
    op = build(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    ax = op(x)
    v = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    lhs, rhs = (ax * v).sum(), (x * op.adjoint(v)).sum()
    assert abs(lhs - rhs) <= 1e-5 * max(1.0, abs(lhs))
    assert abs(lhs) > 1e-3  # not a trivially zero operator


def test_task_configs_are_all_covered() -> None:
    tasks = {p.stem for p in (CONF / "task").glob("*.yaml")} - {"generate"}
    assert tasks == {name.split("-")[0] for name in OPERATOR_CONFIGS}


def test_gaussian_kernel_equals_dps_reference() -> None:
    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    reference = gaussian_filter(delta, sigma=3.0)
    np.testing.assert_allclose(gaussian_kernel(61, 3.0).numpy(), reference, atol=1e-6)


def test_blur_pads_by_reflection() -> None:
    op = Blur((1, 16, 20), [torch.Generator()], 0.0, kernel_size=5, std=1.0).double()
    x = torch.rand(1, 1, 16, 20, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, [2] * 4, mode="reflect")
    expected = torch.nn.functional.conv2d(padded, op.kernels[None].double())
    torch.testing.assert_close(op(x), expected, rtol=0, atol=1e-12)


def test_bicubic_downsampling_equals_torch_interpolate() -> None:
    op = SuperResolution((3, 16, 24), [torch.Generator()], 0.0, factor=4, downsample="bicubic")
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    expected = F.interpolate(x, size=(4, 6), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(op(x), expected, rtol=0, atol=2e-6)


def backward_nodes(out: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``out``."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


@pytest.mark.parametrize("name", sorted(OPERATOR_CONFIGS))
def test_operator_backward_avoids_ops_without_deterministic_cuda_backward(name: str) -> None:
    """DPS differentiates through A: with runtime.deterministic=true on CUDA, torch raises for the
    backward of reflection padding and bicubic/bilinear interpolation (torch.use_deterministic_algorithms
    docs), so no operator may use them."""
    op = build(name).float()
    x = torch.rand(3, *SHAPE, requires_grad=True)
    nodes = backward_nodes(op(x))
    assert not {n for n in nodes if any(k in n for k in ("Reflection", "Bicubic", "Bilinear", "AdaptiveAvgPool"))}, nodes


def test_random_operator_parameters_are_per_image_and_reproducible() -> None:
    a, b = build("inpaint-random"), build("inpaint-random")
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask[0], a.mask[1])
    k1 = motion_kernel(9, 0.5, torch.Generator().manual_seed(1))
    k2 = motion_kernel(9, 0.5, torch.Generator().manual_seed(2))
    assert abs(k1.sum() - 1) < 1e-9 and not torch.allclose(k1, k2)


def test_measurement_noise_is_seeded_and_scaled() -> None:
    op = build("denoise", batch=2, sigma_y=0.5)
    x = torch.zeros(2, *SHAPE, dtype=torch.float64)
    y1 = op.measure(x, [torch.Generator().manual_seed(i) for i in range(2)])
    y2 = op.measure(x, [torch.Generator().manual_seed(i) for i in range(2)])
    assert torch.equal(y1, y2)
    assert abs(y1.std() - 0.5) < 0.02


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        ("inpaint-box", {"box_size": 40}, "box_size=40"),
        ("inpaint-random", {"fraction": 1.5}, "fraction=1.5"),
        ("deblur-gaussian", {"kernel_size": 4}, "kernel_size=4"),
        ("super_resolution-avgpool", {"factor": 3}, "factor=3"),
    ],
)
def test_bad_parameters_are_named(name: str, override: dict, message: str) -> None:
    settings = {"sigma_y": 0.1, **OPERATOR_CONFIGS[name], **override}
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "task" / f"{name.split('-')[0]}.yaml").operator, settings)
    with pytest.raises(ValueError, match=message):
        instantiate(cfg)(image_shape=SHAPE, generators=[torch.Generator()])
