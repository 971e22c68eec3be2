"""The run directory's integrity (issue #21): overwrite deletes only a run's own files, a refused run leaves the
recorded config alone, resume checks what it keeps (rows, PNGs, measurements, exact settings, the shape of
metrics.json), every file is written atomically, and a full disk or a deleted directory ends in one message."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import IO, Any

import pytest
import torch
import yaml
from conftest import cli, make_cfg
from PIL import Image

import diffexp
import diffexp.experiment
import diffexp.rundir.files
from diffexp.cli import clean_errors
from diffexp.errors import ConfigError, RunDirError
from diffexp.rundir.claim import claim
from diffexp.rundir.recorder import Recorder, settings_diff, settings_hash, settings_values
from diffexp.rundir.runconfig import RUN_CONFIG, read_run_config
from diffexp.tracking.report import load_jobs, write_report

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "sampler.num_steps=2"]
DENOISE = [*TINY, "task=denoise", "sampler=ddpm"]  # SDEdit: bit-identical whatever the batch
RUN_FILES = ["00000.png", "00000_measurement.png", "00000_truth.png", "00001.png", "00001_measurement.png",
             "00001_truth.png"]


def load(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-image SDEdit denoising run, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished")
    diffexp.run(make_cfg([*DENOISE, "num_images=2"], out))
    return out


def copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The image indices each run samples (and records)."""
    seen: list[int] = []
    real = Recorder.add
    monkeypatch.setattr(Recorder, "add", lambda self, idx, *a, **k: (seen.extend(idx), real(self, idx, *a, **k)))
    return seen


def errors(stderr: str) -> int:
    """The number of error messages on stderr (``Error: ...`` lines)."""
    return sum(line.startswith("Error:") for line in stderr.splitlines())


def leftovers(out: Path) -> list[str]:
    """Temporary or empty files under ``out`` (what an interrupted non-atomic write leaves behind)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and (p.name.endswith(".tmp") or p.stat().st_size == 0) and p.name != ".diffexp.lock")


# ---------------------------------------------------------------- 1. overwrite deletes only a run's files


def test_overwrite_refuses_files_diffexp_never_wrote(finished: Path, tmp_path: Path) -> None:
    out = copy(finished, tmp_path)
    foreign = [out / "images" / "notes.txt", out / "images" / "00099.png", out / "measurements" / "README"]
    for path in foreign:
        path.write_text("mine")
    (out / "images" / "sub").mkdir()
    before = sorted(p.name for p in (out / "images").iterdir())
    with pytest.raises(ConfigError, match="overwrite=true refused") as info:
        diffexp.run(make_cfg([*DENOISE, "num_images=1", "overwrite=true"], out))
    text = str(info.value)
    for name in ("images/00099.png", "images/notes.txt", "images/sub/", "measurements/README"):
        assert name in text
    assert "move those files away" in text and "00000.png" not in text
    assert sorted(p.name for p in (out / "images").iterdir()) == before and (out / "metrics.json").is_file()
    for path in foreign:  # moved away: overwrite then deletes the run's files
        path.unlink()
    (out / "images" / "sub").rmdir()
    diffexp.run(make_cfg([*DENOISE, "num_images=1", "overwrite=true"], out))
    assert sorted(p.name for p in (out / "images").iterdir()) == RUN_FILES[:3]


def test_overwrite_deletes_a_killed_runs_files_and_keeps_the_rest(finished: Path, tmp_path: Path) -> None:
    """Files of indices below the earlier num_images (a batch killed before its row), temporary files of atomic
    writes: the run's. Other files outside images/ and measurements/ are left alone."""
    out = copy(finished, tmp_path)
    result = load(out)
    result["num_images"], result["per_image"] = 4, result["per_image"][:1]  # killed in its second batch
    (out / "metrics.json").write_text(json.dumps(result))
    (out / "images" / "00003_truth.png").write_bytes(b"")
    (out / "images" / ".00003.png.x1y2.tmp").write_bytes(b"half")
    (out / ".metrics.json.abc.tmp").write_text("{")
    (out / "notes.md").write_text("my notes")
    diffexp.run(make_cfg([*DENOISE, "num_images=1", "overwrite=true"], out))
    assert sorted(p.name for p in (out / "images").iterdir()) == RUN_FILES[:3]
    assert (out / "notes.md").read_text() == "my notes" and not (out / ".metrics.json.abc.tmp").exists()


