"""Convert ADM (guided-diffusion, Dhariwal & Nichol 2021) UNet checkpoints into diffusers folders.

The checkpoints used by DPS and its successors — ``ffhq_10m.pt`` (FFHQ 256, DPS) and
``256x256_diffusion_uncond.pt`` (ImageNet 256) — are guided-diffusion ``UNetModel`` state dicts with
BigGAN-style residual up/down-sampling (``resblock_updown``), scale-shift group norm
(``use_scale_shift_norm``), 64-channel attention heads and a learned variance (``learn_sigma``: 2C output
channels). They map one to one onto a diffusers ``UNet2DModel`` with ``ResnetDownsampleBlock2D`` /
``ResnetUpsampleBlock2D`` (``AttnDownBlock2D`` / ``AttnUpBlock2D`` with resnet down/up-sampling at the
attention resolutions), ``resnet_time_scale_shift="scale_shift"`` and cos-first sinusoidal time embeddings
(``flip_sin_to_cos=True, freq_shift=0``); ADM's fused ``qkv`` 1×1 convolutions (heads first, then q, k, v:
its ``QKVAttentionLegacy``) are split into ``to_q``, ``to_k``, ``to_v``. The schedule is ADM's: linear β
from 1e-4 to 0.02, T = 1000, ``variance_type: learned_range``, ``clip_sample: true``.

    python -m diffexp.models.adm ffhq_10m.pt OUT_DIR --preset ffhq256
    python -m diffexp.models.adm CKPT OUT_DIR --model-channels 128 --channel-mult 1,1,2,2,4,4 \\
        --num-res-blocks 1 --attention-resolutions 16

``model=adm_ffhq256 model.checkpoint=ffhq_10m.pt`` converts on first use and caches the folder under
``$XDG_CACHE_HOME/diffexp/adm/<preset>-<sha256 of the .pt>`` (``~/.cache`` when unset; ``model.cache_dir``
moves it). Nothing is downloaded. The ``.pt`` is read as tensors only: one that would need unpickling code is
refused before any of it runs (its tensors saved as ``.safetensors`` on a trusted machine are read instead).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

from diffexp.errors import CheckpointMismatchError, ConfigError
from diffexp.models.diffusion import UNSAFE_FILE_ADVICE, DiffusionModel, load_folder, load_tensors


@dataclass(frozen=True)
class ADMArchitecture:
    """The guided-diffusion ``create_model`` arguments that fix a checkpoint's parameters.

    ``attention_resolutions`` are image sizes in pixels (as guided-diffusion's command-line flag);
    ``out_channels`` = 2 × ``in_channels`` for ``learn_sigma`` models.
    """

    image_size: int = 256
    in_channels: int = 3
    out_channels: int = 6
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16,)
    num_head_channels: int = 64

    def __post_init__(self) -> None:
        problems = []
        if self.model_channels % 32:
            problems.append(f"model_channels={self.model_channels} (ADM's group norm needs a multiple of 32)")
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            problems.append(f"out_channels={self.out_channels} (allowed: in_channels or 2 x in_channels)")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            problems.append(f"image_size={self.image_size} (must be divisible by 2^(levels-1))")
        for r in self.attention_resolutions:
            if r not in self.resolutions:
                problems.append(f"attention_resolutions has {r} (allowed: the levels' sizes {self.resolutions})")
        for mult in self.channel_mult:
            if mult * self.model_channels % self.num_head_channels:
                problems.append(
                    f"num_head_channels={self.num_head_channels} does not divide {mult * self.model_channels}"
                )
        if problems:
            raise ValueError("invalid ADM architecture: " + "; ".join(problems))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size in pixels at each level."""
        return tuple(self.image_size // 2**level for level in range(len(self.channel_mult)))

    def attention_at(self, level: int) -> bool:
        return self.resolutions[level] in self.attention_resolutions

    def diffusers_config(self) -> dict[str, Any]:
        """``UNet2DModel`` keyword arguments of the same network."""
        levels = range(len(self.channel_mult))
        return dict(
            sample_size=self.image_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            block_out_channels=tuple(m * self.model_channels for m in self.channel_mult),
            layers_per_block=self.num_res_blocks,
            down_block_types=tuple(
                "AttnDownBlock2D" if self.attention_at(i) else "ResnetDownsampleBlock2D" for i in levels
            ),
            up_block_types=tuple(
                "AttnUpBlock2D" if self.attention_at(i) else "ResnetUpsampleBlock2D" for i in reversed(levels)
            ),
            downsample_type="resnet",
            upsample_type="resnet",
            resnet_time_scale_shift="scale_shift",
            attention_head_dim=self.num_head_channels,
            norm_num_groups=32,
            attn_norm_num_groups=32,
            norm_eps=1e-5,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
            dropout=0.0,
        )


PRESETS = {
    # DPS's FFHQ model (ffhq_10m.pt; Chung et al. 2023, from Choi et al. 2021's ILVR training): ~93.6 M parameters
    "ffhq256": ADMArchitecture(),
    # guided-diffusion's 256x256_diffusion_uncond.pt (Dhariwal & Nichol 2021): ~552.8 M parameters
    "imagenet256": ADMArchitecture(model_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8)),
}
ADM_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
    variance_type="learned_range", clip_sample=True, prediction_type="epsilon",
)


