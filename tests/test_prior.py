"""The ``Prior`` protocol: both priors implement it, samplers use nothing else, ``prepare`` and ``problems``."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffexp.models.diffusion import DiffusionModel, tiny_model, tiny_unet
from diffexp.models.gaussian import gaussian_oracle
from diffexp.models.prior import Prior

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {name for name in vars(Prior) if not name.startswith("_")}
PRIORS: dict[str, Callable[[], DiffusionModel]] = {
    "tiny": lambda: tiny_model(8, 1),
    "oracle": lambda: gaussian_oracle(torch.zeros(1, 8, 8), 0.5),
}


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_priors_implement_every_member_of_the_protocol(kind: str) -> None:
    model = PRIORS[kind]()
    assert isinstance(model, Prior)
    assert (model.image_shape, model.channels, model.sample_size) == ((1, 8, 8), 1, 8)
    assert model.num_train_timesteps == 1000 and model.alphas_cumprod.shape == (1000,)
    assert isinstance(model.name, str) and model.variance_type == "fixed_small"
    assert isinstance(model.clip_sample, bool) and model.clip_sample_range == 1.0
    x, t = torch.randn(2, *model.image_shape), torch.tensor([10, 500])
    with torch.no_grad():
        eps, v = model.eps_v(x, t)
        outputs = [eps, model.eps(x, t), model.x0(x, t), model.x0_from_eps(x, t, eps), model.score(x, 7)]
    assert v is None and all(out.shape == x.shape and out.dtype == x.dtype for out in outputs)
    assert model.alpha_bar(t, x).shape == (2, 1, 1, 1) and model.problems() == []


def test_an_object_missing_a_member_is_not_a_prior() -> None:
    class NoProblems(DiffusionModel):
        problems = None  # type: ignore[assignment]

    assert not isinstance(NoProblems(tiny_unet(8, 1), DDPMScheduler()), Prior)
    assert {"prepare", "problems", "eps_v", "alphas_cumprod", "image_shape"} <= MEMBERS


def test_samplers_and_the_solver_use_only_members_of_the_protocol() -> None:
    """Every ``model.<member>`` read in diffexp/samplers/ and diffexp/solve.py is declared by ``Prior``."""
    files = [*sorted((ROOT / "diffexp" / "samplers").glob("*.py")), ROOT / "diffexp" / "solve.py"]
    used = {name for f in files for name in re.findall(r"\bmodel\.([A-Za-z_]\w*)", f.read_text())}
    assert used and used <= MEMBERS, sorted(used - MEMBERS)


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_prepare_with_bfloat16_and_channels_last(kind: str) -> None:
    model = PRIORS[kind]()
    prepared = model.prepare(device=torch.device("cpu"), dtype=torch.bfloat16, channels_last=True, compile=False)
    assert prepared is model and model.autocast_dtype == torch.bfloat16
    assert model.alphas_cumprod.dtype == torch.float64
    four_d = [p for p in [*model.unet.parameters(), *model.unet.buffers()] if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    seen: list[torch.dtype] = []
    model.unet.register_forward_hook(lambda m, i, out: seen.append(out.sample.dtype))
    x = torch.randn(2, *model.image_shape)
    with torch.no_grad():
        assert model.eps(x, 10).dtype == torch.float32  # operators and samplers stay float32
    if kind == "tiny":  # the oracle computes in float64 whatever the autocast
        assert seen == [torch.bfloat16] and four_d
        assert not all(p.is_contiguous() for p in four_d)  # channels_last, not the default layout
    model.prepare(device=torch.device("cpu"), dtype=torch.float32, channels_last=False, compile=False)
    assert model.autocast_dtype is None
    with pytest.raises(ValueError, match="dtype=torch.float64 is not supported"):
        model.prepare(device=torch.device("cpu"), dtype=torch.float64, channels_last=False, compile=False)


def test_prepare_with_compile_wraps_the_network_and_keeps_the_shape() -> None:
    model = tiny_model(8, 1).prepare(device=torch.device("cpu"), dtype=torch.float32, channels_last=False,
                                     compile=True)
    assert isinstance(model.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert model.image_shape == (1, 8, 8) and model.problems() == []


def test_problems_names_a_non_square_model() -> None:
    unet = UNet2DModel.from_config({**tiny_unet(8, 1).config, "sample_size": (8, 16)})
    model = DiffusionModel(unet, DDPMScheduler())
    assert model.image_shape == (1, 8, 16)
    assert model.problems() == ["model: sample_size=[8, 16] is not square; diffexp supports square images only"]
