"""Nonlinear operators (phase retrieval, HDR, quantisation) and every operator's ``vjp``: forward values against
numpy, vjp against autograd (and the explicit adjoint for linear operators), the phase-retrieval alignment behind
``aligned_psnr``, the capability check's refusal, and one run per new task through ``python run.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, FAST, cli, make_cfg
from diffexp.errors import ConfigError
from diffexp.evaluation.aligned import align_shift_flip
from diffexp.evaluation.metrics import Metrics
from diffexp.operators.base import LinearOperator, Operator
from diffexp.operators.hdr import HDR
from diffexp.operators.phase_retrieval import PhaseRetrieval
from diffexp.operators.quantize import Quantize
from diffexp.validate import validate
from test_operator_settings import operator_classes

SHAPE = (2, 12, 12)
NEW_TASKS = ("phase_retrieval", "hdr", "quantize")


def gens(n: int = 2) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(10 + i) for i in range(n)]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def task_operator(task: str, shape=SHAPE, **overrides) -> Operator:
    """The operator of ``conf/task/<task>.yaml`` (its ``${task.*}`` resolved), float64, for two images."""
    root = OmegaConf.create({"task": OmegaConf.load(CONF / "task" / f"{task}.yaml")})
    root.task.operator = OmegaConf.merge(root.task.operator, overrides)
    cfg = OmegaConf.to_container(root, resolve=True)["task"]["operator"]
    return instantiate(cfg)(image_shape=shape, generators=gens()).double()


def every_operator() -> list[tuple[str, Operator]]:
    """One instance of every concrete operator class in diffexp/operators (via its task config)."""
    tasks = [p.stem for p in sorted((CONF / "task").glob("*.yaml")) if OmegaConf.load(p).get("operator") is not None]
    built = {type(op): op for op in (task_operator(t) for t in tasks)}
    concrete = [c for c in operator_classes() if c in built or not getattr(c, "__abstractmethods__", None)]
    assert set(concrete) == set(built), "an operator class without a task config"
    return [(cls.__name__, built[cls]) for cls in sorted(built, key=lambda c: c.__name__)]


OPERATORS = every_operator()


@pytest.mark.parametrize("convention", ["dps", "daps"])
def test_phase_retrieval_is_the_centred_fft_amplitude_of_the_padded_image(convention: str) -> None:
    op = PhaseRetrieval((3, 28, 20), gens(), 0.05, convention=convention).double()
    assert op.pad == (7, 5)  # int(oversample / 8 * H) rows, int(oversample / 8 * W) columns per side
    x = randn(2, 3, 28, 20).clamp(-1, 1)
    v = (x.numpy() + 1) / 2 if convention == "daps" else x.numpy()  # daps: [0, 1], black padding; dps: grey
    padded = np.pad(v, ((0, 0), (0, 0), (7, 7), (5, 5)))
    axes = (-2, -1)
    expected = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded, axes=axes), norm="ortho"), axes=axes))
    np.testing.assert_allclose(op(x).numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose((op(x) ** 2).sum((2, 3)).numpy(), (padded**2).sum((2, 3)), rtol=1e-12)  # Parseval


def test_hdr_and_quantize_forward_values() -> None:
    x = torch.tensor([-1.0, -0.6, -0.5, -0.2, 0.0, 0.2, 0.49, 0.7, 1.0], dtype=torch.float64).reshape(1, 1, 3, 3)
    hdr = HDR((1, 3, 3), gens(1), 0.0).double()
    assert hdr(x).flatten().tolist() == pytest.approx([-1.0, -1.0, -1.0, -0.4, 0.0, 0.4, 0.98, 1.0, 1.0])
    torch.testing.assert_close(hdr.baseline(hdr(x)), hdr(x) / 2)
    for bits in (1, 2, 3):
        q = Quantize((1, 3, 3), gens(1), 0.0, bits=bits).double()
        levels = 2**bits - 1
        x01 = (x.numpy() + 1) / 2
        expected = np.round(x01 * levels) / levels * 2 - 1
        np.testing.assert_array_equal(q(x).numpy(), expected)
    q = Quantize((1, 3, 3), gens(1), 0.0, bits=2).double()
    assert q(torch.full((1, 1, 3, 3), 3.0)).unique().tolist() == [1.0]  # saturates at the range's ends
    noisy = q(x) + 0.05 * randn(1, 1, 3, 3)
    torch.testing.assert_close(q.baseline(noisy), q(x))  # re-quantised back onto the levels


def test_gradients_of_hdr_and_quantize_are_documented_ones() -> None:
    x = torch.tensor([-0.9, -0.3, 0.1, 0.6], dtype=torch.float64).reshape(1, 1, 2, 2)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    hdr = HDR((1, 2, 2), gens(1), 0.0).double()
    assert hdr.vjp(x, v).flatten().tolist() == [0.0, 4.0, 6.0, 0.0]  # 2 inside, 0 where clipped
    q = Quantize((1, 2, 2), gens(1), 0.0).double()
    assert torch.equal(q.vjp(x, v), v)  # straight-through: the identity


@pytest.mark.parametrize(("name", "op"), OPERATORS, ids=[n for n, _ in OPERATORS])
def test_vjp_is_autograds_and_the_adjoint_for_linear_operators(name: str, op: Operator) -> None:
    x = randn(2, *SHAPE).clamp(-1, 1)
    v = randn(*op(x).shape, seed=1)
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((op(xg) * v).sum(), xg)
    with torch.no_grad():  # samplers call it under no_grad
        got = op.vjp(x, v)
    assert not got.requires_grad and got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert "differentiable" in op.capabilities
    if isinstance(op, LinearOperator):
        assert torch.equal(got, op.adjoint(v))  # bit-identical: the samplers' results on linear A do not move
    else:
        assert not {"linear", "adjoint", "pinv", "prox", "solve_aat"} & op.capabilities
        assert torch.equal(Operator.vjp(op, x, v), got)  # the base's autograd default


def test_phase_retrieval_vjp_is_finite_where_the_amplitude_is_zero() -> None:
    op = PhaseRetrieval(SHAPE, gens(), 0.0).double()
    x = torch.zeros(2, *SHAPE, dtype=torch.float64)  # dps: all-zero canvas, |z| = 0 everywhere
    assert torch.isfinite(op.vjp(x, torch.ones_like(op(x)))).all()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    mse = (((a - b) / 2) ** 2).flatten(1).mean(1)
    return (-10 * torch.log10(mse)).tolist()


def _digit(seed: int, fill: float) -> torch.Tensor:
    """Two 1-channel 20×20 'digits': a random blob inside rows and columns 5..14, ``fill`` elsewhere."""
    x = torch.full((2, 1, 20, 20), fill, dtype=torch.float64)
    x[..., 5:15, 5:15] = randn(2, 1, 10, 10, seed=seed).clamp(-1, 1)
    return x


@pytest.mark.parametrize(("convention", "fill"), [("dps", 0.0), ("daps", -1.0)])
def test_aligned_psnr_undoes_shifts_rotations_and_signs(convention: str, fill: float) -> None:
    op = PhaseRetrieval((1, 20, 20), gens(), 0.0, convention=convention).double()
    assert op.pad == (5, 5)
    truth = _digit(0, fill)
    recon = truth.clone()
    recon[..., 5:15, 5:15] += 0.05 * randn(2, 1, 10, 10, seed=3)  # an imperfect reconstruction, same support
    recon = recon.clamp(-1, 1)
    moved = torch.roll(torch.flip(recon, dims=(-2, -1)), shifts=(3, -4), dims=(-2, -1))  # inside the free border
    if convention == "dps":
        moved[1] = -moved[1]  # a global sign: same |F pad(x)| when the padding is 0
    torch.testing.assert_close(op(moved), op(recon))  # the same measurement
    metrics = Metrics(lpips=False)
    values = metrics(moved.float(), truth.float(), op)
    assert list(values)[:2] == ["psnr", "aligned_psnr"]
    assert values["aligned_psnr"] == pytest.approx(_psnr(recon, truth), abs=1e-4)
    assert all(a > p + 5 for a, p in zip(values["aligned_psnr"], values["psnr"], strict=True))
    # brute force: the best PSNR over every candidate the alignment searches is the one it reports
    signs = (1.0, -1.0) if convention == "dps" else (1.0,)
    best = torch.full((2,), -np.inf, dtype=torch.float64)
    for s in signs:
        for v in (moved, torch.flip(moved, dims=(-2, -1))):
            canvas = torch.nn.functional.pad(s * (v - fill) + fill, (5, 5, 5, 5), value=fill)
            for dy in range(11):
                for dx in range(11):
                    window = canvas[..., dy : dy + 20, dx : dx + 20]
                    best = torch.maximum(best, torch.tensor(_psnr(window, truth), dtype=torch.float64))
    aligned = align_shift_flip(moved, truth, pad=(5, 5), fill=fill, signs=signs)
    torch.testing.assert_close(torch.tensor(_psnr(aligned, truth), dtype=torch.float64), best)
    assert values["aligned_psnr"] == pytest.approx(best.tolist(), abs=1e-4)


def test_only_phase_retrieval_reports_an_aligned_psnr() -> None:
    x = randn(2, *SHAPE).clamp(-1, 1)
    metrics = Metrics(lpips=False)
    for name, op in OPERATORS:
        assert ("aligned_psnr" in metrics(x.float(), x.float(), op)) == (name == "PhaseRetrieval"), name
    assert "aligned_psnr" not in metrics(x.float(), x.float())


@pytest.mark.parametrize("task", NEW_TASKS)
@pytest.mark.parametrize("sampler", ["ddnm", "pigdm", "diffpir"])
def test_samplers_needing_a_linear_operator_are_refused_naming_those_that_can(
    task: str, sampler: str, tmp_path: Path
) -> None:
    cfg = make_cfg([f"task={task}", f"sampler={sampler}"], tmp_path)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    (message,) = info.value.problems
    cls = get_cls(task)
    assert message.startswith(f"sampler={sampler} cannot solve task={task}: it needs an operator with ")
    assert f"({cls} offers differentiable); samplers that can: ald, daps, daps_exact, dps, reddiff, scoreald" in message
    assert "linear" in message.split("(")[0]


def get_cls(task: str) -> str:
    return {"phase_retrieval": "PhaseRetrieval", "hdr": "HDR", "quantize": "Quantize"}[task]


def test_ddnm_on_phase_retrieval_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(["task=phase_retrieval", "sampler=ddnm"], tmp_path))
    assert info.value.problems == [
        "sampler=ddnm cannot solve task=phase_retrieval: it needs an operator with adjoint, linear, pinv, solve_aat "
        "(PhaseRetrieval offers differentiable); samplers that can: ald, daps, daps_exact, dps, reddiff, scoreald"
    ]


@pytest.mark.parametrize("task", NEW_TASKS)
@pytest.mark.parametrize("sampler", ["ald", "dps", "daps", "daps_exact", "reddiff", "scoreald"])
def test_samplers_for_a_differentiable_operator_pass(task: str, sampler: str, tmp_path: Path) -> None:
    validate(make_cfg([f"task={task}", f"sampler={sampler}"], tmp_path))


def test_daps_exact_draw_needs_a_linear_operator() -> None:
    from diffexp.samplers.daps_exact import daps_exact as daps

    op = HDR(SHAPE, gens(), 0.05)
    with pytest.raises(ValueError, match=r"sampler\.langevin_steps=0 draws x0 exactly, .*HDR offers differentiable"):
        daps(None, torch.zeros(2, *SHAPE), timesteps=torch.tensor([10]), generators=gens(), y=torch.zeros(2, *SHAPE),
             operator=op)


@pytest.mark.parametrize("task", NEW_TASKS)
def test_end_to_end_run_per_new_task(task: str, tmp_path: Path) -> None:
    extra = ["sampler=daps", "sampler.langevin_steps=3"] if task == "hdr" else []
    run = cli([*FAST, f"task={task}", *extra, f"hydra.run.dir={tmp_path}", "metrics.fid=false"], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    names, baseline = set(result["metrics"]), set(result["baseline"])
    assert {"psnr", "ssim", "residual"} <= names and {"psnr", "ssim", "residual"} <= baseline
    assert "aligned_psnr" not in names | baseline or task == "phase_retrieval"
    for row in result["per_image"]:  # (the means need "aligned_psnr" in diffexp.rundir.files.METRICS)
        assert ("aligned_psnr" in row and "baseline_aligned_psnr" in row) == (task == "phase_retrieval")
        if task == "phase_retrieval":
            assert row["aligned_psnr"] >= row["psnr"] - 1e-6
            assert row["baseline_aligned_psnr"] >= row["baseline_psnr"] - 1e-6
