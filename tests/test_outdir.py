"""The output directory and the run's record (issue #12): one writer, no silent clobbering, resume on
damaged state, divergence without NaN, checks before compute, the right cause named."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_cfg

import diffexp
import diffexp.validate
import diffexp.experiment
import diffexp.models.diffusion
from diffexp.errors import ConfigError
from diffexp.rundir.claim import claim
from diffexp.errors import SamplingDivergedError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "sampler.num_steps=2"]


def load(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Indices of the images a run samples (the Recorder sees every finished batch)."""
    seen: list[int] = []
    real = diffexp.experiment.Recorder.add
    monkeypatch.setattr(
        diffexp.experiment.Recorder, "add", lambda self, idx, *a, **k: (seen.extend(idx), real(self, idx, *a, **k))
    )
    return seen


# ---------------------------------------------------------------- one writer, no clobbering


def test_second_writer_is_refused(tmp_path: Path) -> None:
    held = claim(tmp_path, resume=False, overwrite=False)
    try:
        with pytest.raises(ConfigError, match=f"{tmp_path} is being written by another run"):
            diffexp.run(make_cfg([*TINY, "task=generate", "sampler=ddpm"], tmp_path))
    finally:
        held.release()
    assert not (tmp_path / "metrics.json").exists()
    diffexp.run(make_cfg([*TINY, "task=generate", "sampler=ddpm"], tmp_path))  # released: the next run may write


def test_rerun_without_resume_is_refused(tmp_path: Path, sampled: list[int]) -> None:
    diffexp.run(make_cfg([*TINY, "num_images=3"], tmp_path))
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds results.*resume=true.*overwrite=true"):
        diffexp.run(make_cfg([*TINY, "num_images=1"], tmp_path))
    assert (tmp_path / "metrics.json").read_bytes() == before and sampled == [0, 1, 2]


def test_overwrite_clears_stale_images(tmp_path: Path) -> None:
    diffexp.run(make_cfg([*TINY, "num_images=3"], tmp_path))
    result = diffexp.run(make_cfg([*TINY, "num_images=1", "overwrite=true"], tmp_path))
    assert result["num_finished"] == 1
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "00000.png", "00000_measurement.png", "00000_truth.png"
    ]
    assert sorted(p.name for p in (tmp_path / "measurements").iterdir()) == ["00000.pt"]


def test_resume_and_overwrite_contradict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume=true and overwrite=true"):
        diffexp.run(make_cfg([*TINY, "resume=true", "overwrite=true"], tmp_path))


def test_resume_on_empty_dir_says_it_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="diffexp.rundir.claim"):
        diffexp.run(make_cfg([*TINY, "num_images=1", "resume=true"], tmp_path / "new"))
    assert f"resume=true: {tmp_path / 'new'} holds no earlier results; starting fresh" in caplog.text


# ---------------------------------------------------------------- resume on damaged state


def test_resume_names_the_damaged_metrics_file(tmp_path: Path) -> None:
    diffexp.run(make_cfg([*TINY, "num_images=2"], tmp_path))
    path = tmp_path / "metrics.json"
    path.write_text(path.read_text()[:50])
    with pytest.raises(ConfigError, match=f"{path} is damaged .*overwrite=true"):
        diffexp.run(make_cfg([*TINY, "num_images=2", "resume=true"], tmp_path))


