"""Speed knobs (``runtime.*``, ``batch_size``): each gives the float32 default's images within tolerance,
and the sampling loops convert no tensor to a Python value per step (no host↔device sync per step)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cfg
from PIL import Image

import diffexp
from diffexp.runtime import resolve_device
from diffexp.models.diffusion import tiny_model
from diffexp.operators.blur import Blur
from diffexp.rundir.files import image_name
from diffexp.samplers import base
from diffexp.errors import SamplingDivergedError
from diffexp.samplers.base import FiniteCheck
from diffexp.samplers.ddim import ddim
from diffexp.samplers.ddpm import ddpm
from diffexp.samplers.dps import dps
from diffexp.samplers.scoreald import scoreald
from diffexp.models.schedule import respaced_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "num_images=2", "batch_size=2"]
# Few steps from t = 300: starting at t = T - 1 divides ε's rounding error by sqrt(ᾱ_T) ≈ 0.006 in x̂0, and
# DPS's gradient by the same factor, so a 3-step chain from T amplifies half-precision noise into other images.
STEPS = ["sampler.num_steps=3", "+sampler.t_start=300"]
CASES = {"ddpm": ["task=generate", "sampler=ddpm"], "dps": ["task=deblur", "sampler=dps"],
         "scoreald": ["task=inpaint", "sampler=scoreald"]}


def images(tmp_path: Path, name: str, overrides: list[str]) -> np.ndarray:
    """The PNGs (uint8) of a run of the real config with ``overrides``."""
    out = tmp_path / name
    diffexp.run(make_cfg([*TINY, *STEPS, *overrides], out))
    return np.stack([np.asarray(Image.open(out / "images" / image_name(i))).astype(np.float64) for i in range(2)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    ("knob", "max_levels"),
    [("batch_size=1", 0), ("runtime.channels_last=true", 1), ("runtime.device=cpu", 0)],
)
def test_exact_knobs_keep_images(tmp_path: Path, case: str, knob: str, max_levels: int) -> None:
    """batch_size and device change nothing; channels_last at most the last bit (1/255)."""
    ref = images(tmp_path, "ref", CASES[case])
    out = images(tmp_path, "knob", [*CASES[case], knob])
    assert np.abs(ref - out).max() <= max_levels


def test_threads_knob_sets_torch_threads_and_keeps_images(tmp_path: Path) -> None:
    """runtime.threads=2 runs on two intra-op threads (float rounding of reductions may move 1/255)."""
    ref = images(tmp_path, "ref", CASES["dps"])
    try:
        out = images(tmp_path, "threads", [*CASES["dps"], "runtime.threads=2"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert np.abs(ref - out).max() <= 1


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_autocast_dtypes_stay_close(tmp_path: Path, case: str, dtype: str) -> None:
    """bfloat16 autocast of the UNet stays within rounding noise of float32: mean |Δ| below 2/255 and
    PSNR against the float32 images above 30 dB. (float16 is refused on the CPU: tests/test_outdir.py.)"""
    ref = images(tmp_path, "ref", CASES[case])
    out = images(tmp_path, dtype, [*CASES[case], f"runtime.dtype={dtype}"])
    assert np.abs(ref - out).mean() < 2
    assert psnr(ref, out) > 30


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ddpm", "dps"])
def test_compile_keeps_images(tmp_path: Path, case: str) -> None:
    """torch.compile of the UNet (inference for ddpm, forward + backward for dps); needs a C compiler."""
    ref = images(tmp_path, "ref", CASES[case])
    out = images(tmp_path, "compiled", [*CASES[case], "runtime.compile=true"])
    assert np.abs(ref - out).max() <= 1


def test_device_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_device_cuda_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="runtime.device='cuda' but CUDA is not available"):
        resolve_device("cuda")


# ---------------------------------------------------------------- no host↔device sync per step

SYNCS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every tensor → Python value conversion made from Python code (each one is a sync on an accelerator)."""
    seen: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _name: str = name, _original: object = original) -> object:
            seen.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield seen


class AcceleratorCheck(FiniteCheck):
    """``FiniteCheck`` as on an accelerator: the NaN flag is read once, after the last step."""

    def __init__(self, sampler: str, hint: str, timesteps: torch.Tensor, device: torch.device) -> None:
        super().__init__(sampler, hint, timesteps, device, every=len(timesteps))


@pytest.mark.parametrize("sampler", [ddpm, ddim, dps, scoreald], ids=lambda f: f.__name__)
def test_sampling_loop_syncs_do_not_grow_with_steps(
    sampler: object, conversions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the accelerator-mode NaN check, a 6-step run converts exactly as many tensors to Python values
    as a 2-step run: nothing in a step (sampler, model wrapper, UNet, operator) waits for the device."""
    monkeypatch.setattr(f"{sampler.__module__}.FiniteCheck", AcceleratorCheck)
    model = tiny_model(sample_size=8)
    counts = []
    for steps in (2, 6):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        operator = Blur((3, 8, 8), gens, sigma_y=0.05, kernel_size=3)
        y = operator.measure(torch.zeros(2, 3, 8, 8), gens)
        grid = respaced_timesteps(1000, steps)
        conversions.clear()
        sampler(model, torch.randn(2, 3, 8, 8), timesteps=grid, generators=gens, y=y, operator=operator)
        counts.append(len(conversions))
    assert counts[0] == counts[1], f"per-step conversions: {counts} for 2 and 6 steps"


def test_deferred_finite_check_names_the_first_bad_step() -> None:
    grid = respaced_timesteps(1000, 8)
    check = FiniteCheck("dps", "sampler.step_size=9 too large", grid, torch.device("cpu"), every=4)
    good, bad = torch.zeros(3), torch.tensor([0.0, float("nan"), 0.0])
    check(0, x=good, x0=good)
    check(1, x=good, x0=good)
    check(2, x=good, x0=bad)
    with pytest.raises(SamplingDivergedError, match=rf"dps: non-finite values in x0 at step 2 \(t={int(grid[2])}\)"):
        check(3, x=bad, x0=bad)


def test_deferred_finite_check_reads_after_the_last_step() -> None:
    grid = respaced_timesteps(1000, 3)
    check = FiniteCheck("ddpm", "a model producing NaN/Inf", grid, torch.device("cpu"), every=25)
    check(0, x=torch.zeros(2))
    check(1, x=torch.tensor([float("inf")]))
    with pytest.raises(SamplingDivergedError, match="in x at step 1"):
        check(2, x=torch.zeros(2))


def test_finite_check_is_immediate_on_cpu() -> None:
    check = FiniteCheck("ddpm", "hint", respaced_timesteps(1000, 5), torch.device("cpu"))
    assert check.every == 1
    with pytest.raises(SamplingDivergedError, match="at step 0"):
        check(0, x=torch.tensor([float("nan")]))


def test_grid_alphas_match_the_schedule() -> None:
    model = tiny_model()
    grid = respaced_timesteps(1000, 4)
    ab, ab_prev = base.grid_alphas(model, grid, torch.zeros(1))
    assert ab.dtype == torch.float32
    torch.testing.assert_close(ab, model.alphas_cumprod[grid].float())
    torch.testing.assert_close(ab_prev, torch.cat([model.alphas_cumprod[grid[1:]].float(), torch.ones(1)]))
