"""A model diffexp would read wrongly is refused at load time, before any compute, naming the key, its value and
what is allowed: scheduler classes and settings diffexp does not implement, and a sample_size the UNet cannot
down-sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffexp.errors import ConfigError
from diffexp.models.diffusion import DiffusionModel, load_pretrained, tiny_unet
from conftest import cli


def folder_with(tmp_path: Path, sample_size: int = 8, unet: UNet2DModel | None = None, **edits: Any) -> Path:
    """A diffusers folder (tiny UNet, DDPMScheduler) whose scheduler_config.json has ``edits`` applied."""
    folder = tmp_path / "model"
    (unet or tiny_unet(sample_size, 1)).save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    path = folder / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edits}))
    return folder


def refusal(folder: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_pretrained(str(folder))
    return str(info.value)


@pytest.mark.parametrize(("cls", "family"), [
    ("FlowMatchEulerDiscreteScheduler", "flow matching"), ("EDMEulerScheduler", "EDM"),
    ("EDMDPMSolverMultistepScheduler", "EDM"), ("ScoreSdeVeScheduler", "variance-exploding"),
])
def test_flow_matching_and_edm_schedulers_are_not_supported_yet(tmp_path: Path, cls: str, family: str) -> None:
    message = refusal(folder_with(tmp_path, _class_name=cls))
    assert f"_class_name={cls!r}" in message and family in message and "not supported yet" in message
    assert "allowed: 'DDPMScheduler'" in message


def test_another_ddpm_family_scheduler_class_is_named(tmp_path: Path) -> None:
    message = refusal(folder_with(tmp_path, _class_name="PNDMScheduler"))
    assert "_class_name='PNDMScheduler'; allowed: 'DDPMScheduler'" in message


def test_zero_terminal_snr_is_refused_as_such(tmp_path: Path) -> None:
    message = refusal(folder_with(tmp_path, rescale_betas_zero_snr=True))
    assert "rescale_betas_zero_snr=True" in message and "zero terminal SNR" in message
    assert "allowed: rescale_betas_zero_snr=False" in message and "step" not in message
    # the same schedule written as trained betas (β_T = 1, ᾱ_T = 0) is refused for the same reason
    betas = DDPMScheduler(rescale_betas_zero_snr=True).betas.tolist()
    message = refusal(folder_with(tmp_path / "b", trained_betas=betas))
    assert "zero terminal SNR" in message and "ᾱ" in message and "step" not in message
    with pytest.raises(ConfigError, match="zero terminal SNR"):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(trained_betas=betas))


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("prediction_type", "flow", "'epsilon', 'sample', 'v_prediction'"),
    ("variance_type", "learned", "'fixed_small', 'fixed_large', 'learned_range'"),
    ("variance_type", "fixed_small_log", "'fixed_small', 'fixed_large', 'learned_range'"),
    ("timestep_spacing", "karras", "'leading', 'trailing', 'linspace'"),
    ("beta_schedule", "cosine", "'linear', 'scaled_linear', 'squaredcos_cap_v2'"),
    ("clip_sample", "false", "true or false"),
    ("thresholding", True, "thresholding=False"),
    ("steps_offset", -1, "an integer >= 0"),
    ("num_train_timesteps", 0, "an integer >= 1"),
    ("clip_sample_range", 0, "a number > 0"),
    ("beta_end", "0.02", "a number"),
    ("predict_epsilon", False, "prediction_type"),
    ("use_karras_sigmas", True, "not a DDPMScheduler setting"),
])
def test_scheduler_settings_diffexp_does_not_implement_are_refused(tmp_path: Path, key: str, value: Any,
                                                                   allowed: str) -> None:
    message = refusal(folder_with(tmp_path, **{key: value}))
    assert f"{key}={value!r}" in message and allowed in message, message


def test_trained_betas_must_match_num_train_timesteps(tmp_path: Path) -> None:
    message = refusal(folder_with(tmp_path, trained_betas=[0.01] * 10))
    assert "trained_betas has 10 values" in message and "num_train_timesteps=1000" in message


def test_every_scheduler_problem_is_listed_at_once_before_any_compute(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(UNet2DModel, "from_pretrained", lambda *a, **k: pytest.fail("the UNet was loaded"))
    message = refusal(folder_with(tmp_path, prediction_type="flow", timestep_spacing="x", thresholding=True))
    assert "prediction_type='flow'" in message and "timestep_spacing='x'" in message and "thresholding" in message


def test_the_constructor_refuses_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"prediction_type='flow'[\s\S]*thresholding=True"):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(prediction_type="flow", thresholding=True))


def test_default_and_shipped_schedules_are_accepted(tmp_path: Path) -> None:
    for kwargs in ({}, {"beta_schedule": "squaredcos_cap_v2"}, {"beta_schedule": "scaled_linear"},
                   {"timestep_spacing": "trailing", "steps_offset": 1}, {"prediction_type": "v_prediction"}):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(**kwargs))
    model = load_pretrained(str(folder_with(tmp_path, tensor_format="pt")))  # an old diffusers key, harmless
    assert model.problems() == []


def unet_with_down_blocks(n: int, sample_size: int) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(4,) * n, down_block_types=("DownBlock2D",) * n,
                       up_block_types=("UpBlock2D",) * n, norm_num_groups=2, attention_head_dim=2)


@pytest.mark.parametrize(("blocks", "size", "downsamplings"), [(2, 9, 1), (4, 4, 3), (4, 12, 3)])
def test_sample_size_the_unet_cannot_downsample_is_a_model_problem(tmp_path: Path, blocks: int, size: int,
                                                                  downsamplings: int) -> None:
    unet = tiny_unet(size, 1) if blocks == 2 else unet_with_down_blocks(blocks, size)
    x = torch.randn(1, 1, size, size)
    with pytest.raises(RuntimeError):  # what sampling would hit
        unet(x, torch.tensor([1]))
    model = load_pretrained(str(folder_with(tmp_path, unet=unet)))
    (problem,) = model.problems()
    step = 2 ** downsamplings
    assert f"sample_size={size}" in problem and f"{downsamplings} down-sampling" in problem
    assert f"multiples of {step}" in problem and f"{step}, {2 * step}, {3 * step}" in problem


@pytest.mark.parametrize(("blocks", "size"), [(2, 10), (4, 8), (4, 16)])
def test_sample_sizes_the_unet_can_downsample_pass(blocks: int, size: int) -> None:
    unet = tiny_unet(size, 1) if blocks == 2 else unet_with_down_blocks(blocks, size)
    model = DiffusionModel(unet, DDPMScheduler())
    assert model.problems() == []
    with torch.no_grad():
        assert model.eps(torch.randn(1, 1, size, size), 5).shape == (1, 1, size, size)


def test_sample_size_refusal_through_the_cli(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, sample_size=9)
    out = tmp_path / "out"
    proc = cli(["model=pretrained", f"model.pretrained={folder}", "task=generate", "sampler=ddpm", "data=synthetic",
                "logger=none", "num_images=1", "batch_size=1", "sampler.num_steps=2", f"hydra.run.dir={out}"],
               timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and sum(line.startswith("Error: ") for line in proc.stderr.splitlines()) == 1
    assert "sample_size=9" in proc.stderr and "down-sampling" in proc.stderr and "multiples of 2" in proc.stderr
