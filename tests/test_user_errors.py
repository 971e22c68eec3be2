"""User errors are user errors: Hydra's own (a mistyped key, an unknown option, an output dir that is a file), data
that cannot be read, every problem of a config at once, a diverged run's one-line cause, EXIF orientation, and a
parallel sweep's workers that stop when their driver is killed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffexp
import diffexp.models.diffusion
from diffexp.data.loaders import folder
from diffexp.errors import ConfigError, DataError, SamplingDivergedError
from tests.conftest import ROOT, cli, make_cfg

TINY = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "num_images=2", "batch_size=2",
        "sampler.num_steps=3"]


def _png(size: int = 8, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["num_imagse=3"], "num_imagse: no such key (did you mean num_images?); allowed at the top level: batch_size"),
        (["sampler.step_sise=3"], "sampler.step_sise: no such key (did you mean sampler.step_size?); allowed in "
                                  "sampler: clip_denoised, name, num_steps, step_size"),
        (["sampler=dpss"], "sampler=dpss: no such option (did you mean sampler=dps?); allowed: ald, daps, daps_exact, ddim, ddnm"),
        (["-m", "task=nonexistent,deblur"], "task=nonexistent: no such option; allowed: deblur, denoise, generate"),
        (["num_images=["], "num_images=[: no viable alternative at input '['"),
        (["num_images=2,3"], "Ambiguous value for argument 'num_images=2,3'"),
        (["hydra.run.dir=FILE"], "output directory FILE cannot be created: file exists (hydra.run.dir and "
                                 "hydra.sweep.dir must name a folder you can write)"),
    ],
    ids=["key", "nested_key", "option", "multirun_option", "parse", "ambiguous", "run_dir_is_a_file"],
)
def test_hydra_errors_are_one_message_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    args = [a.replace("FILE", str(a_file)) for a in args]
    proc = cli([*args, "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("Error: "), proc.stderr[-2000:]
    assert message.replace("FILE", str(a_file)) in proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert a_file.read_text() == "mine"


def test_the_users_own_hydra_full_error_still_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    proc = cli(["num_imagse=3"], timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "num_imagse" in proc.stderr


def test_every_problem_at_once_with_the_operator_against_the_image_size(tmp_path: Path) -> None:
    """A bad number, an unavailable device, float16 and an operator key too large for the model's images: one try.
    The model is not loaded (config problems), so the image size comes from its config files."""
    overrides = ["model=mnist", "num_images=abc", "runtime.device=cuda:99", "runtime.dtype=float16",
                 "task=inpaint", "task.operator.box_size=50"]
    with pytest.raises(ConfigError) as info:
        diffexp.run(make_cfg(["logger=none", *overrides], tmp_path))
    text = str(info.value)
    assert "num_images='abc' is invalid" in text
    assert "runtime.device='cuda:99'" in text
    assert "runtime.dtype=float16 with sampler=dps" in text
    assert "task.operator.box_size=50 is invalid: allowed is 1..28 for 28x28 images" in text
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.fixture
def model_must_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: object) -> None:
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(diffexp.models.diffusion, "tiny_model", refuse)


@pytest.mark.parametrize(
    ("files", "pattern"),
    [
        ({"a.png": b"", "b.png": "PNG"}, r"cannot read image a\.png \(cannot identify image file"),
        ({"a.png": "PNG", "b.png": "TRUNCATED"}, r"cannot read image b\.png \("),
        ({"a.png": "PNG"}, r"num_images=2 with data.offset=0 but data.path=.* holds only 1 images; allowed: "
                           r"num_images <= 1"),
        ({"a.png": "PNG", "b.txt.png": b"hello"}, r"cannot read image b\.txt\.png"),
    ],
    ids=["empty", "truncated", "too_few", "not_an_image"],
)
def test_data_is_checked_before_the_model_loads_or_the_dir_is_locked(
    tmp_path: Path, files: dict[str, bytes | str], pattern: str, model_must_not_load: None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name, content in files.items():
        png = _png()
        raw = {"PNG": png, "TRUNCATED": png[: len(png) // 2]}.get(content, content)
        (data / name).write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=pattern):
        diffexp.run(make_cfg([*TINY, "data=folder", f"data.path={data}"], out))
    assert not out.exists()  # neither claimed nor locked


def test_the_bundled_set_with_too_few_images_is_a_user_error(tmp_path: Path, model_must_not_load: None) -> None:
    with pytest.raises(ConfigError, match=r"num_images=1000 with data.offset=0 but data=mnist_eval \(the bundled "
                                        r"digits\) holds only 512 images"):
        diffexp.run(make_cfg(["model=tiny", "logger=none", "data=mnist_eval", "num_images=1000"], tmp_path / "out"))


def test_unreadable_data_through_the_cli_exits_2_without_traceback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"")
    proc = cli([*TINY, "data=folder", f"data.path={data}", f"hydra.run.dir={tmp_path / 'out'}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cannot read image a.png" in proc.stderr


def test_a_loaders_value_error_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: object) -> torch.Tensor:
        raise ValueError("my loader cannot do this")

    monkeypatch.setattr(diffexp.data.loaders, "synthetic", broken)
    with pytest.raises(DataError, match=r"data \(diffexp.data.loaders.synthetic\): my loader cannot do this"):
        diffexp.run(make_cfg(TINY, tmp_path))


def test_jpeg_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """An image stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view") loads upright."""
    upright = np.zeros((16, 16), np.uint8)
    upright[:4, :] = 255  # a white bar at the top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "a.jpg", quality=100, exif=exif)
    image = folder(str(tmp_path), channels=1, size=16, num_images=1)[0, 0]
    assert image[:4].mean() > 0.8 and image[-4:].mean() < -0.8, image


