"""The model wrapper (ε, x̂0, score for every prediction type) and loading from folders and the hub."""

import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffexp.model import DiffusionModel, load_pretrained, tiny_unet
from tests.conftest import CONF, cli

# Architectures of the hub checkpoints (diffusers configs of the google/ddpm-* repositories).
CIFAR10 = dict(
    sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)
CELEBA256 = dict(
    sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)
HUB = {
    "ddpm_cifar10": ("google/ddpm-cifar10-32", CIFAR10, 35.7e6, dict(variance_type="fixed_large")),
    "ddpm_celebahq": ("google/ddpm-ema-celebahq-256", CELEBA256, 113.7e6, dict(variance_type="fixed_small")),
    "ddpm_church": ("google/ddpm-ema-church-256", CELEBA256, 113.7e6, dict(variance_type="fixed_small")),
    "ddpm_cat": ("google/ddpm-cat-256", CELEBA256, 113.7e6, dict(variance_type="fixed_small")),
}


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_x0_eps_score_for_every_prediction_type(prediction_type: str) -> None:
    unet = tiny_unet(8, 1)
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    model = DiffusionModel(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    with torch.no_grad():
        out = unet(x, t).sample
        reference_x0 = sched.step(out[:1], 500, x[:1]).pred_original_sample  # diffusers' own conversion
        x0, eps, score = model.x0(x, t), model.eps(x, t), model.score(x, t)
    torch.testing.assert_close(x0[:1], reference_x0, atol=1e-5, rtol=1e-5)
    ab = sched.alphas_cumprod[500]
    torch.testing.assert_close(x, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score, -eps / (1 - ab).sqrt())


def test_unknown_prediction_or_variance_type_is_refused() -> None:
    with pytest.raises(ValueError, match="prediction_type='flow'"):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(prediction_type="flow"))
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(variance_type="learned_range"))


@pytest.mark.parametrize("layout", ["root", "subfolders"])
def test_load_local_folder_in_both_layouts(tmp_path: Path, layout: str) -> None:
    unet = tiny_unet(8, 1, seed=3)
    sched = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", variance_type="fixed_large",
                          clip_sample=False)
    unet.save_pretrained(tmp_path / ("unet" if layout == "subfolders" else ""))
    sched.save_pretrained(tmp_path / ("scheduler" if layout == "subfolders" else ""))
    model = load_pretrained(str(tmp_path))
    assert model.num_train_timesteps == 500 and model.variance_type == "fixed_large" and not model.clip_sample
    torch.testing.assert_close(model.alphas_cumprod.float(), sched.alphas_cumprod)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, 10), unet(x, torch.tensor([10])).sample)


def test_folder_without_weights_names_the_folder(tmp_path: Path) -> None:
    DDPMScheduler().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_pretrained(str(tmp_path))


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"google/ddpm-cifar10-32.*no network/hub access.*model.pretrained=DIR"):
        load_pretrained("google/ddpm-cifar10-32")
    assert time.monotonic() - start < 60  # a guard against retry hangs, not a benchmark


@pytest.mark.parametrize("name", ["ddpm_cifar10", pytest.param("ddpm_celebahq", marks=pytest.mark.slow),
                                  pytest.param("ddpm_church", marks=pytest.mark.slow),
                                  pytest.param("ddpm_cat", marks=pytest.mark.slow)])
def test_hub_config_architecture_round_trips(tmp_path: Path, name: str) -> None:
    repo, arch, params, sched_kwargs = HUB[name]
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    assert cfg.pretrained == repo
    unet = UNet2DModel(**arch)
    assert abs(sum(p.numel() for p in unet.parameters()) - params) < 0.1e6
    unet.save_pretrained(tmp_path)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, **sched_kwargs).save_pretrained(tmp_path)
    base = OmegaConf.load(CONF / "model" / "pretrained.yaml")
    model = instantiate(OmegaConf.merge(base, {"pretrained": str(tmp_path), "name": name}))
    assert model.image_shape == (3, arch["sample_size"], arch["sample_size"]) and model.name == name
    assert model.variance_type == sched_kwargs["variance_type"] and model.clip_sample


def test_cli_with_unreachable_hub_model_names_the_id(tmp_path: Path) -> None:
    result = cli(["model=ddpm_cifar10", "logger=none", "task=generate", "sampler=ddpm", f"hydra.run.dir={tmp_path}"],
                 timeout=120)
    assert result.returncode != 0
    assert "google/ddpm-cifar10-32" in result.stderr and "no network/hub access" in result.stderr


def test_prefetch_lists_every_hub_model() -> None:
    from diffexp.prefetch import hub_ids

    assert sorted(hub_ids()) == sorted(repo for repo, *_ in HUB.values())
