"""Operators against independent references: adjointness, dense-matrix pinv / solve / prox (float64
torch.linalg), per-image parameters independent of the batch, scipy's Gaussian kernel, mask geometry."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from scipy.ndimage import gaussian_filter

from diffexp.rng import image_generator
from diffexp.models.gaussian import dense_matrix
from diffexp.operators.base import LinearOperator
from diffexp.operators.blur import Blur, gaussian_kernel
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.motion import motion_kernel
from diffexp.operators.super_resolution import SuperResolution

CONF = Path(__file__).resolve().parents[1] / "conf"
SHAPE = (3, 32, 32)
SMALL = (2, 12, 12)  # dense-matrix tests: n = 288
OPERATOR_CONFIGS = {
    "denoise": {},
    "inpaint-box": {"mask": "box", "box_size": 6},
    "inpaint-box-random": {"mask": "box", "box_size": 6, "random_position": True},
    "inpaint-random": {"mask": "random", "fraction": 0.5},
    "inpaint-random-range": {"mask": "random", "fraction": 0.3, "fraction_max": 0.7},
    "inpaint-half": {"mask": "half"},
    "deblur-gaussian": {"kernel": "gaussian", "kernel_size": 9, "std": 2.0},
    "deblur-gaussian-circular": {"kernel": "gaussian", "kernel_size": 9, "std": 2.0, "padding": "circular"},
    "deblur-motion": {"kernel": "motion", "kernel_size": 9, "intensity": 0.5},
    "deblur-motion-circular": {"kernel": "motion", "kernel_size": 9, "intensity": 0.5, "padding": "circular"},
    "super_resolution-avgpool": {"factor": 4, "downsample": "avgpool"},
    "super_resolution-bicubic": {"factor": 2, "downsample": "bicubic"},
}
NAMES = sorted(OPERATOR_CONFIGS)


def operator_cfg(name: str, **overrides):
    """``task.operator`` of the task YAML, its ``${task.*}`` resolved, with operator-key overrides."""
    root = OmegaConf.create({"task": OmegaConf.load(CONF / "task" / f"{name.split('-')[0]}.yaml")})
    root.task.operator = OmegaConf.merge(root.task.operator, {**OPERATOR_CONFIGS[name], **overrides})
    return OmegaConf.to_container(root, resolve=True)["task"]["operator"]


def build(name: str, batch: int = 3, sigma_y: float = 0.05, shape=SHAPE, generators=None):
    """The operator of config ``name`` (its task YAML + overrides), float64, one generator per image."""
    cfg = operator_cfg(name, sigma_y=sigma_y)
    gens = generators or [torch.Generator().manual_seed(100 + i) for i in range(batch)]
    return instantiate(cfg)(image_shape=shape, generators=gens).double()


def per_image_dense(name: str, batch: int) -> list[torch.Tensor]:
    """Dense A of each image j, each from an operator built for image j alone (same generator seed)."""
    return [dense_matrix(build(name, generators=[torch.Generator().manual_seed(100 + j)], shape=SMALL), SMALL)
            for j in range(batch)]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name: str) -> None:
    op = build(name)
    x = randn(3, *SHAPE)
    ax = op(x)
    v = randn(*ax.shape, seed=1)
    lhs, rhs = (ax * v).sum(), (x * op.adjoint(v)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))
    assert abs(lhs) > 1e-3  # not a trivially zero operator


@pytest.mark.parametrize("name", NAMES)
def test_pinv_matches_dense_pseudo_inverse(name: str) -> None:
    """A⁺y against torch.linalg.pinv of the dense A; blur: the regularised (AᵀA + c²I)⁻¹Aᵀ (blur is singular)."""
    op = build(name, shape=SMALL)
    y = randn(3, *op(torch.zeros(3, *SMALL, dtype=torch.float64)).shape[1:], seed=2)
    out = op.pinv(y)
    for j, a in enumerate(per_image_dense(name, 3)):
        if isinstance(op, Blur):
            c2 = op.pinv_cutoff**2
            reference = torch.linalg.solve(a.T @ a + c2 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y[j].flatten())
        else:
            reference = torch.linalg.pinv(a) @ y[j].flatten()
        assert rel_err(out[j].flatten(), reference) < 1e-4, j


def test_blur_pinv_cutoff_matches_truncated_svd_for_large_singular_values() -> None:
    """Singular directions with s ≫ c are inverted exactly, those with s ≪ c suppressed."""
    op = build("deblur-gaussian-circular", batch=1, shape=SMALL)
    a = dense_matrix(op, SMALL)
    u, s, vt = torch.linalg.svd(a)
    keep, drop = s > 30 * op.pinv_cutoff, s < op.pinv_cutoff / 30
    assert keep.any() and drop.any()
    y = (u[:, keep] @ randn(int(keep.sum()))).reshape(1, *SMALL)
    torch.testing.assert_close(op.pinv(y).flatten(), torch.linalg.pinv(a) @ y.flatten(), rtol=0, atol=2e-3)
    z = (u[:, drop] @ randn(int(drop.sum()))).reshape(1, *SMALL)
    assert op.pinv(z).norm() < 0.05 * z.norm() / op.pinv_cutoff


@pytest.mark.parametrize("name", NAMES)
def test_solve_aat_matches_dense_solve(name: str) -> None:
    """(w·AAᵀ + s·I)⁻¹v with per-image (B,1,1,1) weights, and with Python floats."""
    op = build(name, shape=SMALL)
    v = randn(3, *op(torch.zeros(3, *SMALL, dtype=torch.float64)).shape[1:], seed=3)
    w = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    s = torch.tensor([0.0025, 0.1, 0.01], dtype=torch.float64).reshape(3, 1, 1, 1)
    out, out_float = op.solve_aat(v, aat_weight=w, noise_var=s), op.solve_aat(v, aat_weight=0.5, noise_var=0.04)
    for j, a in enumerate(per_image_dense(name, 3)):
        eye = torch.eye(a.shape[0], dtype=a.dtype)
        reference = torch.linalg.solve(w[j].item() * a @ a.T + s[j].item() * eye, v[j].flatten())
        assert rel_err(out[j].flatten(), reference) < 1e-4, j
        reference = torch.linalg.solve(0.5 * a @ a.T + 0.04 * eye, v[j].flatten())
        assert rel_err(out_float[j].flatten(), reference) < 1e-4, j


@pytest.mark.parametrize("name", NAMES)
def test_prox_matches_dense_solve(name: str) -> None:
    """argmin ‖y − Ax‖² + ρ‖x − z‖² = (AᵀA + ρI)⁻¹(Aᵀy + ρz), per-image ρ and a float ρ."""
    op = build(name, shape=SMALL)
    z = randn(3, *SMALL, seed=4)
    y = op(randn(3, *SMALL, seed=5)) + 0.05 * randn(3, *op(z).shape[1:], seed=6)
    rho = torch.tensor([0.01, 0.5, 3.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    out, out_float = op.prox(z, y, rho=rho), op.prox(z, y, rho=0.2)
    for j, a in enumerate(per_image_dense(name, 3)):
        eye = torch.eye(a.shape[1], dtype=a.dtype)
        for r, got in ((rho[j].item(), out[j]), (0.2, out_float[j])):
            reference = torch.linalg.solve(a.T @ a + r * eye, a.T @ y[j].flatten() + r * z[j].flatten())
            assert rel_err(got.flatten(), reference) < 1e-4, (j, r)


@pytest.mark.parametrize("name", NAMES)
def test_float32_solves_stay_accurate_when_ill_conditioned(name: str) -> None:
    """Production precision: prox with ρ = 1e-4 and solve_aat with s = 1e-4 (condition numbers ~1e4 for
    blur) in float32, against float64 dense solves."""
    op = build(name, batch=1, shape=SMALL, generators=[torch.Generator().manual_seed(100)])
    a = dense_matrix(op, SMALL)
    op = op.float()
    z, x = randn(1, *SMALL, seed=11), randn(1, *SMALL, seed=12)
    y = op(x.float()).double()
    eye = torch.eye(a.shape[1], dtype=a.dtype)
    reference = torch.linalg.solve(a.T @ a + 1e-4 * eye, a.T @ y.flatten() + 1e-4 * z.flatten())
    assert rel_err(op.prox(z.float(), y.float(), rho=1e-4).double().flatten(), reference) < 1e-3
    reference = torch.linalg.solve(a @ a.T + 1e-4 * torch.eye(a.shape[0], dtype=a.dtype), y.flatten())
    assert rel_err(op.solve_aat(y.float(), aat_weight=1.0, noise_var=1e-4).double().flatten(), reference) < 1e-3


@pytest.mark.parametrize("name", ["deblur-gaussian", "super_resolution-bicubic", "inpaint-random"])
def test_generic_conjugate_gradient_solvers_match_the_dense_ones(name: str) -> None:
    """The base class's CG solve_aat / prox / pinv (the fallback of any operator without a closed form)."""
    op = build(name, batch=2, shape=SMALL)
    z = randn(2, *SMALL, seed=9)
    y = op(randn(2, *SMALL, seed=10))
    a = per_image_dense(name, 2)[1]
    eye_n, eye_m = torch.eye(a.shape[1], dtype=a.dtype), torch.eye(a.shape[0], dtype=a.dtype)
    got = LinearOperator.prox(op, z, y, rho=0.05)[1].flatten()
    assert rel_err(got, torch.linalg.solve(a.T @ a + 0.05 * eye_n, a.T @ y[1].flatten() + 0.05 * z[1].flatten())) < 1e-4
    got = LinearOperator.solve_aat(op, y, aat_weight=0.7, noise_var=0.01)[1].flatten()
    assert rel_err(got, torch.linalg.solve(0.7 * a @ a.T + 0.01 * eye_m, y[1].flatten())) < 1e-4
    if name == "super_resolution-bicubic":  # full row rank: A⁺ = Aᵀ(AAᵀ)⁻¹
        assert rel_err(LinearOperator.pinv(op, y)[1].flatten(), torch.linalg.pinv(a) @ y[1].flatten()) < 1e-4


