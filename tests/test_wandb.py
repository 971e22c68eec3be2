"""logger=wandb: runs through the real CLI in offline mode, then reads back what W&B wrote."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cli
from PIL import Image

WANDB_FAST = [
    "model=tiny", "data=synthetic", "task=deblur", "sampler=dps", "logger=wandb", "num_images=2",
    "batch_size=2", "sampler.num_steps=3", "metrics.lpips=false",
]


def inspect(run_dir: Path, *, summary: bool) -> Any:
    """``python -m wandb leet inspect --json [--summary] <run_dir>``: the summary object, or every record."""
    args = ["leet", "inspect", "--json", *(["--summary"] if summary else []), str(run_dir)]
    out = subprocess.run([sys.executable, "-m", "wandb", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.strip()]


def record(records: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r[kind] for r in records if r["type"] == kind]
    return found


def offline_run(job_dir: Path) -> Path:
    (run_dir,) = (job_dir / "wandb").glob("offline-run-*")
    return run_dir


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def assert_summary_matches(summary: dict[str, Any], result: dict[str, Any]) -> None:
    """Every mean/std of metrics.json (reconstruction and baseline) is in the W&B summary, plus nfe etc."""
    for prefix, block in (("", result["metrics"]), ("baseline/", result["baseline"])):
        assert block
        for metric, stats in block.items():
            for stat, value in stats.items():
                assert summary.get(f"{prefix}{metric}/{stat}") == pytest.approx(value), (prefix, metric, stat)
    assert summary["status"] == result["status"]
    assert summary["nfe"] == result["nfe"]
    assert summary["seconds_per_image"] == pytest.approx(result["seconds_per_image"])


def test_single_run_logs_summary_config_images_table_and_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli([*WANDB_FAST, "logger.log_every=1", "logger.tags=[smoke]", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    run_dir = offline_run(out)
    info = inspect(run_dir, summary=True)

    assert info["state"] == "finished" and info["exit_code"] == 0
    assert_summary_matches(info["summary"], result)
    assert info["project"] == "diffexp"
    assert sorted(info["tags"]) == ["deblur", "dps", "smoke", "tiny"]
    config = info["config"]
    assert config["output_dir"] == str(out)  # ${hydra:runtime.output_dir}, resolved
    assert config["sampler"]["num_steps"] == 3 and config["task"]["operator"]["sigma_y"] == 0.05  # ${task.sigma_y}
    assert config["model"]["_target_"] == "diffexp.model.tiny_model"

    records = inspect(run_dir, summary=False)
    run = record(records, "run")
    assert run["job_type"] == "deblur" and not run.get("run_group")
    assert "sampler.num_steps=3" in run["display_name"]
    defined = [r["metric"] for r in records if r["type"] == "metric"]
    assert {"glob_name": "sampling/*", "step_metric": "sampling/step"}.items() <= defined[-1].items()

    # log_every=1: one residual and one x0 preview per sampling step (one batch of 2 images)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps = [item for item in history if "sampling/step" in item]
    assert [s["sampling/step"] for s in steps] == [0, 1, 2]
    assert all(np.isfinite(s["sampling/residual"]) and s["sampling/residual"] > 0 for s in steps)
    for s in steps:
        assert pixels(run_dir / "files" / s["sampling/x0.path"]).shape == (16 + 4, 2 * 16 + 6, 3)

    # the grid, as uint8 pixels equal to grid.png (a float tensor would come out black)
    grid = run_dir / "files" / info["summary"]["grid"]["path"]
    assert np.array_equal(pixels(grid), pixels(out / "grid.png")) and pixels(grid).max() > 0

    # the per-image table: one row per image with its metrics and thumbnails of truth / measurement / output
    artifact = record(records, "artifact")
    staged = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    table = json.loads(staged["images.table.json"].read_text())
    assert table["columns"][-3:] == ["truth", "measurement", "output"]
    assert len(table["data"]) == result["num_images"]
    for values, expected in zip(table["data"], result["per_image"], strict=True):
        row = dict(zip(table["columns"], values, strict=True))
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), key
        for column, suffix in (("truth", "_truth"), ("measurement", "_measurement"), ("output", "")):
            thumbnail = pixels(staged[row[column]["path"]])
            assert np.array_equal(thumbnail, pixels(out / "images" / f"{expected['index']:05d}{suffix}.png"))


def test_multirun_gives_one_run_per_job_in_one_group_and_a_report_run(tmp_path: Path) -> None:
    sweep = tmp_path / "step_sweep"
    # 1e30 diverges during sampling: that job fails after its W&B run started
    proc = cli(["-m", *WANDB_FAST, "sampler.num_steps=2", "sampler.step_size=0.1,1.0,1e30", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 1, proc.stderr[-3000:]  # Hydra reports the failed job
    assert "SamplingDivergedError" in proc.stderr

    infos, runs = [], []
    for num in range(3):
        run_dir = offline_run(sweep / str(num))
        infos.append(inspect(run_dir, summary=True))
        runs.append(record(inspect(run_dir, summary=False), "run"))
    assert len({info["run_id"] for info in infos}) == 3
    assert {run["run_group"] for run in runs} == {"step_sweep"}
    assert len({run["display_name"] for run in runs}) == 3
    assert "sampler.step_size=1.0" in runs[1]["display_name"]
    for num, info in enumerate(infos):
        result = json.loads((sweep / str(num) / "metrics.json").read_text())
        assert info["config"]["sampler"]["step_size"] == [0.1, 1.0, 1e30][num]
        assert info["summary"]["status"] == result["status"]
        if num < 2:
            assert info["state"] == "finished" and info["exit_code"] == 0
            assert_summary_matches(info["summary"], result)
    assert infos[2]["state"] == "failed" and infos[2]["exit_code"] == 1
    assert infos[2]["summary"]["error"].startswith("SamplingDivergedError")

    # the sweep report: written by the Hydra callback although a job failed, and logged as a report run
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[2]["error"].startswith("SamplingDivergedError")
    report_dir = offline_run(sweep)
    report = inspect(report_dir, summary=True)
    report_run = record(inspect(report_dir, summary=False), "run")
    assert report_run["job_type"] == "report" and report_run["run_group"] == "step_sweep"
    assert report["state"] == "finished" and report["summary"]["summary"]["nrows"] == 3
    for name in ("summary.csv", "summary.md", "metric_vs_sampler.step_size.png"):
        assert (report_dir / "files" / name).read_bytes() == (sweep / name).read_bytes()


def test_failed_online_start_falls_back_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffexp.loggers.wandb import choose_mode, init_run

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert choose_mode("auto") == "offline"  # no credentials: offline, no account needed
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert choose_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: the online start fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = init_run(mode="auto", init_timeout=2, directory=tmp_path, project="p", config={"a": 1})
    try:
        assert run.offline
        assert any("logging offline instead" in str(w.message) for w in caught)
    finally:
        run.finish()
    assert inspect(offline_run(tmp_path), summary=True)["config"] == {"a": 1}


def test_bad_mode_is_rejected() -> None:
    from diffexp.loggers.wandb import choose_mode

    with pytest.raises(ValueError, match=r"logger\.mode='cloud'"):
        choose_mode("cloud")


@pytest.mark.parametrize(
    ("sweep_dir", "group"),
    [("outputs/multirun/2026-11-28/10-00-00", "2026-11-28_10-00-00"), ("outputs/tune/deblur-dps", "deblur-dps")],
)
def test_sweep_group_keeps_the_date_of_the_default_sweep_dir(sweep_dir: str, group: str) -> None:
    from diffexp.loggers.wandb import sweep_group

    assert sweep_group(sweep_dir) == group