# How one ADM tensor becomes diffusers tensors: (diffusers names, split function, expected ADM shape).
Rule = tuple[tuple[str, ...], Callable[[Tensor], tuple[Tensor, ...]], tuple[int, ...]]
RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
          "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _module_pairs(arch: ADMArchitecture) -> Iterator[tuple[str, str, str]]:
    """(ADM module prefix, diffusers module prefix, kind) for every module with parameters, in guided-diffusion's
    ``UNetModel`` construction order: kind is "resnet", "attention" or "plain"."""
    yield "time_embed.0", "time_embedding.linear_1", "plain"
    yield "time_embed.2", "time_embedding.linear_2", "plain"
    yield "input_blocks.0.0", "conv_in", "plain"
    levels = len(arch.channel_mult)
    k = 1
    for level in range(levels):
        for j in range(arch.num_res_blocks):
            yield f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "resnet"
            if arch.attention_at(level):
                yield f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attention"
            k += 1
        if level < levels - 1:
            yield f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", "resnet"
            k += 1
    yield "middle_block.0", "mid_block.resnets.0", "resnet"
    yield "middle_block.1", "mid_block.attentions.0", "attention"
    yield "middle_block.2", "mid_block.resnets.1", "resnet"
    k = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(arch.num_res_blocks + 1):
            yield f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{j}", "resnet"
            index = 1
            if arch.attention_at(level):
                yield f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{j}", "attention"
                index = 2
            if level > 0 and j == arch.num_res_blocks:
                yield f"output_blocks.{k}.{index}", f"up_blocks.{up}.upsamplers.0", "resnet"
            k += 1
    yield "out.0", "conv_norm_out", "plain"
    yield "out.2", "conv_out", "plain"


