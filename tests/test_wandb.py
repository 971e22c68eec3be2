"""logger=wandb: runs through the real CLI in offline mode, then reads back what W&B wrote."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import cli
from PIL import Image

WANDB_FAST = [  # SDEdit denoising with the tiny random model: cheap, and its runs end ok (not diverged)
    "model=tiny", "data=synthetic", "task=denoise", "sampler=ddpm", "logger=wandb", "num_images=2",
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
    proc = cli([*WANDB_FAST, "batch_size=1", "logger.log_every=1", "logger.tags=[smoke]", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["status"] == "ok"
    run_dir = offline_run(out)
    info = inspect(run_dir, summary=True)

    assert info["state"] == "finished" and info["exit_code"] == 0
    assert_summary_matches(info["summary"], result)
    assert info["project"] == "diffexp"
    assert sorted(info["tags"]) == ["ddpm", "denoise", "smoke", "tiny"]
    assert (out / ".wandb_run_id").read_text().strip() == info["run_id"] == next(run_dir.glob("run-*.wandb")).stem[4:]
    config = info["config"]
    assert config["output_dir"] == str(out)  # ${hydra:runtime.output_dir}, resolved
    assert config["sampler"]["num_steps"] == 3 and config["task"]["operator"]["sigma_y"] == 0.4  # ${task.sigma_y}
    assert config["model"]["_target_"] == "diffexp.models.diffusion.tiny_model"
    assert config["choices"] == {"model": "tiny", "sampler": "ddpm", "task": "denoise", "noise": "gaussian",
                                 "data": "synthetic", "logger": "wandb", "tuned": "denoise_ddpm"}
    assert config["overrides"]["sampler.num_steps"] == 3 and config["overrides"]["metrics.lpips"] is False

    records = inspect(run_dir, summary=False)
    run = record(records, "run")
    assert run["job_type"] == "denoise" and not run.get("run_group")
    assert "sampler.num_steps=3" in run["display_name"]
    defined = [r["metric"] for r in records if r["type"] == "metric"]
    assert {"glob_name": "sampling/*", "step_metric": "sampling/step"}.items() <= defined[-1].items()

    # log_every=1: one residual and one x0 preview per sampling step; two batches of one image, and the step
    # counts over the run (monotone), not per batch
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps = [item for item in history if "sampling/step" in item]
    assert [s["sampling/step"] for s in steps] == list(range(2 * result["nfe"]))
    assert all(np.isfinite(s["sampling/residual"]) and s["sampling/residual"] > 0 for s in steps)
    for s in steps:
        preview = pixels(run_dir / "files" / s["sampling/x0.path"])  # one 16-px image per batch
        assert preview.shape[0] == preview.shape[1] >= 16 and preview.max() > 0

    # the grid, as uint8 pixels equal to grid.png (a float tensor would come out black), with its caption
    grid = run_dir / "files" / info["summary"]["grid"]["path"]
    assert np.array_equal(pixels(grid), pixels(out / "grid.png")) and pixels(grid).max() > 0
    assert info["summary"]["grid"]["caption"] == "truth | measurement | reconstruction"

    # metrics.json and the composed config are files of the run itself (not links into the output dir)
    for name in ("metrics.json", ".hydra/config.yaml"):
        saved = run_dir / "files" / name
        assert saved.is_file() and not saved.is_symlink() and saved.read_bytes() == (out / name).read_bytes()

    # the per-image table: one row per image with its metrics and thumbnails of truth / measurement / output,
    # staged inside the run's directory (an offline run copied elsewhere keeps its media)
    artifact = record(records, "artifact")
    staged = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    assert all(path.is_relative_to(run_dir) for path in staged.values()), staged
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

    # the console summary (also in the run's log file) ends with the exact command that uploads the run
    sync = f"wandb sync {run_dir}"
    log_file = (out / "run.log").read_text()
    for text in (proc.stdout + proc.stderr, log_file):
        assert f"psnr      {result['metrics']['psnr']['mean']:.2f} ± " in text
        assert f"NFE {result['nfe']}, {result['seconds_per_image']:.2f} s/image" in text
        assert f"grid.png:     {out / 'grid.png'}" in text and f"metrics.json: {out / 'metrics.json'}" in text
        assert text.rstrip().endswith(sync) or f"upload with: {sync}\n" in text

    # resume=true (one more image) continues the same W&B run: one run per output directory
    resumed = cli([*WANDB_FAST, "batch_size=1", "num_images=3", "resume=true", f"hydra.run.dir={out}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    sessions = sorted((out / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and {inspect(d, summary=True)["run_id"] for d in sessions} == {info["run_id"]}
    assert f"upload with: wandb sync {sessions[0]} {sessions[1]}" in resumed.stdout + resumed.stderr
    assert inspect(sessions[1], summary=True)["summary"]["num_finished"] == 3


def test_multirun_over_seeds_names_runs_fully_and_reports_configurations(tmp_path: Path) -> None:
    sweep = tmp_path / "seed_sweep"
    # scoreald diverges on the tiny model (status diverged: flagged, never best); 1e30 fails with NaN
    proc = cli(["-m", *WANDB_FAST, "sampler=ddpm,scoreald", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]

    infos, runs = [], []
    for num in range(4):
        run_dir = offline_run(sweep / str(num))
        infos.append(inspect(run_dir, summary=True))
        runs.append(record(inspect(run_dir, summary=False), "run"))
    assert len({info["run_id"] for info in infos}) == 4
    assert {run["run_group"] for run in runs} == {"seed_sweep"}
    assert len({run["display_name"] for run in runs}) == 4  # the seed is part of the name
    assert "seed=1" in runs[1]["display_name"] and "sampler=ddpm" in runs[1]["display_name"]
    for num, info in enumerate(infos):
        result = json.loads((sweep / str(num) / "metrics.json").read_text())
        assert result["status"] == ("ok" if num < 2 else "diverged")
        assert info["config"]["overrides"]["seed"] == num % 2  # a number, not "1"
        assert info["summary"]["status"] == result["status"]
        assert_summary_matches(info["summary"], result)

    # the report pools seeds: one row per sampler, n = 2 seeds x 2 images; the diverged one is flagged
    md = (sweep / "summary.md").read_text()
    assert "| ★ | 0,1 | ok | ddpm |" in md and "| ⚠ | 2,3 | diverged | scoreald |" in md
    assert md.count("★") == 2  # the row and the "best" line: never a single seed
    assert "★ best (highest mean psnr): jobs 0,1 (sampler=ddpm)" in md
    assert "★ best (highest mean psnr): jobs 0,1" in proc.stdout  # printed at the end of the multirun
    per_image = [row["psnr"] for num in (0, 1)
                 for row in json.loads((sweep / str(num) / "metrics.json").read_text())["per_image"]]
    report_dir = offline_run(sweep)
    report = inspect(report_dir, summary=True)
    report_run = record(inspect(report_dir, summary=False), "run")
    assert report_run["job_type"] == "report" and report_run["run_group"] == "seed_sweep"
    assert report["state"] == "finished" and report["summary"]["summary"]["nrows"] == 2
    from diffexp.tracking.dashboard import TABLES

    assert TABLES["comparison"] in report["summary"]  # the table the dashboard's comparison panel shows
    summary = report["summary"]
    assert summary["best/sampler"] == "ddpm" and summary["best/seeds"] == 2 and summary["best/n"] == 4
    assert summary["best/psnr/mean"] == pytest.approx(np.mean(per_image))
    assert summary["best/psnr/std"] == pytest.approx(np.std(per_image))
    for name in ("summary.csv", "summary.md"):
        assert (report_dir / "files" / name).read_bytes() == (sweep / name).read_bytes()


def test_report_logs_native_charts_of_metric_vs_swept_key(tmp_path: Path) -> None:
    """Through ``python -m diffexp.tracking.wandb`` (what a sweep with a failed job runs at exit): it writes the
    report files and logs them (``log_report``) as a run of their own."""
    from diffexp.tracking.wandb import main
    from test_sweeps import fake_job

    sweep = tmp_path / "grid"
    for num, (step, seed, psnr) in enumerate([(0.1, 0, 20.0), (0.1, 1, 22.0), (1.0, 0, 25.0), (1.0, 1, 27.0)]):
        fake_job(sweep, num, [f"sampler.step_size={step}", f"seed={seed}"], psnr)
    main([str(sweep), "--project", "p", "--mode", "offline", "--init-timeout", "5"])
    assert (sweep / "summary.md").is_file() and (sweep / "summary.csv").is_file()
    run_dir = offline_run(sweep)
    assert inspect(run_dir, summary=True)["project"] == "p"
    summary = inspect(run_dir, summary=True)["summary"]
    assert summary["best/sampler.step_size"] == 1.0 and summary["best/psnr/mean"] == pytest.approx(26.0)
    chart = summary["charts/psnr_vs_sampler_step_size_table"]
    assert chart["_type"] == "table-file" and chart["nrows"] == 2
    table = json.loads((run_dir / "files" / chart["path"]).read_text())
    assert table["columns"] == ["sampler_step_size", "psnr_mean"]
    assert table["data"] == [[0.1, pytest.approx(21.0)], [1.0, pytest.approx(26.0)]]  # numbers, seeds pooled
    assert any("psnr_vs_sampler_step_size" in json.dumps(r) for r in inspect(run_dir, summary=False)
               if r["type"] == "config")  # the custom chart's panel spec (wandb.plot.line)


def test_training_tracker_records_metrics_images_and_summary_and_hints_the_upload(tmp_path: Path) -> None:
    """``WandbRun``, what ``diffexp.training.ddpm`` logs through: history at a step, final summary, the id
    kept for resume, and the console hint of an offline run (none when disabled)."""
    from diffexp.tracking.wandb import WandbRun

    tracker = WandbRun(tmp_path, resume=False, mode="offline", project="p", job_type="train", config={"lr": 1e-3})
    tracker.log_metrics({"loss": 0.25, "lr": 1e-3}, step=50)
    tracker.log_images({"samples": Image.new("L", (8, 8), color=200)}, step=100)
    tracker.log_summary({"final_loss": 0.2})
    tracker.finish(0)
    run_dir = offline_run(tmp_path)
    assert tracker.console_hint() == f"W&B offline; upload with: wandb sync {run_dir}"
    info = inspect(run_dir, summary=True)
    assert info["run_id"] == (tmp_path / ".wandb_run_id").read_text().strip() and info["config"] == {"lr": 1e-3}
    summary = info["summary"]
    assert summary["loss"] == 0.25 and summary["final_loss"] == 0.2 and summary["_step"] == 100
    history = [r["history"]["item"] for r in inspect(run_dir, summary=False) if r["type"] == "history"]
    assert [(item["_step"], "loss" in item, "samples.path" in item) for item in history] == [(50, True, False),
                                                                                             (100, False, True)]
    assert pixels(run_dir / "files" / summary["samples"]["path"]).max() == 200
    disabled = WandbRun(tmp_path / "off", resume=False, mode="disabled", project="p")
    disabled.finish(0)
    assert disabled.console_hint() is None


@pytest.fixture
def fresh_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """wandb with no key, no mode and no netrc, its settings and session credentials reloaded (they are
    cached per process)."""
    import wandb

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    wandb.teardown()
    yield
    wandb.teardown()


def test_a_key_for_the_installed_default_host_means_online(tmp_path: Path, fresh_wandb: None) -> None:
    import wandb
    from wandb.sdk.lib.urls import DEFAULT_BASE_URL

    from diffexp.tracking.wandb import base_url, choose_mode

    assert base_url() == DEFAULT_BASE_URL  # wandb's own default, whatever this version calls it
    assert choose_mode("auto") == "offline"  # no credentials: offline, no account needed
    host = urlsplit(DEFAULT_BASE_URL).netloc
    (tmp_path / "netrc").write_text(f"machine {host}\n  login user\n  password {'f' * 40}\n")
    wandb.teardown()
    assert choose_mode("auto") == "online"  # as after `wandb login` (nothing is contacted)


def _start_offline(tmp_path: Path) -> tuple[Any, float, list[str]]:
    from diffexp.tracking.wandb import init_run

    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = init_run(mode="auto", init_timeout=30, directory=tmp_path, project="p", config={"a": 1})
    seconds = time.monotonic() - start
    run.finish()
    return run, seconds, [str(w.message) for w in caught]


def test_unreachable_host_falls_back_to_offline_at_once(
    tmp_path: Path, fresh_wandb: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    run, seconds, messages = _start_offline(tmp_path)
    assert run.offline and seconds < 10  # not init_timeout=30 s
    assert any("127.0.0.1:9 unreachable" in m and "logging offline instead" in m for m in messages), messages
    assert inspect(offline_run(tmp_path), summary=True)["config"] == {"a": 1}


def test_dns_failure_is_reported_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffexp.tracking import wandb as module

    def no_dns(address: tuple[str, int], timeout: float) -> None:
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(module.socket, "create_connection", no_dns)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert "example.test:443 unreachable (gaierror" in module.host_unreachable("https://example.test", 3)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # behind a proxy, wandb itself is left to try
    assert module.host_unreachable("https://example.test", 3) is None


def test_rejected_key_falls_back_to_offline(tmp_path: Path, fresh_wandb: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

        do_GET = do_POST

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        run, seconds, messages = _start_offline(tmp_path)
    finally:
        server.shutdown()
    assert run.offline and seconds < 20
    assert any("not logged in" in m and "logging offline instead" in m for m in messages), messages


def test_bad_mode_is_rejected() -> None:
    from diffexp.tracking.wandb import choose_mode

    with pytest.raises(ValueError, match=r"logger\.mode='cloud'"):
        choose_mode("cloud")


@pytest.mark.parametrize(
    ("sweep_dir", "group"),
    [("outputs/multirun/2026-11-28/10-00-00", "2026-11-28_10-00-00"), ("outputs/tune/deblur-dps", "deblur-dps")],
)
def test_sweep_group_keeps_the_date_of_the_default_sweep_dir(sweep_dir: str, group: str) -> None:
    from diffexp.tracking.wandb import sweep_group

    assert sweep_group(sweep_dir) == group


def test_sync_command_lists_every_session_of_the_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from diffexp.tracking.wandb import sync_command

    names = ["offline-run-20261129_074440-abc", "offline-run-20261129_074440-abc-1", "offline-run-20261129_080000-abc",
             "offline-run-20261129_074440-other", "run-20261129_074440-abc"]
    for name in names:
        (tmp_path / "wandb" / name).mkdir(parents=True)
    run = SimpleNamespace(id="abc", settings=SimpleNamespace(mode="offline"))
    expected = " ".join(str(tmp_path / "wandb" / name) for name in names[:3])
    assert sync_command(tmp_path, run) == f"wandb sync {expected}"
    assert sync_command(tmp_path, SimpleNamespace(id="abc", settings=SimpleNamespace(mode="online"))) is None