@pytest.mark.parametrize("name", ["deblur-gaussian", "deblur-motion", "super_resolution-bicubic"])
def test_solver_results_do_not_depend_on_the_batch(name: str) -> None:
    """Float32, as in production: image 1's solve alone equals its solve within a batch of three."""
    op = build(name).float()
    one = build(name, generators=[torch.Generator().manual_seed(101)]).float()
    z, y = randn(3, *SHAPE, seed=7).float(), op(randn(3, *SHAPE, seed=8).float())
    torch.testing.assert_close(one.prox(z[1:2], y[1:2], rho=0.05), op.prox(z, y, rho=0.05)[1:2], rtol=0, atol=1e-5)
    v = y.clone()
    torch.testing.assert_close(
        one.solve_aat(v[1:2], aat_weight=1.0, noise_var=0.01),
        op.solve_aat(v, aat_weight=1.0, noise_var=0.01)[1:2],
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("name", NAMES)
def test_image_parameters_do_not_depend_on_the_batch_size(name: str) -> None:
    """Image j's mask/kernel is drawn from image j's generator (experiment.image_generator) alone."""
    cpu = torch.device("cpu")
    batch = build(name, generators=[image_generator(0, j, cpu) for j in range(8)])
    for j in (0, 5):
        alone = build(name, generators=[image_generator(0, j, cpu)])
        got, expected = batch.image_parameters(j), alone.image_parameters(0)
        assert got.keys() == expected.keys()
        for key in got:
            assert torch.equal(got[key], expected[key]), key
    expected_keys = {"inpaint": {"mask"}, "deblur": {"kernel"}}.get(name.split("-")[0], set())
    assert set(batch.image_parameters(0)) == expected_keys
    with pytest.raises(IndexError, match="image 8"):
        batch.image_parameters(8)


def test_task_configs_are_all_covered() -> None:
    tasks = {p.stem for p in (CONF / "task").glob("*.yaml")  # the linear ones (tests/test_nonlinear_operators.py)
             if (op := OmegaConf.load(p).get("operator")) is not None and "linear" in get_object(op._target_).capabilities}
    assert tasks == {name.split("-")[0] for name in OPERATOR_CONFIGS}


def test_gaussian_kernel_equals_dps_reference() -> None:
    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    reference = gaussian_filter(delta, sigma=3.0)
    np.testing.assert_allclose(gaussian_kernel(61, 3.0).numpy(), reference, atol=1e-6)


def test_default_task_kernel_equals_scipy_cropped_and_normalised() -> None:
    """The default deblur kernel (9×9, σ = 2 px): scipy's 4σ-truncated Gaussian (17 taps), cropped to
    9×9 and renormalised to sum 1."""
    cfg = OmegaConf.load(CONF / "task" / "deblur.yaml")
    assert (cfg.kernel, cfg.operator.kernel_size, cfg.operator.std) == ("gaussian", 9, 2.0)
    op = build("deblur-gaussian", batch=1)
    delta = np.zeros((17, 17))
    delta[8, 8] = 1
    reference = gaussian_filter(delta, sigma=2.0)[4:13, 4:13]
    reference /= reference.sum()
    np.testing.assert_allclose(op.image_parameters(0)["kernel"].double().numpy(), reference, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("padding", ["reflect", "circular"])
def test_blur_pads_like_torch(padding: str) -> None:
    op = Blur((1, 16, 20), [torch.Generator()], 0.0, kernel_size=5, std=1.0, padding=padding).double()
    x = torch.rand(1, 1, 16, 20, dtype=torch.float64)
    padded = F.pad(x, [2] * 4, mode=padding)
    expected = F.conv2d(padded, op.kernels[None].double())
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


@pytest.mark.parametrize("name", NAMES)
def test_operator_backward_avoids_ops_without_deterministic_cuda_backward(name: str) -> None:
    """DPS differentiates through A: with runtime.deterministic=true on CUDA, torch raises for the
    backward of reflection padding and bicubic/bilinear interpolation (torch.use_deterministic_algorithms
    docs), so no operator may use them, in forward or adjoint."""
    op = build(name).float()
    x = torch.rand(3, *SHAPE, requires_grad=True)
    nodes = backward_nodes(op(x)) | backward_nodes(op.adjoint(op(x)))
    bad = ("Reflection", "Bicubic", "Bilinear", "AdaptiveAvgPool", "Replication")
    assert not {n for n in nodes if any(k in n for k in bad)}, nodes


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


def test_inpainting_baseline_is_zero_filled() -> None:
    """The baseline is m·y: no measurement noise inside the hole (y itself has noise there)."""
    op = build("inpaint-box", batch=2, sigma_y=0.5)
    x = randn(2, *SHAPE)
    y = op.measure(x, [torch.Generator().manual_seed(i) for i in range(2)])
    hole = op.mask.expand_as(y) == 0
    assert hole.any() and y[hole].abs().min() > 0
    base = op.baseline(y)
    assert torch.equal(base[hole], torch.zeros_like(base[hole]))
    assert torch.equal(base[~hole], y[~hole])


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        ("inpaint-box", {"box_size": 40}, "box_size=40"),
        ("inpaint-random", {"fraction": 1.5}, "fraction=1.5"),
        ("deblur-gaussian", {"kernel_size": 4}, "kernel_size=4"),
        ("deblur-gaussian", {"padding": "zeros"}, "padding='zeros'"),
        ("deblur-gaussian", {"pinv_cutoff": 0.0}, "pinv_cutoff=0.0"),
        ("super_resolution-avgpool", {"factor": 3}, "factor=3"),
    ],
)
def test_bad_parameters_are_named(name: str, override: dict, message: str) -> None:
    cfg = operator_cfg(name, sigma_y=0.1, **override)
    with pytest.raises(ValueError, match=message):
        instantiate(cfg)(image_shape=SHAPE, generators=[torch.Generator()])


