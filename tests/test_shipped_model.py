"""The MNIST model shipped in the package: offline loading, config/weights agreement, quality, determinism."""

import json
import logging
from pathlib import Path

import pytest
from diffusers import UNet2DModel
from diffusers.utils import logging as diffusers_logging

from diffexp import WEIGHTS
from diffexp.models.diffusion import load_pretrained
from conftest import cli, make_cfg

import diffexp

SHIPPED = WEIGHTS / "mnist"


def test_shipped_weights_match_their_config_and_load_offline() -> None:
    assert (SHIPPED / "diffusion_pytorch_model.safetensors").stat().st_size < 10 * 2**20
    _, info = UNet2DModel.from_pretrained(SHIPPED, output_loading_info=True, low_cpu_mem_usage=False)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model = load_pretrained(str(SHIPPED))
    assert model.image_shape == (1, 28, 28) and model.prediction_type == "epsilon"
    assert "CC BY-SA 3.0" in (SHIPPED / "README.md").read_text()


def test_loading_the_shipped_model_warns_of_nothing(recwarn: pytest.WarningsRecorder) -> None:
    """No "`accelerate` was not found ... low_cpu_mem_usage" (a diffusers log warning) on every default run."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger, verbosity = logging.getLogger("diffusers"), diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        load_pretrained(str(SHIPPED))
    finally:
        logger.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    assert [r.getMessage() for r in records] == [] and [str(w.message) for w in recwarn] == []


def test_default_model_config_is_the_shipped_model(tmp_path: Path) -> None:
    cfg = make_cfg([], tmp_path)
    assert Path(cfg.model.pretrained) == SHIPPED and cfg.data._target_.endswith("mnist_eval")


def test_short_inpainting_run_beats_the_zero_filled_measurement(tmp_path: Path) -> None:
    cfg = make_cfg(["task=inpaint", "logger=none", "num_images=4", "batch_size=4", "sampler.num_steps=50",
                    "metrics.lpips=false"], tmp_path)
    result = diffexp.run(cfg)
    assert result["status"] == "ok"
    assert result["metrics"]["psnr"]["mean"] > result["baseline"]["psnr"]["mean"] + 1.0


def test_generation_through_the_cli_is_deterministic(tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = cli(["task=generate", "sampler=ddpm", "sampler.num_steps=20", "num_images=4", "batch_size=4",
                      "logger=none", "seed=3", f"hydra.run.dir={out}"])
        assert result.returncode == 0, result.stderr
        outs.append(out)
    for i in range(4):
        assert (outs[0] / "images" / f"{i:05d}.png").read_bytes() == (outs[1] / "images" / f"{i:05d}.png").read_bytes()
    assert json.loads((outs[0] / "metrics.json").read_text())["status"] == "ok"
