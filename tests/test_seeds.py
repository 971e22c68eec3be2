"""Different seeds give different images (the determinism tests in test_reliability.py would also pass if the
seed were ignored): each of operator parameters, measurement noise, initial noise and sampler noise changes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, make_cfg
from omegaconf import OmegaConf
from PIL import Image

import diffexp
from diffexp.rng import image_generator

RUN = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "sampler.num_steps=3", "num_images=2",
       "batch_size=2", "task=inpaint", "task.mask=random", "sampler.step_size=0.5"]
SIGMA_Y = float(OmegaConf.load(CONF / "task" / "inpaint.yaml").sigma_y)


def test_image_streams_differ_for_every_seed_and_index() -> None:
    """No two (seed, index) pairs share a stream: also not (0, 1) and (1, 0), as a seed + index scheme would."""
    pairs = list(itertools.product(range(3), range(3)))
    draws = {p: torch.randn(64, generator=image_generator(*p, torch.device("cpu"))) for p in pairs}
    for a, b in itertools.combinations(pairs, 2):
        corr = float(torch.corrcoef(torch.stack([draws[a], draws[b]]))[0, 1])
        assert abs(corr) < 0.5, (a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    out = {}
    for seed in (0, 1):
        out[seed] = tmp_path_factory.mktemp(f"seed{seed}")
        diffexp.run(make_cfg([*RUN, f"seed={seed}"], out[seed]))
    return out


def png(out: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(out / "images" / name), dtype=float)


def test_other_seed_gives_other_masks_noise_and_outputs(runs: dict[int, Path]) -> None:
    for i in range(2):
        a, b = (torch.load(runs[seed] / "measurements" / f"{i:05d}.pt") for seed in (0, 1))
        assert (a["mask"] != b["mask"]).float().mean() > 0.2, "random masks"
        both = (a["mask"] * b["mask"]).expand_as(a["y"]).bool()  # observed in both: y_a − y_b = n_a − n_b
        noise = float((a["y"] - b["y"])[both].std())
        assert 0.5 < noise / (SIGMA_Y * 2**0.5) < 1.5, "measurement noise"
        assert np.abs(png(runs[0], f"{i:05d}.png") - png(runs[1], f"{i:05d}.png")).mean() > 5, "outputs"
        # the ground truth is the data set's: the same for every seed
        assert np.array_equal(png(runs[0], f"{i:05d}_truth.png"), png(runs[1], f"{i:05d}_truth.png"))


def test_images_of_one_run_get_their_own_randomness(runs: dict[int, Path]) -> None:
    a, b = (torch.load(runs[0] / "measurements" / f"{i:05d}.pt") for i in (0, 1))
    assert (a["mask"] != b["mask"]).float().mean() > 0.2