def _qkv_split(heads: int) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """ADM's fused qkv (rows ordered head, then q/k/v, then channel) → to_q, to_k, to_v (rows: head, channel)."""

    def split(w: Tensor) -> tuple[Tensor, ...]:
        c = w.shape[0] // 3
        w = w.reshape(heads, 3, c // heads, *w.shape[1:])
        return tuple(w[:, i].reshape(c, *w.shape[3:]).squeeze(-1) for i in range(3))

    return split


def conversion_rules(arch: ADMArchitecture, target: dict[str, tuple[int, ...]]) -> dict[str, Rule]:
    """ADM key → rule, given the diffusers model's parameter shapes ``target`` (name → shape)."""
    rules: dict[str, Rule] = {}
    same = lambda w: (w,)  # noqa: E731
    conv1d_to_linear = lambda w: (w.squeeze(-1),)  # noqa: E731
    for adm, ours, kind in _module_pairs(arch):
        names = {"plain": {"": ""}, "resnet": RESNET, "attention": {"norm": "group_norm"}}[kind]
        for adm_sub, our_sub in names.items():
            for p in ("weight", "bias"):
                name = ".".join(filter(None, (ours, our_sub, p)))
                if name in target:
                    rules[".".join(filter(None, (adm, adm_sub, p)))] = ((name,), same, target[name])
        if kind == "attention":
            heads = target[f"{ours}.to_q.weight"][0] // arch.num_head_channels
            for p in ("weight", "bias"):
                qkv = tuple(f"{ours}.to_{n}.{p}" for n in "qkv")
                shape = target[qkv[0]]
                adm_shape = (3 * shape[0], *shape[1:], 1) if p == "weight" else (3 * shape[0],)
                rules[f"{adm}.qkv.{p}"] = (qkv, _qkv_split(heads), adm_shape)
                proj = f"{ours}.to_out.0.{p}"
                rules[f"{adm}.proj_out.{p}"] = ((proj,), conv1d_to_linear if p == "weight" else same,
                                                (*target[proj], 1) if p == "weight" else target[proj])
    unmapped = set(target) - {n for names, _, _ in rules.values() for n in names}
    if unmapped:  # a diffusers layout this converter does not know: a bug here, not in the checkpoint
        raise RuntimeError(f"convert_adm: diffusers parameters without an ADM source: {sorted(unmapped)[:5]}")
    return rules


def _meta_unet(arch: ADMArchitecture) -> UNet2DModel:
    with torch.device("meta"):
        return UNet2DModel(**arch.diffusers_config())


def convert_state_dict(state: dict[str, Tensor], arch: ADMArchitecture, *, label: str = "") -> UNet2DModel:
    """A diffusers ``UNet2DModel`` (float32, eval mode) holding the ADM ``state`` dict's weights.

    Raises ``CheckpointMismatchError`` naming the first missing, unexpected or wrongly shaped key.
    """
    unet = _meta_unet(arch)
    target = {name: tuple(p.shape) for name, p in unet.state_dict().items()}
    rules = conversion_rules(arch, target)
    missing = [k for k in rules if k not in state]
    unexpected = [k for k in state if k not in rules]
    shapes = {k: tuple(state[k].shape) for k in rules if k in state}
    wrong = [(k, shape, rules[k][2]) for k, shape in shapes.items() if shape != rules[k][2]]
    problems = [f"key {k!r} has shape {list(s)}, expected {list(e)}" for k, s, e in wrong[:5]]
    problems += [f"key {k!r} is missing" for k in missing[:5]]
    problems += [f"key {k!r} is unexpected" for k in unexpected[:5]]
    if problems:
        counts = f"{len(wrong)} wrong shapes, {len(missing)} missing and {len(unexpected)} unexpected keys"
        what = f"checkpoint {label}" if label else "checkpoint"
        title = f"{what} does not fit the ADM architecture {asdict(arch)} ({counts})"
        raise CheckpointMismatchError(problems, title=title)
    converted: dict[str, Tensor] = {}
    for key, (names, split, _) in rules.items():
        for name, tensor in zip(names, split(state[key].to(torch.float32))):
            converted[name] = tensor.contiguous()
    unet.load_state_dict(converted, strict=True, assign=True)
    return unet.eval()


def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A guided-diffusion ``.pt`` state dict, or the same tensors as ``.safetensors``; a ``{"state_dict": ...}``
    or ``{"model": ...}`` wrapper is unwrapped. Never unpickled code: a ``.pt`` that would need it is refused
    (``UnsafeFileError``) before any of it runs."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ConfigError([f"ADM checkpoint {path} cannot be read as safetensors ({err})"],
                              title="unreadable file") from None
    state = load_tensors(path, what="ADM checkpoint", advice=(
        f"{UNSAFE_FILE_ADVICE}, e.g. as {path.with_suffix('.safetensors')}, and pass that file as "
        "model.checkpoint (or to `python -m diffexp.models.adm`)."))
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointMismatchError([f"{path} does not hold a state dict (name -> tensor)"], title="bad checkpoint")
    return state


