"""The training entrypoint: exact resume, diffusers export with a model card, loadable by run()."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import load_file

from diffexp.model import load_pretrained
from diffexp.train import train
from tests.conftest import CONF

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
