"""ADM (guided-diffusion) checkpoints: conversion to diffusers against deepinv's ADM network, the learned-range
variance (improved DDPM eq. 15) against diffusers' DDPMScheduler, and the model wrapper's device handling."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from deepinv.models.diffunet import AttentionBlock, DiffUNet, ResBlock, TimestepEmbedSequential, normalization
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

import diffexp.models.adm as convert_adm
import diffexp.models.diffusion as model_module
from diffexp.models.adm import ADM_SCHEDULER, PRESETS, ADMArchitecture, CheckpointMismatchError, convert_state_dict
from diffexp.errors import ConfigError
from diffexp.models.diffusion import DiffusionModel, load_folder
from diffexp.operators.identity import Identity
from diffexp.samplers.base import ancestral_step, grid_alphas
from diffexp.samplers.ddpm import ddpm
from diffexp.samplers.dps import dps
from diffexp.models.schedule import respaced_timesteps
from diffexp.validate import validate
from conftest import CONF, cli, make_cfg

# Reduced-width ADM networks for the default suite: several heads per attention layer, 1 and 2 res blocks,
# attention at one or two levels, 3 and 1 image channels.
SMALL = {
    "two_blocks": ADMArchitecture(image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                  attention_resolutions=(16, 8), num_head_channels=16),
    "one_block_gray": ADMArchitecture(image_size=32, in_channels=1, out_channels=2, model_channels=32,
                                      channel_mult=(1, 1, 2), num_res_blocks=1, attention_resolutions=(32,),
                                      num_head_channels=8),
}


def reference_adm(arch: ADMArchitecture) -> DiffUNet:
    """guided-diffusion's ``UNetModel`` (resblock_updown, use_scale_shift_norm, num_head_channels) built from
    deepinv's ADM blocks, at any width; ``forward_diffusion`` is deepinv's own. Its ``DiffUNet`` hard-codes the
    two full-size configurations, which the slow tests use directly."""
    net = DiffUNet.__new__(DiffUNet)
    nn.Module.__init__(net)
    mc, emb = arch.model_channels, 4 * arch.model_channels
    net.num_classes, net.model_channels, net.dtype = None, mc, torch.float32
    net.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))

    def res(cin: int, cout: int, **updown: bool) -> ResBlock:
        return ResBlock(cin, emb, 0.0, out_channels=cout, use_scale_shift_norm=True, **updown)

    def attn(ch: int) -> AttentionBlock:
        return AttentionBlock(ch, num_head_channels=arch.num_head_channels)

    ch = mc * arch.channel_mult[0]
    blocks, chans = [TimestepEmbedSequential(nn.Conv2d(arch.in_channels, ch, 3, padding=1))], [ch]
    for level, mult in enumerate(arch.channel_mult):
        for _ in range(arch.num_res_blocks):
            layers = [res(ch, mult * mc)]
            ch = mult * mc
            if arch.attention_at(level):
                layers.append(attn(ch))
            blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level < len(arch.channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(res(ch, ch, down=True)))
            chans.append(ch)
    net.input_blocks = nn.ModuleList(blocks)
    net.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
    blocks = []
    for level, mult in reversed(list(enumerate(arch.channel_mult))):
        for i in range(arch.num_res_blocks + 1):
            layers = [res(ch + chans.pop(), mult * mc)]
            ch = mult * mc
            if arch.attention_at(level):
                layers.append(attn(ch))
            if level and i == arch.num_res_blocks:
                layers.append(res(ch, ch, up=True))
            blocks.append(TimestepEmbedSequential(*layers))
    net.output_blocks = nn.ModuleList(blocks)
    net.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, arch.out_channels, 3, padding=1))
    return net.eval()


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random: ADM zero-initialises its output convolutions (a fresh network outputs 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            scale = p[0].numel() ** -0.5 if p.ndim > 1 else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net


def adm_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A guided-diffusion checkpoint's content: the state dict without deepinv's own ``*alphas_cumprod`` buffers."""
    return {k: v for k, v in net.state_dict().items() if not k.endswith("alphas_cumprod")}


