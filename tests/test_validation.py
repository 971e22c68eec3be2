"""Bad input → a clear error before any compute: one case per rule, in process and through the CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CONF, cli, make_cfg
from PIL import Image

import diffexp
import diffexp.data.loaders
from diffexp.validate import ConfigError, validate

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "num_images=1", "sampler.num_steps=2"]

# (overrides, pattern the message must contain): every rule of diffexp.validate names key, value and what is allowed.
RULES = {
    "num_images": (["num_images=0"], "num_images=0 is invalid: allowed is an integer >= 1"),
    "batch_size": (["batch_size=0"], "batch_size=0 is invalid: allowed is an integer >= 1"),
    "batch_size_type": (["batch_size=2.5"], "batch_size=2.5 is invalid: allowed is an integer >= 1"),
    "seed": (["seed=-1"], "seed=-1 is invalid: allowed is an integer >= 0"),
    "resume": (["resume=maybe"], "resume='maybe' is invalid: allowed is true or false"),
    "optimized_metric": (["optimized_metric=fid"], "optimized_metric='fid' is invalid: allowed is one of psnr, aligned_psnr, ssim"),
    "num_steps_low": (["sampler.num_steps=0"], "sampler.num_steps=0 is invalid: allowed is an integer >= 1"),
    "num_steps_T": (
        ["sampler.num_steps=1001"],
        r"sampler.num_steps=1001 is invalid: allowed is 1..1000 \(the model's T\)",
    ),
    "t_start_T": (
        ["sampler=ddim", "task=generate", "sampler.t_start=1000"],
        "sampler.t_start=1000 is invalid: allowed is null or 0..999",
    ),
    "t_start_negative": (["sampler=ddim", "task=generate", "sampler.t_start=-5"], "sampler.t_start=-5 is invalid"),
    "step_size_zero": (["sampler.step_size=0"], "sampler.step_size=0 is invalid: allowed is a finite number > 0"),
    "step_size_negative": (["sampler=scoreald", "sampler.step_size=-0.5"], "sampler.step_size=-0.5 is invalid"),
    "step_size_inf": (["sampler.step_size=inf"], "sampler.step_size=inf is invalid: allowed is a finite number > 0"),
    "step_size_text": (["sampler.step_size=big"], "sampler.step_size='big' is invalid"),
    "eta": (
        ["sampler=ddim", "task=generate", "sampler.eta=-1"],
        "sampler.eta=-1 is invalid: allowed is a finite number >= 0",
    ),
    "clip_denoised": (
        ["sampler.clip_denoised=maybe"],
        "sampler.clip_denoised='maybe' is invalid: allowed is null, true or false",
    ),
    "sigma_y": (["task.sigma_y=-0.1"], r"task.sigma_y=-0.1 is invalid: allowed is a finite number >= 0"),
    "sdedit": (
        ["task=denoise", "sampler=ddpm", "task.sdedit=yes"],
        "task.sdedit='yes' is invalid: allowed is true or false",
    ),
    "kernel": (["task.kernel=box"], "task.kernel='box' is invalid: allowed is one of gaussian, motion"),
    "kernel_size_even": (
        ["task.operator.kernel_size=4"],
        "task.operator.kernel_size=4 is invalid: allowed is an odd integer >= 1",
    ),
    "kernel_size_negative": (["task.operator.kernel_size=-3"], "task.operator.kernel_size=-3 is invalid"),
    "kernel_size_image": (
        ["task.operator.kernel_size=33"],
        r"task.operator.kernel_size=33 is invalid: allowed is an odd integer <= 31 for 16x16",
    ),
    "std": (["task.operator.std=0"], "task.operator.std=0 is invalid: allowed is a finite number > 0"),
    "intensity": (
        ["task.kernel=motion", "task.operator.intensity=1.5"],
        r"task.operator.intensity=1.5 is invalid: allowed is a number in \[0, 1\]",
    ),
    "mask": (
        ["task=inpaint", "task.mask=circle"],
        "task.mask='circle' is invalid: allowed is one of box, random, half",
    ),
    "fraction_one": (
        ["task=inpaint", "task.mask=random", "task.operator.fraction=1.0"],
        r"task.operator.fraction=1.0 is invalid: allowed is a number in \(0, 1\)",
    ),
    "fraction_zero": (
        ["task=inpaint", "task.mask=random", "task.operator.fraction=0"],
        r"task.operator.fraction=0 is invalid",
    ),
    "box_size_image": (
        ["task=inpaint", "task.operator.box_size=17"],
        r"task.operator.box_size=17 is invalid: allowed is 1..16 for 16x16",
    ),
    "box_size_zero": (["task=inpaint", "task.operator.box_size=0"], r"task.operator.box_size=0 is invalid"),
    "factor_divides": (
        ["task=super_resolution", "task.operator.factor=3"],
        "task.operator.factor=3 is invalid: allowed is a divisor of the image size 16",
    ),
    "downsample": (
        ["task=super_resolution", "task.operator.downsample=nearest"],
        "task.operator.downsample='nearest' is invalid: allowed is one of avgpool, bicubic",
    ),
    "dtype": (
        ["runtime.dtype=float64"],
        "runtime.dtype='float64' is invalid: allowed is one of float32, bfloat16, float16",
    ),
    "device": (["runtime.device=gpu"], "runtime.device='gpu' is invalid: allowed is auto, cpu, cuda, cuda:N or mps"),
    "deterministic": (["runtime.deterministic=1"], "runtime.deterministic=1 is invalid: allowed is true or false"),
    "log_every": (
        ["logger=wandb", "logger.log_every=-1"],
        "logger.log_every=-1 is invalid: allowed is an integer >= 0",
    ),
    "unknown_sampler_key": (
        ["+sampler.foo=1"],
        "sampler.foo=1: unknown key for diffexp.samplers.dps.dps; allowed: clip_denoised, name, num_steps, step_size,",
    ),
    "misspelled_sampler_key": (["+sampler.stepsize=1"], "sampler.stepsize=1: unknown key"),
    "run_argument_as_key": (["+sampler.generators=1"], "sampler.generators=1: unknown key"),
    "unknown_operator_key": (
        ["+task.operator.blur=1"],
        "task.operator.blur=1: unknown key for diffexp.operators.blur.Blur; allowed: intensity, kernel, kernel_size,",
    ),
    "unknown_task_key": (
        ["+task.sigmay=0.1"],
        "task.sigmay=0.1: unknown key; allowed: kernel, name, operator, padding, sdedit, sigma_y",
    ),
    "unknown_top_key": (["+num_image=4"], "num_image=4: unknown key; allowed: batch_size"),
    "unknown_runtime_key": (
        ["+runtime.num_threads=2"],
        "runtime.num_threads=2: unknown key; allowed: channels_last, compile, deterministic, device, dtype, threads",
    ),
    "threads": (["runtime.threads=-1"], "runtime.threads=-1 is invalid: allowed is an integer >= 0"),
    "unknown_data_key": (["+data.size=8"], "data.size=8: unknown key for diffexp.data.loaders.synthetic; allowed: seed"),
    "unknown_metrics_key": (["+metrics.fidd=true"], "metrics.fidd=True: unknown key for diffexp.evaluation.metrics.Metrics"),
    "bad_target": (
        ["sampler._target_=diffexp.samplers.dps.nope"],
        "sampler._target_='diffexp.samplers.dps.nope': cannot be imported",
    ),
    "missing_data_path": (["data=folder"], r"data.path: missing value \(\?\?\?\); set it on the command line"),
    "missing_model": (["model=pretrained"], r"model.pretrained: missing value"),
}


def _fails_before_compute(overrides: list[str], out: Path, error: type[BaseException], pattern: str) -> None:
    """``run`` raises ``error`` (or Hydra's InstantiationException around it) matching ``pattern``; no output."""
    with pytest.raises(Exception, match=pattern) as info:
        diffexp.run(make_cfg([*BASE, *overrides], out))
    assert isinstance(info.value, error) or isinstance(info.value.__cause__, error), repr(info.value)
    assert not (out / "metrics.json").exists(), "the error must come before any sampling or output"


@pytest.mark.parametrize(("overrides", "pattern"), RULES.values(), ids=RULES.keys())
def test_rule(overrides: list[str], pattern: str, tmp_path: Path) -> None:
    _fails_before_compute(overrides, tmp_path / "out", ConfigError, pattern)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        diffexp.run(make_cfg([*BASE, "num_images=0", "sampler.step_size=-1", "+sampler.foo=1"], tmp_path))
    assert len(info.value.problems) == 3


@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_data_loader_output_checked(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a loader returns must be num_images finite images of the model's shape, before any sampling."""
    real = diffexp.data.loaders.synthetic

    def broken(**kwargs: int) -> torch.Tensor:
        images = real(**kwargs)
        return images[:, :1] if bad == "shape" else images * float("nan")

    monkeypatch.setattr(diffexp.data.loaders, "synthetic", broken)
    pattern = r"returned images of shape \(1, 1, 16, 16\); expected \(1, 3, 16, 16\)" if bad == "shape" else "NaN/Inf"
    _fails_before_compute([], tmp_path, ConfigError, pattern)


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def _png(tmp_path: Path) -> bytes:
    path = tmp_path / "ok.png"
    Image.new("RGB", (20, 20), (10, 20, 30)).save(path)
    return path.read_bytes()


FILE_CASES = [
    "model_without_weights",
    "model_bad_weights",
    "model_missing_folder",
    "data_empty",
    "data_only_text",
    "data_corrupt",
    "data_unsupported",
    "data_missing_folder",
    "data_too_few",
]


def _file_case(case: str, tmp_path: Path) -> tuple[list[str], type[BaseException], str]:
    """Overrides pointing at a broken model folder or image folder, and the expected error naming the path."""
    if case == "model_without_weights":
        folder = _folder(tmp_path, {"config.json": b"{}"})
        return (
            ["model=pretrained", f"model.pretrained={folder}"],
            FileNotFoundError,
            f"model folder {re.escape(str(folder))} has no UNet",
        )
    if case == "model_bad_weights":
        folder = tmp_path / "mnist"
        shutil.copytree(Path(diffexp.__file__).parent / "weights" / "mnist", folder)
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not a checkpoint")
        return (
            ["model=pretrained", f"model.pretrained={folder}"],
            OSError,
            re.escape(str(folder / "diffusion_pytorch_model.safetensors")),
        )
    if case == "model_missing_folder":
        return ["model=pretrained", f"model.pretrained={tmp_path}/nope"], FileNotFoundError, "no such local folder"
    png = _png(tmp_path)
    folders = {
        "data_empty": ({}, ConfigError, "holds no image"),
        "data_only_text": ({"notes.txt": b"hello"}, ConfigError, "holds no image"),
        "data_corrupt": ({"a.png": png, "b.png": png[:60]}, ConfigError, r"cannot read image b\.png"),
        "data_unsupported": (
            {"a.png": png, "c.gif": b"GIF89a"},
            ConfigError,
            "unsupported image file 'c.gif'; allowed: .png, .jpg, .jpeg",
        ),
        "data_too_few": ({"a.png": png}, ConfigError, "num_images=2 with data.offset=0 but data.path=.* holds only 1 images"),
    }
    if case == "data_missing_folder":
        return ["data=folder", f"data.path={tmp_path}/nope"], ConfigError, r"data\.path=.*/nope.: no such folder"
    files, error, pattern = folders[case]
    return ["data=folder", f"data.path={_folder(tmp_path, files)}", "num_images=2"], error, pattern


@pytest.mark.parametrize("case", FILE_CASES)
def test_unreadable_files(case: str, tmp_path: Path) -> None:
    overrides, error, pattern = _file_case(case, tmp_path)
    _fails_before_compute(overrides, tmp_path / "out", error, pattern)


SHIPPED = [  # every option of every group (the checks of one group do not depend on the others)
    *(
        [f"{group}={p.stem}"]
        for group in ("sampler", "task", "model", "data", "logger")
        for p in sorted((CONF / group).glob("*.yaml"))
        if p.stem not in ("pretrained", "folder") and not p.stem.startswith("adm_")
    ),
    # the ADM models need their checkpoint (tests/test_adm.py checks the missing one is named)
    *([f"model={p.stem}", "model.checkpoint=ffhq_10m.pt"] for p in sorted((CONF / "model").glob("adm_*.yaml"))),
]


def _paired(overrides: list[str]) -> list[str]:
    """An unconditional sampler with task=generate, and task=generate with ddpm (the defaults pair dps with
    deblur): the sampler × task pairing is itself checked (``test_impossible_pairings_are_refused``)."""
    if overrides in (["sampler=ddpm"], ["sampler=ddim"]):
        return [*overrides, "task=generate"]
    return [*overrides, "sampler=ddpm"] if overrides == ["task=generate"] else overrides


@pytest.mark.parametrize("overrides", SHIPPED, ids=[" ".join(o) for o in SHIPPED])
def test_shipped_configs_pass(overrides: list[str], tmp_path: Path) -> None:
    validate(make_cfg(_paired(overrides), tmp_path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sampler=ddim"], "sampler=ddim cannot solve task=deblur: it needs measurement guidance; use a posterior "
                           "sampler (ald, daps, daps_exact, ddnm, diffpir, dps, pigdm, reddiff, scoreald)"),
        (["task=generate"], "sampler=dps needs a measurement; task=generate supports ddim, ddpm"),
    ],
)
def test_impossible_pairings_are_refused(overrides: list[str], message: str, tmp_path: Path) -> None:
    """Before the model is loaded, with the samplers that can (from the declarations of conf/sampler/)."""
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(overrides, tmp_path))
    assert info.value.problems == [message]


CLI_CASES = [  # one process each: a value rule, an unknown key, a file error
    pytest.param(
        ["sampler.step_size=-1"], "sampler.step_size=-1 is invalid: allowed is a finite number > 0", id="step_size"
    ),
    pytest.param(
        ["+sampler.foo=1"], "sampler.foo=1: unknown key for diffexp.samplers.dps.dps; allowed:", id="unknown_key"
    ),
    pytest.param(["data=folder", "data.path={tmp}"], "holds no image", id="empty_folder", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("overrides", "message"), CLI_CASES)
def test_cli_reports_bad_setting(overrides: list[str], message: str, tmp_path: Path) -> None:
    args = [o.format(tmp=tmp_path) for o in overrides]
    proc = cli([*BASE, *args, f"hydra.run.dir={tmp_path / 'out'}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]  # a user error: one clean message, no traceback
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()