def test_a_diverged_run_ends_with_its_summary_and_one_line_cause(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cli([*TINY, "sampler.step_size=1e308", f"hydra.run.dir={out}"], timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    cause = "SamplingDivergedError: dps: non-finite values in x at step 0 (t=999); likely cause: sampler.step_size"
    assert f"Error: {cause}" in proc.stderr
    assert "failed: deblur/dps on tiny, 0 of 2 images" in proc.stdout + proc.stderr  # the summary
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


def test_nan_weights_are_blamed_on_the_model_not_the_step_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = diffexp.models.diffusion.tiny_model

    def nan_weights(**kwargs: object) -> diffexp.models.diffusion.DiffusionModel:
        model = real(**kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return model

    monkeypatch.setattr(diffexp.models.diffusion, "tiny_model", nan_weights)
    with pytest.raises(SamplingDivergedError) as info:
        diffexp.run(make_cfg(TINY, tmp_path))
    assert "its weights are likely corrupted" in str(info.value) and "step_size" not in str(info.value)


WORKER = """
import signal, sys, time
from pathlib import Path
from diffexp.experiment import _orphan_watch
marker = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda s, f: (marker.write_text("SIGTERM"), sys.exit(0)))
with _orphan_watch(sys.argv[2] == "watched", every=0.1):
    marker.with_suffix(".pid").write_text(str(__import__("os").getpid()))
    time.sleep(120)
"""


@pytest.mark.parametrize("watched", ["watched", "unwatched"])
def test_a_worker_stops_when_its_driver_is_killed(tmp_path: Path, watched: str) -> None:
    """The driver (here a stand-in process) is killed with SIGKILL: its worker sends itself SIGTERM (the run then
    records what it finished); unwatched (a single run), it would sample on."""
    script, marker = tmp_path / "worker.py", tmp_path / "marker"
    script.write_text(WORKER)
    driver = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(120)",
         sys.executable, str(script), str(marker), watched],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    pid_file = marker.with_suffix(".pid")
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    driver.kill()
    driver.wait()
    time.sleep(2.0)
    try:
        assert marker.exists() == (watched == "watched")
    finally:
        if not marker.exists():
            os.kill(worker, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc (Linux)")
def test_killing_a_parallel_sweeps_driver_stops_its_workers(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
            "model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "num_images=50", "batch_size=1",
            "sampler.num_steps=500", "seed=1,2", "runtime.device=cpu", f"hydra.sweep.dir={sweep}"]
    driver = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not all((sweep / j / "metrics.json").exists() for j in ("0", "1")) and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = [c for c in _children(driver.pid) if "popen_loky" in Path(f"/proc/{c}/cmdline").read_text()]
    assert workers, "no worker process found"
    driver.send_signal(signal.SIGTERM)
    driver.wait(timeout=60)
    time.sleep(5.0)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers still running after the driver was killed: {alive}"
    for job in ("0", "1"):
        result = json.loads((sweep / job / "metrics.json").read_text())
        assert result["status"] != "running" and "interrupted by SIGTERM" in str(result["error"]), result["error"]


def test_an_os_error_inside_the_job_is_not_blamed_on_the_output_directory(tmp_path: Path) -> None:
    """Only Hydra's own failure to create hydra.run.dir is that user error; the same error class raised inside
    diffexp's code is not (it keeps its traceback)."""
    from diffexp.cli import command_line_error
    from diffexp.rundir.files import write_json

    (tmp_path / "a_file").write_text("")
    try:
        write_json(tmp_path / "a_file" / "metrics.json", {})
    except NotADirectoryError as err:
        assert command_line_error(err) is None
    else:
        raise AssertionError("write_json into a file's path must fail")
    try:
        (tmp_path / "a_file").mkdir()
    except FileExistsError as err:
        assert command_line_error(err) is not None and "cannot be created: file exists" in command_line_error(err)


def test_an_operator_setting_set_directly_leaves_its_task_shortcut_valid(tmp_path: Path) -> None:
    """task.kernel is interpolated into task.operator.kernel; setting the latter on the command line must not turn
    the former into an 'unknown key' (one bad value, one message), while a task key added with + stays unknown."""
    base = ["logger=none", "task=deblur", f"hydra.run.dir={tmp_path}"]
    proc = cli([*base, "task.operator.kernel=nope"], timeout=120)
    assert proc.returncode == 2 and "task.kernel" not in proc.stderr, proc.stderr[-2000:]
    assert "task.operator.kernel='nope' is invalid: allowed is one of gaussian, motion" in proc.stderr
    proc = cli([*base, "+task.kernel_size=5"], timeout=120)
    assert proc.returncode == 2 and "task.kernel_size=5: unknown key" in proc.stderr, proc.stderr[-2000:]


def test_a_bad_tracker_mode_is_a_config_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"logger.mode='bogus' is invalid: allowed is one of auto, online"):
        diffexp.run(make_cfg([*TINY, "logger=wandb", "logger.mode=bogus"], tmp_path))