def test_overwrite_of_a_damaged_metrics_json_goes_by_the_run_names(finished: Path, tmp_path: Path) -> None:
    out = copy(finished, tmp_path)
    (out / "metrics.json").write_text("[1, 2")
    (out / "images" / "cat.jpg").write_text("mine")
    with pytest.raises(ConfigError, match=r"images/cat\.jpg; overwrite=true deletes only"):
        diffexp.run(make_cfg([*DENOISE, "num_images=1", "overwrite=true"], out))
    (out / "images" / "cat.jpg").unlink()
    diffexp.run(make_cfg([*DENOISE, "num_images=1", "overwrite=true"], out))
    assert sorted(p.name for p in (out / "images").iterdir()) == RUN_FILES[:3]


def test_overwrite_without_metrics_json_deletes_nothing_named_like_a_run(finished: Path, tmp_path: Path) -> None:
    """A folder of the user's own ``00000.png`` files with no metrics.json is no run's output (a run writes
    metrics.json before its first image): overwrite=true refuses and keeps them."""
    out = copy(finished, tmp_path)
    (out / "metrics.json").unlink()
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    with pytest.raises(ConfigError, match="overwrite=true refused") as info:
        diffexp.run(make_cfg([*DENOISE, "num_images=1", "overwrite=true"], out))
    assert "images/00000.png" in str(info.value)
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before


def test_refusal_without_metrics_json_says_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.png").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="output directory not empty") as info:
        claim(tmp_path, resume=False, overwrite=False)
    text = str(info.value)
    assert "results of an earlier run" not in text
    assert f"{tmp_path} holds no metrics.json, but images/ holds 1 file (images/cat.png)" in text


# ---------------------------------------------------------------- 2. a refused run keeps the recorded config


def test_refused_runs_leave_the_recorded_config_alone(tmp_path: Path) -> None:
    """Hydra writes .hydra/ before run() refuses: run_config.yaml keeps the results' settings, and .hydra/ is
    put back from it."""
    out = tmp_path / "run"
    first = [*TINY, "num_images=1", "task.sigma_y=0.2", f"hydra.run.dir={out}"]
    proc = cli(first)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hydra_files = {name: (out / ".hydra" / name).read_text() for name in ("config.yaml", "overrides.yaml")}
    overrides, config = read_run_config(out)
    assert "task.sigma_y=0.2" in overrides and config["task"]["sigma_y"] == 0.2
    for refused in (["task.sigma_y=0.4"], ["task.sigma_y=0.4", "resume=true"]):  # not empty; other settings
        proc = cli([*TINY, "num_images=1", *refused, f"hydra.run.dir={out}"])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert read_run_config(out) == (overrides, config)
        assert {name: (out / ".hydra" / name).read_text() for name in hydra_files} == hydra_files


def test_sweep_report_shows_the_settings_of_the_results(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    base = ["-m", *DENOISE, "num_images=1", f"hydra.sweep.dir={sweep}"]
    assert cli([*base, "task.sigma_y=0.2,0.3"]).returncode == 0
    proc = cli([*base, "task.sigma_y=0.5,0.6"])  # the same sweep dir again: both jobs refused
    assert proc.returncode != 0 and "output directory not empty" in proc.stdout + proc.stderr
    jobs = load_jobs(sweep)
    assert [job.overrides["task.sigma_y"] for job in jobs] == ["0.2", "0.3"]
    assert [job.status for job in jobs] == ["ok", "ok"]
    rows = (sweep / "summary.csv").read_text()
    assert "0.2" in rows and "0.5" not in rows and "0.6" not in rows


def test_report_falls_back_to_hydra_files_for_older_jobs(finished: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job = copy(finished, sweep)
    (job / RUN_CONFIG).unlink()
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["task.sigma_y=0.7"]))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": "ssim"}))
    report = write_report(sweep)
    assert load_jobs(sweep)[0].overrides == {"task.sigma_y": "0.7"} and report.metric == "ssim"


