"""Failures inside a run, sweeps with a failing job, SIGINT/SIGTERM, resume and determinism."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ROOT, cli, make_cfg, on_cpu
from PIL import Image

import diffexp
import diffexp.samplers.dps
from diffexp.tracking.none import NoLogger
from diffexp.rundir.recorder import Recorder
from diffexp.errors import SamplingDivergedError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false"]
# The run every CLI test shares: 4 images one by one, long enough to interrupt after the first.
RUN = [*TINY, "task=deblur", "sampler=dps", "sampler.num_steps=40", "num_images=4", "batch_size=1", "seed=0"]
STEP = "sampler.step_size=3.0"  # the sweep's jobs 0 and 2, which the other runs are compared with
VOLATILE = ("seconds", "seconds_per_image")  # wall-clock fields: the only ones allowed to differ


def load(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def comparable(out: Path) -> dict[str, Any]:
    return {k: v for k, v in load(out).items() if k not in VOLATILE}


@pytest.fixture
def finish_codes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The exit codes ``run`` hands to the logger's ``finish`` (W&B marks a run failed on a non-zero code)."""
    codes: list[int] = []
    monkeypatch.setattr(NoLogger, "finish", lambda self, exit_code: codes.append(exit_code))
    return codes


# ---------------------------------------------------------------- failures inside a run (in process)


def test_divergence_marks_run_failed(tmp_path: Path, finish_codes: list[int]) -> None:
    """ζ = 1e30 sends x_t to ~1e28 after one DPS step; the UNet's GroupNorm then overflows to Inf/NaN."""
    with pytest.raises(
        SamplingDivergedError, match=r"dps: non-finite values in x at step \d+ .*step_size=1e\+30 too large"
    ):
        diffexp.run(make_cfg([*TINY, "sampler.num_steps=5", "num_images=2", "sampler.step_size=1e30"], tmp_path))
    result = load(tmp_path)
    assert result["status"] == "failed"
    assert result["error"].startswith("SamplingDivergedError: dps: non-finite values")
    assert result["num_finished"] == 0 and result["per_image"] == []
    assert finish_codes == [1]


