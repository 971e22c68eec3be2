"""The experiment overlays reproduce the official DPS settings (Chung et al. 2023) and pass validation."""

from pathlib import Path

import pytest

from diffexp.validate import validate
from conftest import CONF, make_cfg

PAPER = {
    "dps_paper_deblur": ("deblur", {"kernel": "gaussian", "kernel_size": 61, "std": 3.0}, 0.3),
    "dps_paper_motion_deblur": ("deblur", {"kernel": "motion", "kernel_size": 61, "intensity": 0.5}, 0.3),
    "dps_paper_inpaint": ("inpaint", {"mask": "box", "box_size": 128, "random_position": True}, 0.5),
    "dps_paper_inpaint_random": ("inpaint", {"mask": "random", "fraction": 0.3, "fraction_max": 0.7}, 0.5),
    "dps_paper_super_resolution": ("super_resolution", {"factor": 4, "downsample": "bicubic"}, 0.3),
}


def test_every_overlay_is_checked() -> None:
    assert {p.stem for p in (CONF / "experiment").glob("*.yaml")} == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_dps_paper_overlay(name: str, tmp_path: Path) -> None:
    task, operator, zeta = PAPER[name]
    cfg = make_cfg([f"experiment={name}", "model=ddpm_celebahq"], tmp_path)
    assert cfg.task.name == task and cfg.sampler.name == "dps"
    assert (cfg.sampler.num_steps, cfg.sampler.step_size, cfg.task.sigma_y) == (1000, zeta, 0.05)
    for key, value in operator.items():
        assert cfg.task.operator[key] == value, key
    validate(cfg)