def masks(n: int, shape=(1, 28, 28), **settings) -> torch.Tensor:
    """(n, H, W) masks of an ``Inpaint`` serving n images."""
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    return Inpaint(shape, gens, 0.05, **settings).mask[:, 0]


def box_corners(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the zero region of one mask, which must be a filled rectangle."""
    rows, cols = (mask == 0).any(1).nonzero()[:, 0], (mask == 0).any(0).nonzero()[:, 0]
    top, left, height, width = int(rows[0]), int(cols[0]), len(rows), len(cols)
    assert int((mask == 0).sum()) == height * width  # one filled rectangle
    return top, left, height, width


@pytest.mark.parametrize(("shape", "size", "corner"), [((1, 28, 28), 12, (8, 8)), ((1, 27, 30), 5, (11, 12))])
def test_box_mask_is_centred_and_one_means_observed(shape, size, corner) -> None:
    m = masks(2, shape=shape, mask="box", box_size=size)
    assert torch.equal(m[0], m[1])
    assert box_corners(m[0]) == (*corner, size, size)
    op = Inpaint(shape, [torch.Generator()], 0.0, mask="box", box_size=size)
    x = torch.rand(1, *shape) + 1
    y = op(x)
    top, left = corner
    assert y[0, 0, top, left] == 0 and y[0, 0, 0, 0] == x[0, 0, 0, 0]  # the box is missing, the corner observed


@pytest.mark.parametrize(
    ("n", "size", "margin", "lo", "hi"), [(256, 128, None, 16, 111), (28, 12, None, 2, 13), (28, 12, 0, 0, 15)]
)
def test_random_box_stays_within_the_dps_margin(n: int, size: int, margin, lo: int, hi: int) -> None:
    """DPS: top, left ~ randint(margin, H − margin − size) (upper end excluded), margin 16 px at 256 px."""
    m = masks(300, shape=(1, n, n), mask="box", box_size=size, random_position=True, margin=margin)
    corners = torch.tensor([box_corners(mi) for mi in m])
    assert (corners[:, 2:] == size).all()
    for pos in (corners[:, 0], corners[:, 1]):
        assert lo <= int(pos.min()) and int(pos.max()) <= hi
        assert int(pos.min()) <= lo + (hi - lo) // 8 and int(pos.max()) >= hi - (hi - lo) // 8  # spans the range
    assert len({tuple(c) for c in corners.tolist()}) > 100  # positions differ between images


def test_random_box_without_room_is_refused() -> None:
    message = r"box_size=24 is invalid: allowed is 1\.\.23 for 28x28 images with random_position and margin=null \(2 px\)"
    with pytest.raises(ValueError, match=message):
        masks(1, mask="box", box_size=24, random_position=True)


def test_random_mask_drops_exactly_floor_fraction_of_pixels() -> None:
    m = masks(200, mask="random", fraction=0.7)
    assert ((m == 0).flatten(1).sum(1) == int(0.7 * 784)).all()  # ⌊0.7·784⌋ = 548 in every image
    assert set(m.unique().tolist()) == {0.0, 1.0}
    freq = (m == 0).double().mean(0)  # each pixel is dropped with probability 548/784
    p = 548 / 784
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / 200) ** 0.5
    assert len({tuple(mi.flatten().tolist()) for mi in m}) == 200


def test_random_mask_fraction_range_is_uniform_per_image() -> None:
    """fraction_max: each image drops ⌊p·HW⌋ pixels with p ~ U(fraction, fraction_max) (DPS: 0.3–0.7)."""
    n = 400
    dropped = (masks(n, mask="random", fraction=0.3, fraction_max=0.7) == 0).flatten(1).sum(1).double() / 784
    assert dropped.min() >= int(0.3 * 784) / 784 and dropped.max() <= 0.7
    assert dropped.min() < 0.32 and dropped.max() > 0.68
    assert abs(float(dropped.mean()) - 0.5) < 4 * 0.4 / 12**0.5 / n**0.5
    assert abs(float(dropped.std()) - 0.4 / 12**0.5) < 0.015


def test_half_mask_drops_the_right_half() -> None:
    m = masks(1, shape=(1, 28, 27), mask="half")[0]
    assert (m[:, :13] == 1).all() and (m[:, 13:] == 0).all()


def kernel_axes(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre of mass, and the principal axes' standard deviations and directions of a kernel."""
    n = k.shape[0]
    grid = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).double()
    com = (k[..., None] * grid).sum((0, 1))
    d = grid - com
    cov = torch.einsum("ij,ija,ijb->ab", k, d, d)
    sd2, axes = torch.linalg.eigh(cov)
    return com, sd2.sqrt(), axes