def test_divergence_keeps_finished_batches(
    tmp_path: Path, finish_codes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 1 samples with a sane ζ, batch 2 with ζ = 1e30: the first batch's images and metrics stay."""
    real = diffexp.samplers.dps.dps
    calls: list[int] = []

    @functools.wraps(real)
    def diverging_later(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(len(calls))
        return real(*args, **{**kwargs, "step_size": 1e30 if len(calls) > 1 else kwargs["step_size"]})

    monkeypatch.setattr(diffexp.samplers.dps, "dps", diverging_later)
    with pytest.raises(SamplingDivergedError, match="step_size=1e\\+30 too large"):
        diffexp.run(make_cfg([*TINY, "sampler.num_steps=5", "num_images=3", "batch_size=2"], tmp_path))
    result = load(tmp_path)
    assert (result["status"], result["num_finished"], len(calls)) == ("failed", 2, 2)
    assert [r["index"] for r in result["per_image"]] == [0, 1]
    assert result["metrics"]["psnr"]["mean"] is not None
    assert "SamplingDivergedError" in result["error"]
    images = tmp_path / "images"
    assert {p.name for p in images.glob("?????.png")} == {"00000.png", "00001.png"}
    assert (tmp_path / "grid.png").is_file()
    assert finish_codes == [1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_finishes_logger(
    sig: signal.Signals, code: int, tmp_path: Path, finish_codes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal after the first batch: exit code 128+n, the finished batch kept, the tracker finished with the code."""
    real_add = Recorder.add

    def add_then_signal(self: Recorder, *args: Any, **kwargs: Any) -> None:
        real_add(self, *args, **kwargs)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler raises in this frame, before the next batch starts

    monkeypatch.setattr(Recorder, "add", add_then_signal)
    with pytest.raises(SystemExit) as info:
        diffexp.run(make_cfg([*TINY, "sampler.num_steps=3", "num_images=2", "batch_size=1"], tmp_path))
    assert info.value.code == code
    assert finish_codes == [code]
    result = load(tmp_path)
    assert (result["status"], result["error"], result["num_finished"]) == ("failed", f"interrupted by {sig.name}", 1)


def test_infinite_metric_is_written_as_null(tmp_path: Path) -> None:
    """σ_y = 0 denoising: the baseline equals the truth, PSNR = +Inf; metrics.json must stay valid JSON."""
    diffexp.run(
        make_cfg(
            [*TINY, "task=denoise", "task.sigma_y=0", "sampler=ddpm", "sampler.num_steps=2", "num_images=1"], tmp_path
        )
    )
    result = load(tmp_path)
    assert result["status"] == "ok"
    assert result["per_image"][0]["baseline_psnr"] is None
    assert result["baseline"]["psnr"] == {"mean": None, "std": None}


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    overrides = [*TINY, "sampler.num_steps=2", "num_images=1"]
    diffexp.run(make_cfg(overrides, tmp_path))
    with pytest.raises(ValueError, match="was written with other settings"):
        diffexp.run(make_cfg([*overrides, "num_images=2", "resume=true", "sampler.step_size=1.0"], tmp_path))


# ---------------------------------------------------------------- determinism (in process)

SAMPLERS = {  # per-image operator parameters (random masks, motion kernels) included
    "ddpm": ["sampler=ddpm", "task=generate"],
    "ddim_eta1": ["sampler=ddim", "sampler.eta=1.0", "task=generate"],
    "dps": ["sampler=dps", "task=deblur", "task.kernel=motion"],
    # closed-form solves; reflect-padded motion blur solves by CG, whose float32 last bits the untrained tiny
    # model amplifies (on the shipped model ScoreALD motion deblurring is bit-identical for batch 1 and 3)
    "scoreald": ["sampler=scoreald", "task=inpaint", "task.mask=random"],
}


@pytest.mark.parametrize("overrides", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_image_independent_of_batch(overrides: list[str], tmp_path: Path) -> None:
    """Image i from batch_size=1 and from batch_size=3 (sharing its batch with two others).

    Randomness is per image, so the results agree; they are not always bit-identical on CPU because
    batched convolutions (DPS's backward pass, grouped per-image blur) sum in a batch-dependent order:
    last-bit float differences, at most one grey level in a PNG.
    """
    runs = {}
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}"
        diffexp.run(
            make_cfg([*TINY, *overrides, "sampler.num_steps=5", "num_images=3", f"batch_size={batch_size}"], out)
        )
        pngs = [np.asarray(Image.open(out / "images" / f"{i:05d}.png"), dtype=int) for i in range(3)]
        runs[batch_size] = (load(out)["per_image"], pngs)
    (rows1, pngs1), (rows3, pngs3) = runs[1], runs[3]
    for a, b in zip(pngs1, pngs3, strict=True):
        assert np.abs(a - b).max() <= 1
    for r1, r3 in zip(rows1, rows3, strict=True):
        assert r1.keys() == r3.keys()
        for key in r1:
            assert r1[key] == (None if r3[key] is None else pytest.approx(r3[key], rel=1e-5, abs=1e-6)), key


def test_deterministic_option_runs_on_cpu(tmp_path: Path) -> None:
    try:
        result = diffexp.run(
            make_cfg([*TINY, "runtime.deterministic=true", "sampler.num_steps=2", "num_images=1"], tmp_path / "a")
        )
        assert result["error"] is None and result["num_finished"] == 1  # tiny model: ok or diverged
        assert torch.are_deterministic_algorithms_enabled()
        diffexp.run(make_cfg([*TINY, "sampler.num_steps=2", "num_images=1"], tmp_path / "b"))
        assert not torch.are_deterministic_algorithms_enabled(), "the next job in the process must not inherit it"
        assert comparable(tmp_path / "a") == comparable(tmp_path / "b")
    finally:
        torch.use_deterministic_algorithms(False)


# ---------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def sweep(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A 3-job multirun whose middle job diverges (ζ = 1e30)."""
    out = tmp_path_factory.mktemp("sweep")
    proc = cli(["-m", *RUN, "sampler.step_size=3.0,1e30,3.0", f"hydra.sweep.dir={out}"], timeout=300)
    return proc, out


def test_failed_job_does_not_stop_sweep(sweep: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, out = sweep
    assert proc.returncode == 1, proc.stderr[-2000:]  # Hydra reports the failed job after running all of them
    assert "non-finite values" in proc.stderr
    status = {job: load(out / job)["status"] for job in ("0", "1", "2")}
    assert status["1"] == "failed" and status["0"] == status["2"] in ("ok", "diverged")  # tiny model: may diverge
    failed = load(out / "1")
    assert failed["error"].startswith("SamplingDivergedError: dps: non-finite values") and failed["num_finished"] == 0
    assert load(out / "2")["num_finished"] == 4
    with (out / "summary.csv").open() as stream:  # the sweep report (diffexp.tracking.report)
        assert {row["job"]: row["status"] for row in csv.DictReader(stream)} == status
    assert re.search(r"\| 1 \| failed \|", (out / "summary.md").read_text())


def _same_outputs(a: Path, b: Path) -> None:
    """Bit-identical metrics (but wall-clock), PNGs, grid and raw measurements."""
    assert comparable(a) == comparable(b)
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(pngs) == 4 * 3 + 1 and pngs == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for png in pngs:
        assert (a / png).read_bytes() == (b / png).read_bytes(), png
    for pt in sorted((a / "measurements").glob("*.pt")):
        x, y = torch.load(pt), torch.load(b / "measurements" / pt.name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_same_seed_is_bit_identical_across_processes(
    sweep: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    """This test's process against the sweep's CLI process (a spawn saved: ~10 s of imports here)."""
    diffexp.run(make_cfg([*RUN, STEP], tmp_path))
    _, out = sweep
    _same_outputs(tmp_path, out / "0")  # another process
    _same_outputs(out / "0", out / "2")  # same process, after a failed job


def _finished(metrics: Path) -> int:
    try:
        return json.loads(metrics.read_text())["num_finished"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture(
    scope="module",  # SIGTERM's path is also covered in process (test_interrupt_finishes_logger)
    params=[signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
    ids=["SIGINT", "SIGTERM"],
)
def interrupted(
    request: pytest.FixtureRequest, one_thread: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[signal.Signals, int, Path, str]:
    """``RUN`` through the CLI, sent ``signal`` once its first image is finished."""
    sig = request.param
    out = tmp_path_factory.mktemp(sig.name)
    log = out.parent / f"{sig.name}.log"
    with log.open("w") as stream:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *on_cpu([*RUN, STEP]), f"hydra.run.dir={out}"],
            cwd=ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 120
        while _finished(out / "metrics.json") < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    return sig, code, out, log.read_text()


def test_interrupt_keeps_finished_images(interrupted: tuple[signal.Signals, int, Path, str]) -> None:
    sig, code, out, log = interrupted
    assert code == 128 + sig, log[-2000:]
    result = load(out)
    assert (result["status"], result["error"]) == ("failed", f"interrupted by {sig.name}")
    done = [r["index"] for r in result["per_image"]]
    assert 1 <= len(done) < 4 and done == list(range(len(done))) and result["num_finished"] == len(done)
    for i in done:
        for suffix in ("", "_truth", "_measurement"):
            assert (out / "images" / f"{i:05d}{suffix}.png").is_file()
    assert (out / "grid.png").is_file()
    assert "failed: deblur/dps" in log  # the end-of-run summary


def test_resume_after_interrupt_equals_uninterrupted(
    interrupted: tuple[signal.Signals, int, Path, str],
    sweep: tuple[subprocess.CompletedProcess, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resume=true samples only the missing images; metrics.json and images equal an uninterrupted run's."""
    _, _, interrupted_out, _ = interrupted
    out = tmp_path / "run"
    shutil.copytree(interrupted_out, out)
    done = {r["index"] for r in load(out)["per_image"]}
    sampled: list[int] = []
    real_add = Recorder.add
    monkeypatch.setattr(
        Recorder, "add", lambda self, indices, *a, **k: (sampled.extend(indices), real_add(self, indices, *a, **k))
    )
    diffexp.run(make_cfg([*RUN, STEP, "resume=true"], out))
    assert sorted(sampled) == sorted(set(range(4)) - done)
    _same_outputs(out, sweep[1] / "0")