def convert(checkpoint: str | Path, out_dir: str | Path, arch: ADMArchitecture, *, overwrite: bool = True) -> Path:
    """Convert ``checkpoint`` into the diffusers folder ``out_dir`` (``config.json``, safetensors weights,
    ``scheduler_config.json``), written atomically: a folder that exists is complete. With ``overwrite`` False
    a folder that another process finished first is kept (parallel jobs sharing the cache)."""
    checkpoint, out_dir = Path(checkpoint).expanduser(), Path(out_dir).expanduser()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"ADM checkpoint {checkpoint} does not exist (expected a guided-diffusion .pt file)")
    unet = convert_state_dict(load_checkpoint(checkpoint), arch, label=str(checkpoint))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        unet.save_pretrained(tmp)
        DDPMScheduler(**ADM_SCHEDULER).save_pretrained(tmp)
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:
            if overwrite or not (out_dir / "scheduler_config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/diffexp/adm`` (``~/.cache/diffexp/adm`` when XDG_CACHE_HOME is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffexp" / "adm"


def load_adm(checkpoint: str, *, preset: str = "ffhq256", cache_dir: str | None = None,
             name: str | None = None) -> DiffusionModel:
    """``model=adm_ffhq256|adm_imagenet256``: an ADM ``.pt`` (converted on first use, cached by content hash)
    or a folder already converted by ``python -m diffexp.models.adm``."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset={preset!r} is not known; allowed: {', '.join(PRESETS)}")
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return load_folder(path, name or path.name)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.checkpoint={checkpoint!r}: no such file or folder. Pass the guided-diffusion .pt (e.g. DPS's "
            f"ffhq_10m.pt) or a folder converted by `python -m diffexp.models.adm CKPT DIR --preset {preset}`"
        )
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    folder = root / f"{preset}-{_sha256(path)[:16]}"
    if not (folder / "scheduler_config.json").is_file():
        convert(path, folder, PRESETS[preset], overwrite=False)
    return load_folder(folder, name or path.stem)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffexp.models.adm", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="guided-diffusion UNet state dict (.pt, or its tensors as .safetensors)")
    parser.add_argument("out_dir", help="diffusers folder to write (config.json, weights, scheduler_config.json)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a known architecture; flags below override it")
    defaults = ADMArchitecture()
    parser.add_argument("--image-size", type=int, help=f"(default {defaults.image_size})")
    parser.add_argument("--in-channels", type=int, help=f"(default {defaults.in_channels})")
    parser.add_argument("--out-channels", type=int, help="2 x in-channels for learn_sigma models (default 6)")
    parser.add_argument("--model-channels", type=int, help="num_channels (default 128)")
    parser.add_argument("--channel-mult", type=_ints, help="e.g. 1,1,2,2,4,4 (default)")
    parser.add_argument("--num-res-blocks", type=int, help="(default 1)")
    parser.add_argument("--attention-resolutions", type=_ints, help="pixel sizes, e.g. 32,16,8 (default 16)")
    parser.add_argument("--num-head-channels", type=int, help="(default 64)")
    args = parser.parse_args(argv)
    arch = asdict(PRESETS[args.preset] if args.preset else defaults)
    arch.update({k: v for k, v in vars(args).items() if k in arch and v is not None})
    out = convert(args.checkpoint, args.out_dir, ADMArchitecture(**arch))
    print(f"wrote {out} (diffusers UNet2DModel + scheduler_config.json, variance_type learned_range)")


if __name__ == "__main__":
    main()