def test_motion_kernels_follow_the_dps_motionblur_statistics() -> None:
    """61×61, intensity 0.5 as DPS. Reference: 300 kernels of the motionblur package (numpy seed 0) had a
    major-axis standard deviation with quartiles 6.7 / 10.5 / 14.4 px and a minor one 0.65 / 0.96 / 1.47 px."""
    kernels = [motion_kernel(61, 0.5, torch.Generator().manual_seed(i)) for i in range(100)]
    stats = torch.stack([kernel_axes(k)[1] for k in kernels])
    assert 8.5 < stats[:, 1].median() < 12.5 and 0.7 < stats[:, 0].median() < 1.3
    for k in kernels[:10]:
        assert k.shape == (61, 61) and k.min() >= 0 and abs(float(k.sum()) - 1) < 1e-12
        assert (kernel_axes(k)[0] - 30).abs().max() < 8  # the path's centre of mass is the kernel centre
    assert torch.equal(kernels[0], motion_kernel(61, 0.5, torch.Generator().manual_seed(0)))


def test_motion_kernel_without_intensity_is_a_straight_line() -> None:
    """Intensity 0: every heading is 0, so the path is a segment; its mass lies on one line."""
    lengths = []
    for seed in range(5):
        k = motion_kernel(61, 0.0, torch.Generator().manual_seed(seed))
        com, sd, axes = kernel_axes(k)
        n = k.shape[0]
        grid = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).double()
        off_axis = ((grid - com) @ axes[:, 0]).abs()  # distance from the major axis
        assert float(k[off_axis > 2].sum()) < 0.01
        lengths.append(float(sd[1]))
    assert max(lengths) > 5  # not only dots
    curved = [motion_kernel(61, 1.0, torch.Generator().manual_seed(seed)) for seed in range(20)]
    assert max(float(kernel_axes(k)[1][0]) for k in curved) > 3  # intensity 1 bends the path
