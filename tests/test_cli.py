"""The real CLI: the output contract for every task × sampler, and clear errors for unsupported pairs."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import cli

KEYS = {"status", "error", "task", "sampler", "model", "num_images", "nfe", "seconds", "seconds_per_image",
        "metrics", "baseline", "per_image"}
METRIC_NAMES = {"psnr", "ssim", "lpips", "residual"}
INVERSE = ["denoise", "inpaint", "deblur", "super_resolution"]
TINY = ["model=tiny", "data=synthetic", "logger=none", "num_images=3", "batch_size=2", "sampler.num_steps=3"]


def check_contract(out: Path, task: str, sampler: str, n: int = 3) -> dict:
    result = json.loads((out / "metrics.json").read_text())
    assert KEYS <= set(result), KEYS - set(result)
    assert result["status"] == "ok" and result["error"] is None
    assert (result["task"], result["sampler"], result["num_images"]) == (task, sampler, n)
    assert [r["index"] for r in result["per_image"]] == list(range(n))
    assert (out / "grid.png").is_file()
    for i in range(n):
        assert (out / "images" / f"{i:05d}.png").is_file()
    if task == "generate":
        assert result["metrics"] == {} and result["baseline"] == {}
        return result
    assert set(result["metrics"]) == METRIC_NAMES and {"psnr", "ssim", "lpips"} <= set(result["baseline"])
    for name in METRIC_NAMES:
        assert result["metrics"][name]["mean"] is not None, name
        assert all(row[name] is not None for row in result["per_image"])
    for i in range(n):
        assert (out / "images" / f"{i:05d}_measurement.png").is_file()
        raw = torch.load(out / "measurements" / f"{i:05d}.pt")
        assert raw["y"].ndim == 3
    return result


def test_generate_writes_the_output_contract(tmp_path: Path) -> None:
    result = cli(["task=generate", "model=tiny", "sampler=ddpm", "sampler.num_steps=5", "num_images=3",
                  "logger=none", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr
    check_contract(tmp_path, "generate", "ddpm")
    assert json.loads((tmp_path / "metrics.json").read_text())["nfe"] == 5
    assert f"outputs written to {tmp_path}" in result.stdout


def test_every_task_and_sampler_through_the_cli(tmp_path: Path, torch_home: Path) -> None:
    sweep = tmp_path / "sweep"
    tasks = ",".join(INVERSE)
    result = cli(["-m", f"task={tasks}", "sampler=dps,scoreald,ddpm,ddim", *TINY, f"hydra.sweep.dir={sweep}",
                  "hydra.sweep.subdir=${task.name}-${sampler.name}"], timeout=600)
    for task in INVERSE:
        for sampler in ("dps", "scoreald"):
            check_contract(sweep / f"{task}-{sampler}", task, sampler)
    for sampler in ("ddpm", "ddim"):  # SDEdit start from the noisy image
        denoise = check_contract(sweep / f"denoise-{sampler}", "denoise", sampler)
        assert denoise["t_start"] < 999
        for task in ("inpaint", "deblur", "super_resolution"):
            assert not (sweep / f"{task}-{sampler}" / "metrics.json").exists()
    assert result.returncode != 0
    assert "cannot solve task=inpaint: it needs measurement guidance; use sampler=dps or sampler=scoreald" in result.stderr


@pytest.mark.parametrize("sampler", ["ddim", "dps"])
def test_generate_with_other_samplers(tmp_path: Path, sampler: str) -> None:
    result = cli(["task=generate", f"sampler={sampler}", *TINY, f"hydra.run.dir={tmp_path}"])
    if sampler == "ddim":
        assert result.returncode == 0, result.stderr
        check_contract(tmp_path, "generate", "ddim")
    else:
        assert result.returncode != 0
        assert "sampler=dps needs a measurement; task=generate supports ddpm, ddim" in result.stderr
