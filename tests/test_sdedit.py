"""SDEdit (Meng et al. 2022) for task=denoise with the unconditional samplers, on the shipped MNIST model:
the run starts at the step whose noise level matches σ_y, from √ᾱ_t·y, and ends closer to the truth than y.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CONF, make_cfg
from omegaconf import OmegaConf

import diffexp
import diffexp.samplers.ddim
import diffexp.samplers.ddpm

WEIGHTS = Path(diffexp.__file__).parent / "weights" / "mnist"
SIGMA_Y = float(OmegaConf.load(CONF / "task" / "denoise.yaml").sigma_y)  # [-1, 1] units
NUM_IMAGES = 3
RUN = ["model=mnist", "data=mnist_eval", "logger=none", "metrics.lpips=false", "metrics.fid=false", "task=denoise",
       f"num_images={NUM_IMAGES}", f"batch_size={NUM_IMAGES}"]
SAMPLERS = {  # respaced grids over [0, t_start], to keep the runs short
    "ddpm": (diffexp.samplers.ddpm, ["sampler.num_steps=25"]),
    "ddim": (diffexp.samplers.ddim, ["sampler.num_steps=10"]),
}


def level_matched_step(sigma: float) -> int:
    """Independent reference: the first t whose noise level sqrt((1 − ᾱ_t)/ᾱ_t) of x_t/sqrt(ᾱ_t) reaches σ,
    or the step before if that one is nearer."""
    level = np.sqrt(1 / alphas_cumprod() - 1)
    t = int(np.argmax(level >= sigma))
    return t - 1 if t > 0 and sigma - level[t - 1] < level[t] - sigma else t


def alphas_cumprod() -> np.ndarray:
    """ᾱ_t in float64 from the linear betas of the shipped scheduler_config.json."""
    config = json.loads((WEIGHTS / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "linear"
    return np.cumprod(1 - np.linspace(config["beta_start"], config["beta_end"], config["num_train_timesteps"]))


@pytest.fixture(scope="module", params=sorted(SAMPLERS))
def sdedit_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One task=denoise run of the shipped model; the sampler's inputs are recorded."""
    name = request.param
    module, overrides = SAMPLERS[name]
    real = getattr(module, name)
    calls: list[dict[str, Any]] = []

    @functools.wraps(real)  # keeps the declaration (``spec``) that run() reads
    def recording(model: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append({"x": x.clone(), "y": kwargs["y"].clone(), "timesteps": kwargs["timesteps"].clone()})
        return real(model, x, **kwargs)

    out = tmp_path_factory.mktemp(f"sdedit_{name}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, name, recording)
        diffexp.run(make_cfg([*RUN, f"sampler={name}", *overrides], out))
    assert len(calls) == 1
    return {"out": out, "result": json.loads((out / "metrics.json").read_text()), **calls[0]}


def test_starts_at_the_level_matched_step(sdedit_run: dict[str, Any]) -> None:
    t_start = level_matched_step(SIGMA_Y)
    assert 0 < t_start < 999
    assert sdedit_run["result"]["t_start"] == t_start
    assert int(sdedit_run["timesteps"][0]) == t_start and int(sdedit_run["timesteps"][-1]) == 0
    assert sdedit_run["result"]["nfe"] == len(sdedit_run["timesteps"])


def test_starts_from_the_scaled_measurement(sdedit_run: dict[str, Any]) -> None:
    """x_start = √ᾱ_{t_start}·y with y the measurement saved for each image."""
    y, x = sdedit_run["y"], sdedit_run["x"]
    for i in range(NUM_IMAGES):
        saved = torch.load(sdedit_run["out"] / "measurements" / f"{i:05d}.pt")["y"]
        torch.testing.assert_close(y[i], saved, rtol=0, atol=0)
    expected = math.sqrt(alphas_cumprod()[level_matched_step(SIGMA_Y)]) * y.double()
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)


def test_denoising_improves_on_the_noisy_image(sdedit_run: dict[str, Any]) -> None:
    """The noisy digit scores ~14 dB; the shipped model's SDEdit output must be clearly better, image by image."""
    for row in sdedit_run["result"]["per_image"]:
        assert row["psnr"] > row["baseline_psnr"] + 3, row
        assert row["ssim"] > row["baseline_ssim"] + 0.1, row