# ---------------------------------------------------------------- 3./4. what resume keeps


def test_resume_keeps_the_seconds_of_the_rows_it_keeps(finished: Path, tmp_path: Path) -> None:
    out = copy(finished, tmp_path)
    previous = load(out)
    previous["seconds"] = 10.0
    (out / "images" / "00001.png").unlink()
    recorder = Recorder(out, {**previous, "num_images": 2}, has_truth=True, previous=previous)
    assert recorder.done == {0} and recorder.seconds == pytest.approx(5.0)
    assert recorder.result("ok")["seconds_per_image"] == pytest.approx(5.0)


DAMAGE = {
    "empty_png": ("images/00001.png", b""),
    "corrupt_png": ("images/00001_truth.png", b"\x89PNG\r\n\x1a\nnot really"),
    "truncated_png": ("images/00001_measurement.png", None),
    "wrong_size_png": ("images/00001.png", "resize"),
    "empty_pt": ("measurements/00001.pt", b""),
    "corrupt_pt": ("measurements/00001.pt", b"PK\x03\x04garbage"),
    "missing_pt": ("measurements/00001.pt", "delete"),
}


@pytest.mark.parametrize(("name", "damage"), DAMAGE.values(), ids=DAMAGE.keys())
def test_resume_redoes_damaged_outputs(
    finished: Path, tmp_path: Path, sampled: list[int], caplog: pytest.LogCaptureFixture, name: str, damage: Any
) -> None:
    out = copy(finished, tmp_path)
    path = out / name
    if damage is None:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "resize":
        with Image.open(path) as img:
            img.resize((img.width * 2, img.height * 2)).save(path)
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # and a later resume finds everything whole
            diffexp.run(make_cfg([*DENOISE, "num_images=2", "resume=true"], out))
    assert sampled == [1] and f"{path} is " in caplog.text and "image 1 is sampled again" in caplog.text
    if path.suffix == ".pt":  # a zip archive whose bytes vary: compare the tensors
        again, original = (torch.load(p, weights_only=True) for p in (path, finished / name))
        assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in again)
    else:
        assert path.read_bytes() == (finished / name).read_bytes()
    assert (out / "grid.png").read_bytes() == (finished / "grid.png").read_bytes()


# ---------------------------------------------------------------- 5. exact settings


def test_settings_are_compared_exactly() -> None:
    assert settings_diff({"seed": 2**53}, {"seed": 2**53 + 1}) == [f"seed: {2**53} → {2**53 + 1}"]
    assert settings_diff({"seed": 2.0**53}, {"seed": 2**53 + 1}) != []
    assert settings_diff({"a": 200.0, "b": 3, "c": [1, {"d": 2}]}, {"a": 200, "b": 3.0, "c": [1.0, {"d": 2.0}]}) == []
    assert settings_diff({"flag": True}, {"flag": 1}) != [] and settings_diff({"x": "1"}, {"x": 1}) != []


def test_resume_refuses_a_seed_that_differs_beyond_float_precision(tmp_path: Path) -> None:
    diffexp.run(make_cfg([*DENOISE, "num_images=1", f"seed={2**53}"], tmp_path))
    with pytest.raises(ConfigError, match=rf"seed: {2**53} → {2**53 + 1}"):
        diffexp.run(make_cfg([*DENOISE, "num_images=1", "resume=true", f"seed={2**53 + 1}"], tmp_path))


