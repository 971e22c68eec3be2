"""The training entrypoint: exact resume, diffusers export with a model card, loadable by run()."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import load_file

from diffexp.errors import ConfigError
from diffexp.models.diffusion import load_pretrained
from diffexp.training.ddpm import train, train_device
from conftest import CONF

TINY_UNET = [
    "data.size=8", "data.channels=1", "unet.block_out_channels=[8,16]", "unet.norm_num_groups=4",
    "unet.attention_head_dim=8", "unet.down_block_types=[DownBlock2D,AttnDownBlock2D]",
    "unet.up_block_types=[AttnUpBlock2D,UpBlock2D]", "batch_size=4", "steps=6", "warmup_steps=2",
    "checkpoint_every=100", "sample_every=100", "num_card_samples=4", "card_sample_steps=3", "wandb.mode=offline",
]


def _cfg(data: Path, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"data.path={data}", f"export_dir={out}/model", *TINY_UNET, *extra])


def _images(folder: Path) -> Path:
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        arr = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def test_interrupted_training_resumes_exactly(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    straight = train(_cfg(data, tmp_path / "a"))
    stopped = train(_cfg(data, tmp_path / "b", "stop_at=3"))
    assert stopped == {"steps": 3} and not (tmp_path / "b" / "model").exists()
    resumed = train(_cfg(data, tmp_path / "b", "resume=true"))
    # one W&B run per output directory: the resumed session continues the stored run
    sessions = sorted((tmp_path / "b" / "wandb").glob("offline-run-*"))
    stored = (tmp_path / "b" / ".wandb_run_id").read_text().strip()
    assert len(sessions) == 2 and {next(d.glob("run-*.wandb")).stem[4:] for d in sessions} == {stored}
    a = load_file(tmp_path / "a" / "model" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert resumed["final_loss"] == straight["final_loss"]


def test_export_is_a_loadable_diffusers_folder_with_a_card(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    info = train(_cfg(data, tmp_path / "run"))
    export = tmp_path / "run" / "model"
    card = (export / "README.md").read_text()
    assert "CC BY-SA 3.0" in card and f"{info['params']:,} parameters" in card and "6 steps of batch 4" in card
    assert (export / "samples.png").is_file()
    model = load_pretrained(str(export))
    assert model.image_shape == (1, 8, 8) and model.num_train_timesteps == 1000


def test_device_and_dtype_options(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    cfg = _cfg(data, tmp_path / "x")
    assert cfg.device == "auto" and cfg.dtype == "float32"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert train_device(cfg) == (torch.device(expected), torch.float32)  # a GPU when there is one
    assert train_device(_cfg(data, tmp_path / "x", "device=cpu", "dtype=bfloat16")) == (torch.device("cpu"),
                                                                                        torch.bfloat16)
    with pytest.raises(ConfigError, match="dtype='float16' is invalid: allowed float32, bfloat16"):
        train_device(_cfg(data, tmp_path / "x", "dtype=float16"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda' but CUDA is not available"):
            train_device(_cfg(data, tmp_path / "x", "device=cuda"))


def test_bfloat16_training_runs_and_stays_close_to_float32(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    full = train(_cfg(data, tmp_path / "f32", "device=cpu"))
    half = train(_cfg(data, tmp_path / "bf16", "device=cpu", "dtype=bfloat16"))
    assert torch.isfinite(torch.tensor(half["final_loss"]))
    assert half["final_loss"] != full["final_loss"]  # the forward pass really ran in bfloat16
    assert abs(half["final_loss"] - full["final_loss"]) < 0.1 * full["final_loss"]


def test_settings_that_would_make_a_wrong_model_are_refused_before_training(tmp_path: Path) -> None:
    """A size the UNet cannot down-sample (9 px, one down-sampling), an objective this loop does not train, and a
    schedule diffexp cannot sample: all listed at once, before any step (no checkpoint is written)."""
    data = _images(tmp_path / "data")
    cfg = _cfg(data, tmp_path / "run", "data.size=9", "scheduler.prediction_type=sample",
               "+scheduler.rescale_betas_zero_snr=true")
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert "sample_size=9" in message and "multiples of 2" in message
    assert "prediction_type='sample' is not trained here; allowed: 'epsilon'" in message
    assert "rescale_betas_zero_snr=True" in message and "zero terminal SNR" in message
    assert not (tmp_path / "run" / "checkpoints").exists()
