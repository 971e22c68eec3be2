"""Files that would need unpickling code (a crafted training checkpoint, ADM .pt, a pickled diffusers .bin) are
refused before any of their code runs, with a message that says so and how to go on, never torch's advice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir
from PIL import Image

import diffexp.models.adm as convert_adm
from diffexp.errors import ConfigError, UnsafeFileError
from diffexp.models.adm import ADMArchitecture, load_checkpoint
from diffexp.models.diffusion import load_pretrained, tiny_unet
from diffexp.training.ddpm import train
from conftest import CONF, ROOT, cli

TORCH_ADVICE = "weights_only=False"
TINY_TRAIN = [
    "data.size=8", "data.channels=1", "unet.block_out_channels=[8,16]", "unet.norm_num_groups=4",
    "unet.attention_head_dim=8", "unet.down_block_types=[DownBlock2D,AttnDownBlock2D]",
    "unet.up_block_types=[AttnUpBlock2D,UpBlock2D]", "batch_size=4", "steps=6", "warmup_steps=2",
    "checkpoint_every=100", "sample_every=100", "num_card_samples=4", "card_sample_steps=3", "wandb.mode=offline",
]


class Payload:
    """Unpickling this object runs ``exec`` (it would create ``marker``): what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def crafted(path: Path, marker: Path, **tensors: torch.Tensor) -> Path:
    """A torch file holding tensors and a payload that would create ``marker`` if unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**tensors, "payload": Payload(marker)}, path)
    return path


def assert_refused(err: BaseException, path: Path, marker: Path) -> str:
    message = str(err)
    assert isinstance(err, UnsafeFileError) and isinstance(err, ConfigError)  # run.py: one message, exit 2
    assert str(path) in message and "refused" in message and "no code from it was run" in message
    assert "unpickling" in message
    assert TORCH_ADVICE not in message and "weights_only" not in message
    assert not marker.exists()
    return message


def _images(folder: Path) -> Path:
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        Image.fromarray((torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return folder


def _train_cfg(data: Path, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"data.path={data}", f"export_dir={out}/model", *TINY_TRAIN, *extra])


def test_crafted_training_checkpoint_is_refused_on_resume_without_running_it(tmp_path: Path) -> None:
    data, marker = _images(tmp_path / "data"), tmp_path / "marker"
    ckpt = crafted(tmp_path / "run" / "checkpoints" / "last.pt", marker, step=torch.tensor(3))
    with pytest.raises(ConfigError) as info:
        train(_train_cfg(data, tmp_path / "run", "resume=true"))
    message = assert_refused(info.value, ckpt, marker)
    assert "fresh" in message and "delete" in message  # what to do


def test_unreadable_training_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    for junk in (b"not a torch file", b"hello world"):  # torch's reader fails differently on these two
        ckpt.write_bytes(junk)
        with pytest.raises(ConfigError, match="corrupt") as info:
            train(_train_cfg(data, tmp_path / "run", "resume=true"))
        assert str(ckpt) in str(info.value) and TORCH_ADVICE not in str(info.value)
    # a tensors-only file that is not a training checkpoint is named as such
    torch.save({"unet": {}}, ckpt)
    with pytest.raises(ConfigError, match="not a diffexp training checkpoint"):
        train(_train_cfg(data, tmp_path / "run", "resume=true"))


def test_training_checkpoint_holds_tensors_and_plain_values_only(tmp_path: Path) -> None:
    """What training writes loads with torch's tensors-only loader (the exact resume is in test_train)."""
    data = _images(tmp_path / "data")
    assert train(_train_cfg(data, tmp_path / "run", "stop_at=3")) == {"steps": 3}
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and all(isinstance(v, float) for v in state["losses"])
    assert {k: v.dtype for k, v in state["rng"].items()} == dict.fromkeys(("data", "noise", "torch"), torch.uint8)


def test_crafted_training_checkpoint_through_the_training_cli(tmp_path: Path) -> None:
    data, marker = _images(tmp_path / "data"), tmp_path / "marker"
    crafted(tmp_path / "run" / "checkpoints" / "last.pt", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "diffexp.training.ddpm", f"data.path={data}", *TINY_TRAIN, "resume=true",
         f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "UnsafeFileError" in proc.stderr and TORCH_ADVICE not in proc.stderr
    assert not marker.exists()


def test_crafted_adm_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    ckpt = crafted(tmp_path / "adm.pt", marker, weight=torch.zeros(2))
    with pytest.raises(ConfigError) as info:
        load_checkpoint(ckpt)
    message = assert_refused(info.value, ckpt, marker)
    assert "safetensors" in message  # how to convert it
    with pytest.raises(ConfigError) as info:
        convert_adm.load_adm(str(ckpt), cache_dir=str(tmp_path / "cache"))
    assert_refused(info.value, ckpt, marker)


def test_adm_checkpoint_as_safetensors_converts(tmp_path: Path) -> None:
    """The refusal's advice works: a tensors-only safetensors file is read like the .pt."""
    from safetensors.torch import save_file

    arch = ADMArchitecture(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), num_head_channels=16)
    unet = convert_adm._meta_unet(arch)
    rules = convert_adm.conversion_rules(arch, {k: tuple(p.shape) for k, p in unet.state_dict().items()})
    g = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=g) for key, (_, _, shape) in rules.items()}
    torch.save(state, tmp_path / "adm.pt")
    save_file(state, str(tmp_path / "adm.safetensors"))
    from_pt = convert_adm.convert(tmp_path / "adm.pt", tmp_path / "a", arch)
    from_st = convert_adm.convert(tmp_path / "adm.safetensors", tmp_path / "b", arch)
    a = json.loads((from_pt / "config.json").read_text())
    assert a == json.loads((from_st / "config.json").read_text())
    assert (from_pt / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (from_st / "diffusion_pytorch_model.safetensors").read_bytes()


def _bin_folder(folder: Path) -> Path:
    tiny_unet(8, 1).save_pretrained(folder, safe_serialization=False)
    DDPMScheduler().save_pretrained(folder)
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    assert not (folder / "diffusion_pytorch_model.safetensors").exists()
    return folder


def test_diffusers_folder_with_a_tensors_only_bin_still_loads(tmp_path: Path) -> None:
    model = load_pretrained(str(_bin_folder(tmp_path / "model")))
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, t), tiny_unet(8, 1)(x, t).sample)


def test_diffusers_folder_with_a_pickled_bin_is_refused_without_running_it(tmp_path: Path) -> None:
    folder, marker = _bin_folder(tmp_path / "model"), tmp_path / "marker"
    state = torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True)
    crafted(folder / "diffusion_pytorch_model.bin", marker, **state)
    with pytest.raises(ConfigError) as info:
        load_pretrained(str(folder))
    message = assert_refused(info.value, folder / "diffusion_pytorch_model.bin", marker)
    assert "safetensors" in message  # how to convert it


def test_pickled_bin_through_the_cli_is_one_clean_message(tmp_path: Path) -> None:
    folder, marker = _bin_folder(tmp_path / "model"), tmp_path / "marker"
    crafted(folder / "diffusion_pytorch_model.bin", marker)
    proc = cli(["model=pretrained", f"model.pretrained={folder}", "data=synthetic", "logger=none", "num_images=1",
                "batch_size=1", "sampler.num_steps=2", f"hydra.run.dir={tmp_path / 'out'}"], timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and sum(line.startswith("Error: ") for line in proc.stderr.splitlines()) == 1
    assert "UnsafeFileError" in proc.stderr and TORCH_ADVICE not in proc.stderr
    assert not marker.exists()