def test_settings_hash_is_unchanged_for_ordinary_values(tmp_path: Path) -> None:
    """The hash of the recorded settings stays what it was before #21 (floats for every integer) wherever the
    float is exact, so older directories keep their hash."""
    cfg = make_cfg([*DENOISE, "sampler.num_steps=7", "seed=3"], tmp_path)

    def old(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: old(v) for k, v in value.items()}
        if isinstance(value, list):
            return [old(v) for v in value]
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    text = json.dumps(old(settings_values(cfg)), sort_keys=True, default=str)
    assert settings_hash(cfg) == hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- 6. a damaged metrics.json, whatever its shape


def shapes(good: dict[str, Any]) -> dict[str, Any]:
    row = good["per_image"][0]
    return {
        "list": [good],
        "string": "metrics",
        "null": None,
        "no_per_image": {k: v for k, v in good.items() if k != "per_image"},
        "per_image_dict": {**good, "per_image": {"0": row}},
        "rows_not_dicts": {**good, "per_image": [1, "two", None]},
        "index_missing": {**good, "per_image": [{k: v for k, v in row.items() if k != "index"}]},
        "index_string": {**good, "per_image": [{**row, "index": "0"}]},
        "index_negative": {**good, "per_image": [{**row, "index": -1}]},
        "index_bool": {**good, "per_image": [{**row, "index": True}]},
        "index_twice": {**good, "per_image": [row, row]},
        "psnr_string": {**good, "per_image": [{**row, "psnr": "high"}]},
        "psnr_list": {**good, "per_image": [{**row, "psnr": [1.0]}]},
        "psnr_nan": {**good, "per_image": [{**row, "psnr": float("nan")}]},
        "diverged_string": {**good, "per_image": [{**row, "diverged": "yes"}]},
        "diverged_no_limit": {**good, "per_image": [{**row, "diverged": True}]},
        "settings_values_list": {**good, "settings_values": [1, 2]},
        "seconds_string": {**good, "seconds": "ten"},
        "seconds_negative": {**good, "seconds": -1.0},
        "seconds_infinite": {**good, "seconds": float("inf")},
        "metrics_list": {**good, "metrics": [1]},
        "metrics_stats_string": {**good, "metrics": {"psnr": {"mean": "x", "std": 0.0}}},
        "status_number": {**good, "status": 3},
    }


SHAPES = list(shapes({"per_image": [{"index": 0}]}))


@pytest.mark.parametrize("shape", SHAPES)
def test_damaged_metrics_json_is_refused_naming_its_path(finished: Path, tmp_path: Path, shape: str) -> None:
    out = copy(finished, tmp_path)
    good = load(out)
    bad = shapes(good)[shape]
    path = out / "metrics.json"
    path.write_text(json.dumps(bad))  # NaN/Infinity as JSON writes them
    with pytest.raises(ConfigError, match=rf"resume=true refused:\n  {path} is damaged"):
        claim(out, resume=True, overwrite=False)
    if bad is not None:  # (previous=None is no resume)
        with pytest.raises(ConfigError, match=rf"{path} is damaged"):
            Recorder(out, good, has_truth=True, previous=bad)
    if shape != "no_per_image":  # the sweep report reads that shape (it needs no rows); else a failed row
        result = write_report(tmp_path)
        assert [(job.status, str(path) in (job.error or "")) for job in load_jobs(tmp_path)] == [("failed", True)]
        assert result.rows[0]["status"] == "failed"


