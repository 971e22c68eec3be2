"""The model wrapper (ε, x̂0, score for every prediction type) and loading from folders and the hub."""

import socket
import time
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from conftest import CONF, cli
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from huggingface_hub.errors import LocalEntryNotFoundError
from hydra.utils import instantiate
from omegaconf import OmegaConf

import diffexp.models.diffusion
from diffexp.errors import ConfigError
from diffexp.models.diffusion import DiffusionModel, load_pretrained, tiny_unet

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


def test_image_shape_must_agree_with_the_unet_config() -> None:
    assert DiffusionModel(tiny_unet(8, 1), DDPMScheduler(), image_shape=(1, 8, 8)).image_shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"image_shape=\(3, 8, 8\) disagrees with the UNet config's \(1, 8, 8\)"):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(), image_shape=(3, 8, 8))


@pytest.mark.parametrize("flag", ["thresholding", "rescale_betas_zero_snr"])
def test_scheduler_options_diffexp_does_not_implement_are_refused(flag: str) -> None:
    with pytest.raises(ValueError, match=f"scheduler {flag}=True is not supported"):
        DiffusionModel(tiny_unet(8, 1), DDPMScheduler(**{flag: True}))


def test_folder_with_another_scheduler_class_is_not_read_as_a_ddpm(tmp_path: Path) -> None:
    tiny_unet(8, 1).save_pretrained(tmp_path)
    DDIMScheduler().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="_class_name='DDIMScheduler'; allowed: 'DDPMScheduler'"):
        load_pretrained(str(tmp_path))


def test_folder_without_weights_names_the_folder(tmp_path: Path) -> None:
    DDPMScheduler().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_pretrained(str(tmp_path))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every DNS lookup or socket connection in this process fails, and is recorded: a test that would
    reach the network fails instead of downloading."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network access is disabled in the tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def fake_hub(monkeypatch: pytest.MonkeyPatch, *, cached: Path | None = None, network_error: bool = False) -> list[bool]:
    """Replace ``huggingface_hub.snapshot_download``: its cache holds ``cached`` (or nothing); a download
    raises a network error when ``network_error``, else fails the test. Returns each call's local_files_only."""
    calls: list[bool] = []

    def snapshot_download(repo_id: str, *, local_files_only: bool = False, **kwargs: Any) -> str:
        calls.append(local_files_only)
        if local_files_only:
            if cached is None:
                raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
            return str(cached)
        if network_error:
            raise ConnectionError("hub unreachable (test double)")
        pytest.fail(f"a download of {repo_id} was started")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(diffexp.models.diffusion, "snapshot_download", snapshot_download, raising=False)
    return calls


HUB_ERROR = r"google/ddpm-cifar10-32.*no network/hub access.*model.pretrained=DIR"


def test_hub_id_with_hub_offline_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    """HF_HUB_OFFLINE=1 (conftest sets it for every test) and not cached: an error naming the id, no connection."""
    calls = fake_hub(monkeypatch)
    with pytest.raises(RuntimeError, match=HUB_ERROR):
        load_pretrained("google/ddpm-cifar10-32")
    assert calls == [True] and no_network == []


def test_hub_id_with_unreachable_hub_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    """Not offline, not cached, and the hub does not answer (connections refused here): no download is tried."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = fake_hub(monkeypatch)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=HUB_ERROR):
        load_pretrained("google/ddpm-cifar10-32")
    assert calls == [True] and no_network, "the reachability check should have tried (and failed) to connect"
    assert time.monotonic() - start < 30  # a guard against retry hangs, not a benchmark


def test_hub_error_during_download_is_named(monkeypatch: pytest.MonkeyPatch, no_network: list[str]) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(diffexp.models.diffusion, "_hub_reachable", lambda *args, **kwargs: True)
    calls = fake_hub(monkeypatch, network_error=True)
    with pytest.raises(RuntimeError, match=HUB_ERROR.replace("access", "access; ConnectionError")):
        load_pretrained("google/ddpm-cifar10-32")
    assert calls == [True, False]


def test_cached_hub_model_loads_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    tiny_unet(8, 1, seed=4).save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    calls = fake_hub(monkeypatch, cached=tmp_path)
    model = load_pretrained("google/ddpm-cifar10-32")
    assert model.name == "google/ddpm-cifar10-32" and model.image_shape == (1, 8, 8)
    assert calls == [True] and no_network == []


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_architecture_has_the_published_size(name: str) -> None:
    """Each hub model's architecture, built from its config alone on the meta device (no memory, no init)."""
    _, arch, params, _ = HUB[name]
    with torch.device("meta"):
        unet = UNet2DModel.from_config(arch)
    assert abs(sum(p.numel() for p in unet.parameters()) - params) < 0.1e6


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_config_loads_through_the_pretrained_config(tmp_path: Path, name: str) -> None:
    """conf/model/<name>.yaml names the hub id, and a folder with its architecture (channels scaled down 16×
    to keep the files small) and scheduler loads through conf/model/pretrained.yaml."""
    repo, arch, _, sched_kwargs = HUB[name]
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    assert cfg.pretrained == repo
    small = {**arch, "block_out_channels": tuple(c // 16 for c in arch["block_out_channels"]), "norm_num_groups": 8}
    UNet2DModel(**small).save_pretrained(tmp_path)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, **sched_kwargs).save_pretrained(
        tmp_path
    )
    base = OmegaConf.load(CONF / "model" / "pretrained.yaml")
    model = instantiate(OmegaConf.merge(base, {"pretrained": str(tmp_path), "name": name}))
    assert model.image_shape == (3, arch["sample_size"], arch["sample_size"]) and model.name == name
    assert model.variance_type == sched_kwargs["variance_type"] and model.clip_sample


def test_cli_with_unreachable_hub_model_names_the_id(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 and an empty HF_HOME (conftest) reach the subprocess: it fails fast, offline."""
    result = cli(["model=ddpm_cifar10", "logger=none", "task=generate", "sampler=ddpm", f"hydra.run.dir={tmp_path}"],
                 timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]  # a user error (README): exactly 2
    assert "google/ddpm-cifar10-32" in result.stderr and "no network/hub access" in result.stderr


def test_prefetch_lists_every_hub_model() -> None:
    from diffexp.prefetch import hub_ids

    assert sorted(hub_ids()) == sorted(repo for repo, *_ in HUB.values())