@pytest.mark.parametrize("suffix", ["", "_truth", "_measurement"])
def test_resume_regenerates_a_deleted_png(tmp_path: Path, sampled: list[int], suffix: str) -> None:
    """SDEdit (ddpm) is bit-identical whatever the batch, so the regenerated image equals the original."""
    run = [*TINY, "task=denoise", "sampler=ddpm", "num_images=3"]
    diffexp.run(make_cfg(run, tmp_path / "whole"))
    out = tmp_path / "damaged"
    diffexp.run(make_cfg(run, out))
    (out / "images" / f"00001{suffix}.png").unlink()
    sampled.clear()
    result = diffexp.run(make_cfg([*run, "resume=true"], out))
    assert sampled == [1] and result["num_finished"] == 3 and (out / "grid.png").is_file()
    rows, whole = load(out)["per_image"], load(tmp_path / "whole")["per_image"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for row, ref in zip(rows, whole, strict=True):  # the residual's norm is summed in a batch-dependent order
        assert row == {k: v if v is None else pytest.approx(v, rel=1e-6) for k, v in ref.items()}
    assert (out / "images" / f"00001{suffix}.png").read_bytes() == (
        tmp_path / "whole" / "images" / f"00001{suffix}.png"
    ).read_bytes()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("sampler.step_size=3.0", r"sampler\.step_size: 5\.0 → 3\.0"),
        ("seed=1", r"seed: 0 → 1"),
        ("task.sigma_y=0.1", r"task\.sigma_y: 0\.05 → 0\.1"),
        ("sampler=scoreald", r"sampler: 'dps' → 'scoreald'"),
    ],
)
def test_resume_refusal_names_the_setting(tmp_path: Path, override: str, named: str) -> None:
    diffexp.run(make_cfg([*TINY, "num_images=1"], tmp_path))
    with pytest.raises(ConfigError, match="was written with other settings") as info:
        diffexp.run(make_cfg([*TINY, "num_images=2", "resume=true", override], tmp_path))
    assert any(re.fullmatch(named, p) for p in info.value.problems), info.value.problems


def test_settings_keep_their_types_and_hash_numbers_alike(tmp_path: Path) -> None:
    """metrics.json records integers as integers (``seed: 0``, not ``0.0``); ``step_size=5`` and ``5.0`` are the
    same setting (same hash, so a resume accepts either)."""
    from diffexp.rundir.recorder import settings_hash

    values = diffexp.run(make_cfg([*TINY, "num_images=1", "sampler.step_size=5.0"], tmp_path))["settings_values"]
    stored = load(tmp_path)["settings_values"]
    assert stored == values and stored["seed"] == 0 and stored["sampler.num_steps"] == 2
    assert type(stored["seed"]) is int and type(stored["sampler.num_steps"]) is int  # noqa: E721
    assert type(stored["sampler.step_size"]) is float  # noqa: E721
    same = [settings_hash(make_cfg([*TINY, f"sampler.step_size={v}"], tmp_path)) for v in ("5", "5.0", "3")]
    assert same[0] == same[1] != same[2]


# ---------------------------------------------------------------- divergence without NaN


def test_divergence_without_nan_is_flagged(tmp_path: Path) -> None:
    """DPS at ζ = 1e6 on the shipped model stays finite but ends far from its measurement."""
    overrides = ["logger=none", "metrics.lpips=false", "num_images=1", "sampler.num_steps=20"]
    bad = diffexp.run(make_cfg([*overrides, "sampler.step_size=1e6"], tmp_path / "bad"))
    assert bad["status"] == "diverged" and bad["error"] is None and bad["objective"] is None
    row = bad["per_image"][0]
    assert row["diverged"] is True and row["residual"] > row["residual_limit"] >= 3 * row["baseline_residual"]
    assert "image 0: final residual" in bad["warnings"][0] and load(tmp_path / "bad")["status"] == "diverged"
    good = diffexp.run(make_cfg(overrides, tmp_path / "good"))  # the tuned ζ: fits its measurement
    assert good["status"] == "ok" and good["warnings"] == [] and "diverged" not in good["per_image"][0]
    assert good["objective"] == good["metrics"]["psnr"]["mean"]


# ---------------------------------------------------------------- checks before compute


@pytest.fixture
def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("sampling started")

    monkeypatch.setattr(diffexp.experiment.Recorder, "add", fail)


def test_metrics_json_that_is_a_directory_fails_before_sampling(tmp_path: Path, no_sampling: None) -> None:
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(ConfigError, match=f"{tmp_path / 'metrics.json'} exists and is not a file"):
        diffexp.run(make_cfg(TINY, tmp_path))