def assert_same_network(reference: DiffUNet, unet: UNet2DModel, channels: int, size: int, seed: int = 1) -> None:
    """Both networks agree to 1e-5 relative (per output channel, float32) on random inputs and timesteps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    with torch.no_grad():
        expected = reference.forward_diffusion(x, t)
        got = unet(x, t).sample
    assert got.shape == expected.shape == (2, 2 * channels, size, size)
    rms = expected.flatten(2).pow(2).mean(dim=2).sqrt()
    assert (rms > 1e-3).all(), f"an output channel is ~0, the comparison would be trivial: {rms}"
    rel = ((got - expected).flatten(2).pow(2).mean(dim=2).sqrt() / rms)
    assert rel.max() < 1e-5, rel
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reduced_adm_converts_to_the_same_network(name: str) -> None:
    arch = SMALL[name]
    reference = randomise(reference_adm(arch))
    unet = convert_state_dict(adm_state(reference), arch)
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in reference.parameters())
    assert_same_network(reference, unet, arch.in_channels, arch.image_size)


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "large", "params", "size"), [
    ("ffhq256", False, 93_563_910, 256), ("imagenet256", True, 552_814_086, 64),
])
def test_full_size_deepinv_diffunet_converts_to_the_same_network(preset: str, large: bool, params: int,
                                                                 size: int) -> None:
    """deepinv's DiffUNet loads ffhq_10m.pt (small) and the ImageNet 256 checkpoint (large) as they are.
    (ImageNet at 64 px to keep it short: the weights and the attention levels are the same at any size.)"""
    reference = randomise(DiffUNet(pretrained=None, large_model=large).eval())  # eval: its dropout is 0.1
    unet = convert_state_dict(adm_state(reference), PRESETS[preset])
    assert sum(p.numel() for p in unet.parameters()) == params
    assert_same_network(reference, unet, 3, size)


@pytest.mark.parametrize(("preset", "large", "params"), [("ffhq256", False, 93_563_910),
                                                      ("imagenet256", True, 552_814_086)])
def test_full_size_presets_take_every_deepinv_parameter_name_and_shape(preset: str, large: bool, params: int) -> None:
    """The default-suite check of the full-size presets: deepinv's DiffUNet (an independent ADM implementation)
    built on the meta device (no memory, no compute) gives every parameter name and shape, and the preset's
    converter takes them all; an attention layout one level off does not fit."""
    with torch.device("meta"):
        reference = DiffUNet(pretrained=None, large_model=large)
    state = adm_state(reference)
    unet = convert_state_dict(state, PRESETS[preset])
    assert sum(p.numel() for p in unet.parameters()) == sum(v.numel() for v in state.values()) == params
    arch = PRESETS[preset]
    shifted = replace(arch, attention_resolutions=tuple(r * 2 for r in arch.attention_resolutions))
    with pytest.raises(CheckpointMismatchError):
        convert_state_dict(state, shifted)


def test_converter_names_the_key_and_shape_that_do_not_fit() -> None:
    arch = SMALL["two_blocks"]
    state = adm_state(reference_adm(arch))
    expected = r"'time_embed.0.weight' has shape \[128, 32\], expected \[512, 128\]"
    with pytest.raises(CheckpointMismatchError, match=expected):
        convert_state_dict(state, PRESETS["ffhq256"])
    bad = dict(state)
    bad["input_blocks.1.0.in_layers.2.weight"] = torch.zeros(32, 32, 1, 1)
    del bad["out.2.bias"]
    bad["label_emb.weight"] = torch.zeros(10, 128)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(bad, arch, label="bad.pt")
    message = str(info.value)
    assert "checkpoint bad.pt does not fit" in message and "1 wrong shapes, 1 missing and 1 unexpected" in message
    assert "'input_blocks.1.0.in_layers.2.weight' has shape [32, 32, 1, 1], expected [32, 32, 3, 3]" in message
    assert "'out.2.bias' is missing" in message and "'label_emb.weight' is unexpected" in message
    assert isinstance(info.value, ConfigError)  # run.py prints it as a user error, without a traceback


def test_cli_converts_with_explicit_flags_and_load_adm_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = SMALL["two_blocks"]
    reference = randomise(reference_adm(arch), seed=4)
    ckpt = tmp_path / "adm.pt"
    torch.save(adm_state(reference), ckpt)
    convert_adm.main([str(ckpt), str(tmp_path / "out"), "--image-size", "32", "--model-channels", "32",
                      "--channel-mult", "1,2,2", "--num-res-blocks", "2", "--attention-resolutions", "16,8",
                      "--num-head-channels", "16"])
    model = load_folder(tmp_path / "out", "adm")
    assert (model.variance_type, model.clip_sample, model.num_train_timesteps) == ("learned_range", True, 1000)
    torch.testing.assert_close(model.scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([321])
    with torch.no_grad():
        expected = reference.forward_diffusion(x, t)
        eps, v = model.eps_v(x, t)
    torch.testing.assert_close(eps, expected[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, (expected[:, 3:] + 1) / 2, rtol=1e-5, atol=1e-5)

    monkeypatch.setitem(PRESETS, "ffhq256", arch)  # a small stand-in for ffhq_10m.pt
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = convert_adm.load_adm(str(ckpt), preset="ffhq256")
    cached = list((tmp_path / "cache" / "diffexp" / "adm").iterdir())
    assert [p.name[:8] for p in cached] == ["ffhq256-"] and (cached[0] / "scheduler_config.json").is_file()
    monkeypatch.setattr(convert_adm, "convert", lambda *a, **k: pytest.fail("converted twice"))
    again = convert_adm.load_adm(str(ckpt), preset="ffhq256")
    from_folder = convert_adm.load_adm(str(tmp_path / "out"))
    with torch.no_grad():
        for m in (first, again, from_folder):
            torch.testing.assert_close(m.eps(x, t), eps)
    with pytest.raises(FileNotFoundError, match="model.checkpoint='nope.pt'"):
        convert_adm.load_adm("nope.pt")


def test_architecture_flags_are_checked() -> None:
    with pytest.raises(ValueError, match="attention_resolutions has 12"):
        ADMArchitecture(attention_resolutions=(12,))
    with pytest.raises(ValueError, match="out_channels=5"):
        ADMArchitecture(out_channels=5)
    assert asdict(PRESETS["imagenet256"])["attention_resolutions"] == (32, 16, 8)


def test_adm_model_config_needs_a_checkpoint(tmp_path: Path) -> None:
    for name in ("adm_ffhq256", "adm_imagenet256"):
        cfg = make_cfg([f"model={name}"], tmp_path)
        with pytest.raises(ConfigError, match=r"model.checkpoint: missing value \(\?\?\?\)"):
            validate(cfg)
    for overlay in sorted(p.stem for p in (CONF / "experiment").glob("dps_paper_*.yaml")):
        cfg = make_cfg([f"experiment={overlay}", "model.checkpoint=ffhq_10m.pt"], tmp_path)
        assert cfg.model.name == "adm_ffhq256" and cfg.model.preset == "ffhq256", overlay
        assert (cfg.sampler.name, cfg.sampler.num_steps, cfg.task.sigma_y) == ("dps", 1000, 0.05), overlay
        validate(cfg)


# ---- learned-range variance (improved DDPM, Nichol & Dhariwal 2021, eq. 15) ----

def learned_unet(seed: int = 0, channels: int = 3) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=channels, out_channels=2 * channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)


@pytest.mark.parametrize("num_steps", [1000, 50])
def test_learned_range_step_matches_diffusers(num_steps: int) -> None:
    """Every step of a full and a respaced chain: diffusers reads the respaced β_t = 1 − ᾱ_t/ᾱ_prev from
    custom timesteps (its own ``set_timesteps(N)`` spacing is "leading", not ours)."""
    sched = DDPMScheduler(**ADM_SCHEDULER)
    grid = respaced_timesteps(1000, num_steps)
    sched.set_timesteps(timesteps=grid.tolist())
    assert torch.equal(sched.timesteps, grid)
    model = SimpleNamespace(variance_type="learned_range", alphas_cumprod=sched.alphas_cumprod.double())
    g = torch.Generator().manual_seed(0)
    shape = (1, 3, 6, 6)
    ab_all, ab_prev_all = grid_alphas(model, grid, torch.zeros(shape))
    for i, t in enumerate(grid):
        x, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        var_out = torch.rand(shape, generator=g) * 2 - 1
        ab = sched.alphas_cumprod[t]
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        ours = ancestral_step(model, x, x0, ab_all[i], ab_prev_all[i], [torch.Generator().manual_seed(i)],
                              last=i + 1 == len(grid), v=(var_out + 1) / 2)
        ref = sched.step(torch.cat([eps, var_out], 1), t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_learned_range_interpolates_between_fixed_small_and_fixed_large() -> None:
    ac = DDPMScheduler().alphas_cumprod
    grid = respaced_timesteps(1000, 20)
    x, x0 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ab, ab_prev = grid_alphas(SimpleNamespace(alphas_cumprod=ac.double()), grid, x)

    def step(variance_type: str, v: torch.Tensor | None = None) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return ancestral_step(SimpleNamespace(variance_type=variance_type), x, x0, ab[5], ab_prev[5], gens,
                              last=False, v=v)

    torch.testing.assert_close(step("learned_range", torch.zeros_like(x)), step("fixed_small"))
    torch.testing.assert_close(step("learned_range", torch.ones_like(x)), step("fixed_large"))
    assert not torch.allclose(step("fixed_small"), step("fixed_large"))
    with pytest.raises(ValueError, match="learned_range model needs v"):
        step("learned_range")


def test_eps_v_splits_the_variance_channels_and_autocasts_only_the_unet() -> None:
    unet = learned_unet()
    model = DiffusionModel(unet, DDPMScheduler(**ADM_SCHEDULER))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        out = unet(x, t).sample
        eps, v = model.eps_v(x, t)
        assert torch.equal(eps, out[:, :3]) and torch.equal(v, (out[:, 3:] + 1) / 2)
        assert torch.equal(model.eps(x, t), eps)
        model.autocast_dtype = torch.bfloat16
        eps16, v16 = model.eps_v(x, t)
    assert eps16.dtype == v16.dtype == torch.float32 and not torch.equal(eps16, eps)
    torch.testing.assert_close(eps16, eps, rtol=0.1, atol=0.05)
    fixed = DiffusionModel(model_module.tiny_unet(8, 3), DDPMScheduler())
    with torch.no_grad():
        assert fixed.eps_v(x, t)[1] is None
    with pytest.raises(ValueError, match="out_channels=3 with in_channels=3 does not fit variance_type='learned_"):
        DiffusionModel(model_module.tiny_unet(8, 3), DDPMScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match="out_channels=6 with in_channels=3 does not fit variance_type='fixed_small'"):
        DiffusionModel(learned_unet(), DDPMScheduler())


def test_ddpm_with_learned_variance_equals_a_diffusers_loop() -> None:
    """Our ancestral sampler on a respaced grid against diffusers' DDPMScheduler(learned_range) stepping the
    same UNet with the same noise stream (batch of one: one generator either way)."""
    unet = learned_unet(seed=3)
    model = DiffusionModel(unet, DDPMScheduler(**ADM_SCHEDULER))
    grid = respaced_timesteps(1000, 25)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = ddpm(model, x, timesteps=grid, generators=[torch.Generator().manual_seed(7)])
    sched = DDPMScheduler(**ADM_SCHEDULER)
    sched.set_timesteps(timesteps=grid.tolist())
    g, ref = torch.Generator().manual_seed(7), x
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(unet(ref, t).sample, t, ref, generator=g).prev_sample
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_dps_uses_the_learned_variance() -> None:
    """With a vanishing ζ, DPS is the ancestral sampler: the same learned-variance chain as ddpm."""
    model = DiffusionModel(learned_unet(seed=5), DDPMScheduler(**ADM_SCHEDULER))
    grid = respaced_timesteps(1000, 10)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    plain = ddpm(model, x, timesteps=grid, generators=gens())
    operator = Identity(image_shape=(3, 8, 8), generators=gens(), sigma_y=0.0)
    guided = dps(model, x, timesteps=grid, generators=gens(), y=torch.zeros_like(x), operator=operator,
                 step_size=1e-12)
    torch.testing.assert_close(guided, plain, rtol=1e-6, atol=1e-6)


# ---- the schedule never goes to a device as float64 (Apple MPS has no float64) ----

def test_schedule_stays_float64_on_cpu_and_float32_on_devices_without_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    model = DiffusionModel(learned_unet(), DDPMScheduler(**ADM_SCHEDULER))
    exact = model.alphas_cumprod.clone()
    assert exact.dtype == torch.float64 and not list(model.buffers())
    model.half().float()  # a buffer would have been rounded to float16 here
    assert torch.equal(model.alphas_cumprod, exact)
    model.to("meta")
    assert model.alphas_cumprod.device.type == "meta" and model.alphas_cumprod.dtype == torch.float64
    assert model.to_empty(device="cpu").alphas_cumprod.dtype == torch.float64
    assert torch.equal(model.alphas_cumprod, exact)
    monkeypatch.setattr(model_module, "NO_FLOAT64_DEVICES", ("meta",))  # stands in for "mps"
    model.to("meta")
    assert model.alphas_cumprod.device.type == "meta" and model.alphas_cumprod.dtype == torch.float32
    x = torch.empty(2, 3, 8, 8, device="meta")
    assert model.alpha_bar(torch.tensor([3, 4], device="meta"), x).shape == (2, 1, 1, 1)


@pytest.mark.slow
def test_dps_paper_experiment_runs_end_to_end_with_an_adm_checkpoint(tmp_path: Path) -> None:
    """The README command with a random-weight FFHQ-architecture .pt (2 steps, 1 synthetic image)."""
    ckpt = tmp_path / "ffhq_10m.pt"
    torch.save(adm_state(randomise(DiffUNet(pretrained=None))), ckpt)
    out = tmp_path / "run"
    result = cli(["experiment=dps_paper_deblur", f"model.checkpoint={ckpt}", f"model.cache_dir={tmp_path / 'cache'}",
                  "data=synthetic", "num_images=1", "batch_size=1", "sampler.num_steps=2", "logger=none",
                  "metrics.lpips=false", "runtime.threads=1", f"hydra.run.dir={out}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())  # random weights, 2 steps: ok or diverged
    assert result["error"] is None and result["status"] in ("ok", "diverged") and result["num_finished"] >= 1
    assert list((out / "images").glob("*.png"))
    assert len(list((tmp_path / "cache").iterdir())) == 1