def test_damaged_metrics_json_through_the_cli(finished: Path, tmp_path: Path) -> None:
    out = copy(finished, tmp_path)
    result = load(out)
    result["per_image"] = [1, 2]
    (out / "metrics.json").write_text(json.dumps(result))
    proc = cli([*DENOISE, "num_images=2", "resume=true", f"hydra.run.dir={out}"], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{out / 'metrics.json'} is damaged (it is not a diffexp metrics.json: per_image[0]" in proc.stderr


# ---------------------------------------------------------------- 7. atomic writes; a garbled job file


class FullDisk:
    """``open_temp`` whose files raise ENOSPC after ``after`` bytes, for the paths ``full(path)`` picks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, full: Any, after: int = 10) -> None:
        self.real, self.full, self.after, self.failed = diffexp.rundir.files.open_temp, full, after, []
        monkeypatch.setattr(diffexp.rundir.files, "open_temp", self)

    def __call__(self, path: Path) -> tuple[IO[bytes], Path]:
        stream, tmp = self.real(path)
        return (Filling(stream, self.after, self.failed, path) if self.full(path) else stream), tmp


class Filling:
    def __init__(self, stream: IO[bytes], left: int, failed: list[Path], path: Path) -> None:
        self.stream, self.left, self.failed, self.path = stream, left, failed, path

    def write(self, data: Any) -> int:
        data = bytes(data)
        if len(data) > self.left:
            self.stream.write(data[: self.left])
            self.stream.flush()
            self.failed.append(self.path)
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(data)
        return self.stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __enter__(self) -> Filling:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stream.close()


ATOMIC = {  # the file whose write fails: (its path, num_images of the resume, a file deleted to redo image 1)
    "json": ("metrics.json", 3, None),
    "grid": ("grid.png", 2, None),
    "png": ("images/00001.png", 2, "measurements/00001.pt"),
    "pt": ("measurements/00001.pt", 2, "images/00001.png"),
}


@pytest.mark.parametrize(("name", "num_images", "redo"), ATOMIC.values(), ids=ATOMIC.keys())
def test_a_failed_write_leaves_the_old_file_and_no_partial_one(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, num_images: int, redo: str | None
) -> None:
    """Each kind of file (JSON, grid, PNG, .pt) is written atomically: the earlier version stays whole."""
    out = copy(finished, tmp_path)
    before = (out / name).read_bytes()
    if redo is not None:
        (out / redo).unlink()
    disk = FullDisk(monkeypatch, lambda path: path == out / name)
    with pytest.raises(RunDirError, match=rf"{out / name}: no space left on device"):
        diffexp.run(make_cfg([*DENOISE, f"num_images={num_images}", "resume=true"], out))
    assert set(disk.failed) == {out / name} and leftovers(out) == [] and (out / name).read_bytes() == before


def test_job_error_file_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from diffexp.tracking.callbacks import SweepReport

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom " * 100))
    FullDisk(monkeypatch, lambda path: path.name == "job_error.json", after=50)
    SweepReport().on_job_end(config, failed)
    assert list(tmp_path.iterdir()) == [] and "cannot write" in capsys.readouterr().err
    monkeypatch.undo()
    SweepReport().on_job_end(config, failed)
    assert json.loads((tmp_path / "job_error.json").read_text())["error"].startswith("ValueError: boom")


GARBLED = {
    "metrics.json": ("metrics.json", "{"),
    "metrics.json_shape": ("metrics.json", '{"metrics": [1]}'),
    "overrides.yaml": (".hydra/overrides.yaml", "- a=1\n  b: [\n"),
    "config.yaml": (".hydra/config.yaml", "optimized_metric: [\n"),
    "config.yaml_list": (".hydra/config.yaml", "- 1\n"),
    "job_error.json": ("job_error.json", "{not json"),
    "run_config.yaml": (RUN_CONFIG, "overrides: [\n"),
    "binary": ("metrics.json", b"\xff\xfe\x00garbage"),
}


@pytest.mark.parametrize(("name", "content"), GARBLED.values(), ids=GARBLED.keys())
def test_one_garbled_job_file_does_not_stop_the_report(tmp_path: Path, name: str, content: str | bytes) -> None:
    sweep = tmp_path / "sweep"
    for num, psnr in enumerate((20.0, 25.0)):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"sampler.step_size={num + 1}"]))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": "psnr"}))
        result = {"status": "ok", "error": None, "num_images": 1, "num_finished": 1, "nfe": 2,
                  "seconds_per_image": 0.1, "metrics": {"psnr": {"mean": psnr, "std": 0.0}}}
        (job / "metrics.json").write_text(json.dumps(result))
    bad = sweep / "1" / name
    if name == "job_error.json":
        (sweep / "1" / "metrics.json").unlink()  # a job that failed before its results
    if name == RUN_CONFIG:
        bad.write_text("")
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    report = write_report(sweep)
    jobs = load_jobs(sweep)
    assert jobs[0].status == "ok" and jobs[1].status == "failed" and str(bad) in jobs[1].error
    assert report.best is not None and report.best["jobs"] == "0"
    assert (sweep / "summary.md").is_file() and not list(sweep.glob(".*.tmp"))


# ---------------------------------------------------------------- 8. disk full


def test_disk_full_mid_run_is_one_message_and_metrics_json_says_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second image's PNG hits a full disk: one clean message (exit 2), metrics.json ``failed`` with the
    first image kept, no partial file."""
    disk = FullDisk(monkeypatch, lambda path: path.name == "00001.png")
    cfg = make_cfg([*DENOISE, "num_images=3", "batch_size=1"], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        clean_errors(lambda: diffexp.run(cfg))
    assert exit_info.value.code == 2 and disk.failed == [tmp_path / "images" / "00001.png"]
    err = capsys.readouterr().err
    assert errors(err) == 1 and "no space left on device" in err and "Traceback" not in err
    result = load(tmp_path)
    assert result["status"] == "failed" and "no space left on device" in result["error"]
    assert [row["index"] for row in result["per_image"]] == [0] and leftovers(tmp_path) == []


def test_disk_full_for_every_file_says_metrics_json_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """From the second batch on nothing can be written, metrics.json included: the log says that it still says
    running; the file itself is the whole earlier version."""
    state = {"full": False}
    real_add = Recorder.add

    def add(self: Recorder, *args: Any, **kwargs: Any) -> None:
        real_add(self, *args, **kwargs)
        state["full"] = True  # after the first batch

    monkeypatch.setattr(Recorder, "add", add)
    FullDisk(monkeypatch, lambda path: state["full"])
    with caplog.at_level(logging.ERROR), pytest.raises(RunDirError, match="no space left on device"):
        diffexp.run(make_cfg([*DENOISE, "num_images=2", "batch_size=1"], tmp_path))
    assert f"{tmp_path / 'metrics.json'} could not be updated with the run's end" in caplog.text
    assert "it still says status 'running'" in caplog.text
    result = load(tmp_path)
    assert result["status"] == "running" and len(result["per_image"]) == 1 and leftovers(tmp_path) == []


def test_disk_full_at_the_last_write_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FullDisk(monkeypatch, lambda path: path.name == "grid.png")
    with pytest.raises(RunDirError, match=rf"{tmp_path / 'grid.png'}: no space left on device"):
        diffexp.run(make_cfg([*DENOISE, "num_images=1"], tmp_path))
    assert load(tmp_path)["status"] == "ok" and not (tmp_path / "grid.png").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- 9. the directory deleted mid-run


@pytest.mark.parametrize("when", ["while_sampling", "before_finish"])
def test_run_directory_deleted_mid_run_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, when: str,
) -> None:
    out = tmp_path / "run"
    if when == "while_sampling":
        real = diffexp.experiment.solve_batch
        calls: list[int] = []

        def solve(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                shutil.rmtree(out)
            return real(*args, **kwargs)

        monkeypatch.setattr(diffexp.experiment, "solve_batch", solve)
    else:
        real_finish = Recorder.finish

        def finish(self: Recorder, *args: Any, **kwargs: Any) -> Any:
            shutil.rmtree(out)
            return real_finish(self, *args, **kwargs)

        monkeypatch.setattr(Recorder, "finish", finish)
    cfg = make_cfg([*DENOISE, "num_images=2", "batch_size=1"], out)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        clean_errors(lambda: diffexp.run(cfg))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and "FileNotFoundError" not in err
    assert errors(err) == 1 and f"{out} was deleted (or moved) while the run was writing it" in err
    assert "was deleted" not in caplog.text  # said once, on stderr