def test_read_only_images_dir_fails_before_sampling(
    tmp_path: Path, no_sampling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root every path is writable, so the permission is simulated: os.access is what run() consults."""
    images = tmp_path / "images"
    images.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == images else real(p, mode))
    with pytest.raises(ConfigError, match=f"{images} is not writable"):
        diffexp.run(make_cfg(TINY, tmp_path))


def test_num_steps_above_T_reported_with_other_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        diffexp.run(make_cfg([*TINY, "sampler.num_steps=5000", "sampler.step_size=-1"], tmp_path))
    text = str(info.value)
    assert "sampler.num_steps=5000 is invalid: allowed is 1..1000" in text and "sampler.step_size=-1" in text
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_missing_data_path_fails_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffexp.models.diffusion, "tiny_model", lambda **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"data\.path='/no/such/dir': no such folder"):
        diffexp.run(make_cfg([*TINY, "data=folder", "data.path=/no/such/dir"], tmp_path))


def test_float16_refused_on_cpu(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runtime.dtype=float16 on the CPU"):
        diffexp.run(make_cfg([*TINY, "runtime.dtype=float16"], tmp_path))


def test_float16_refused_for_backprop_through_the_unet(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an accelerator, float16 is refused for a sampler declaring ``unet_grad`` (DPS), not for bfloat16."""
    monkeypatch.setattr(diffexp.validate, "resolve_device", lambda name: torch.device("cuda"))
    cfg = make_cfg([*TINY, "runtime.dtype=float16"], Path("unused"))
    problems = diffexp.validate.config_problems(cfg)
    assert problems and "sampler=dps: it backpropagates through the UNet" in problems[0]
    cfg.runtime.dtype = "bfloat16"
    assert diffexp.validate.config_problems(cfg) == []


# ---------------------------------------------------------------- the right cause


def test_corrupted_weights_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = diffexp.models.diffusion.tiny_model

    def corrupted(**kwargs: Any) -> diffexp.models.diffusion.DiffusionModel:
        model = real(**kwargs)
        with torch.no_grad():
            next(model.unet.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(diffexp.models.diffusion, "tiny_model", corrupted)
    with pytest.raises(SamplingDivergedError, match=r"the model \(tiny\) produced NaN/Inf.*weights are likely corrupted"):
        diffexp.run(make_cfg(TINY, tmp_path))
    assert "step_size" not in load(tmp_path)["error"]


# ---------------------------------------------------------------- per-step tracking over the run


def test_step_counter_is_monotone_over_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffexp.tracking.none import NoLogger

    steps: list[int] = []
    monkeypatch.setattr(NoLogger, "log_every", 1)
    monkeypatch.setattr(NoLogger, "log_step", lambda self, state, **kw: steps.append(state["step"]))
    diffexp.run(make_cfg([*TINY, "sampler.num_steps=3", "num_images=3", "batch_size=1"], tmp_path))
    assert steps == list(range(9))


def test_measurement_files_do_not_depend_on_batch_size(tmp_path: Path) -> None:
    """measurements/<i>.pt holds y and the image's own kernel/mask, whatever the batch (issue #12)."""
    saved = {}
    for task in ("task=deblur", "task=inpaint task.mask=random", "task=deblur task.kernel=motion"):
        for batch in (1, 3):
            out = tmp_path / f"{task.replace(' ', '_')}-{batch}"
            diffexp.run(make_cfg([*TINY, *task.split(), "num_images=3", f"batch_size={batch}"], out))
            saved[batch] = [torch.load(out / "measurements" / f"{i:05d}.pt") for i in range(3)]
        for one, three in zip(saved[1], saved[3], strict=True):
            assert one.keys() == three.keys() and len(one) == 2, (task, one.keys())
            for key in one:
                torch.testing.assert_close(one[key], three[key], rtol=0, atol=1e-6)


def test_bfloat16_autocasts_the_unet_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under runtime.dtype=bfloat16 the UNet runs in bf16, A(x̂0) and the metrics in float32 (issue #12)."""
    from diffexp.operators.blur import Blur

    seen: dict[str, set[torch.dtype]] = {"unet": set(), "operator": set()}
    real_forward = Blur.forward
    def forward(self: Blur, x: torch.Tensor) -> torch.Tensor:
        out = real_forward(self, x)  # under autocast, its conv and matmuls would come out in bfloat16
        seen["operator"].add(out.dtype)
        return out

    monkeypatch.setattr(Blur, "forward", forward)
    real_tiny = diffexp.models.diffusion.tiny_model

    def recording(**kwargs: Any) -> diffexp.models.diffusion.DiffusionModel:
        model = real_tiny(**kwargs)
        model.unet.conv_in.register_forward_hook(lambda m, i, out: seen["unet"].add(out.dtype))
        return model

    monkeypatch.setattr(diffexp.models.diffusion, "tiny_model", recording)
    result = diffexp.run(make_cfg([*TINY, "runtime.dtype=bfloat16", "num_images=1"], tmp_path))
    assert result["error"] is None
    assert seen == {"unet": {torch.bfloat16}, "operator": {torch.float32}}


def test_data_offset_skips_images(tmp_path: Path) -> None:
    from diffexp.data.loaders import mnist_eval

    all_ten = mnist_eval(channels=1, size=28, num_images=10)
    torch.testing.assert_close(mnist_eval(channels=1, size=28, num_images=2, offset=8), all_ten[8:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_images=2 with data.offset=511 but .* holds only 512 images"):
        mnist_eval(channels=1, size=28, num_images=2, offset=511)
    with pytest.raises(ConfigError, match="data.offset=-1 is invalid"):
        diffexp.run(make_cfg(["logger=none", "data.offset=-1"], tmp_path))


@pytest.mark.parametrize(
    ("overrides", "nfe"),
    [
        (["sampler=dps", "sampler.num_steps=3"], 3),
        (["sampler=daps_exact", "sampler.num_steps=3", "sampler.ode_steps=2"], 2 + 2 + 1),  # t = 0: one ODE step
        (["sampler=daps", "sampler.num_steps=3", "sampler.ode_steps=2", "sampler.langevin_steps=1"], 3 * 2),
        (["sampler=scoreald", "sampler.num_steps=3", "sampler.corrector_steps=2"], 3 + 2 * 2),
    ],
)
def test_nfe_counts_every_network_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides, nfe) -> None:
    """metrics.json ``nfe`` equals the UNet calls actually made per image (one image here)."""
    calls: list[int] = []
    real = diffexp.models.diffusion.tiny_model

    def counting(**kwargs: Any) -> diffexp.models.diffusion.DiffusionModel:
        model = real(**kwargs)
        model.unet.register_forward_hook(lambda m, i, out: calls.append(1))
        return model

    monkeypatch.setattr(diffexp.models.diffusion, "tiny_model", counting)
    result = diffexp.run(make_cfg([*TINY, *overrides, "num_images=1"], tmp_path))
    assert result["nfe"] == nfe == len(calls)


def test_unwritable_log_file_warns_instead_of_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hydra opens the run's log file before run() starts: an unwritable run dir must not end in "Unable to
    configure handler 'file'" but reach run()'s own check, which names the directory."""
    import logging.config

    from diffexp.rundir.logfile import RunLogFile

    path = tmp_path / "missing" / "run.log"  # cannot be opened (as root, a missing folder stands in for read-only)
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"file": {"class": "diffexp.rundir.logfile.RunLogFile", "filename": str(path)}},
        "loggers": {"probe": {"handlers": ["file"], "level": "INFO"}},
    })
    handler = logging.getLogger("probe").handlers[0]
    assert isinstance(handler, RunLogFile) and handler.unusable is not None
    logging.getLogger("probe").info("dropped")
    assert not path.exists() and f"cannot write the run's log file {path}" in capsys.readouterr().err
    ok = RunLogFile(str(tmp_path / "run.log"))
    ok.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "kept", None, None))
    ok.close()
    assert "kept" in (tmp_path / "run.log").read_text()
    logging.getLogger("probe").handlers.clear()
