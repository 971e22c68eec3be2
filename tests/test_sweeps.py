"""Sweeps: multiruns through the real CLI with the joblib and submitit launchers, an Optuna search, the
launcher configs, and the sweep report (``diffexp.tracking.report``). The basic launcher with W&B is in test_wandb.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONF, ROOT, cli, on_cpu
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from diffexp.tracking.report import headline, load_jobs, main, series, write_report

TINY_JOB = [  # SDEdit denoising with the tiny random model: cheap, and its runs end ok (not diverged)
    "model=tiny", "data=synthetic", "task=denoise", "sampler=ddpm", "num_images=2", "batch_size=2",
    "sampler.num_steps=2", "metrics.lpips=false",
]
SWEEP_FAST = [*TINY_JOB, "logger=none"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def assert_report_matches_jobs(sweep: Path, statuses: list[str], key: str) -> list[dict[str, str]]:
    """summary.csv holds each job's metrics.json numbers; summary.md marks the best PSNR; the plot exists."""
    rows = read_csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == statuses
    best = None
    for num, row in enumerate(rows):
        assert row["job"] == str(num)
        if row["status"] != "ok":
            continue
        result = json.loads((sweep / str(num) / "metrics.json").read_text())
        for metric, stats in result["metrics"].items():
            for stat, value in stats.items():
                assert (float(row[f"{metric}_{stat}"]) if row[f"{metric}_{stat}"] else None) == pytest.approx(value)
        assert int(row["nfe"]) == result["nfe"]
        if best is None or result["metrics"]["psnr"]["mean"] > best[1]:
            best = (num, result["metrics"]["psnr"]["mean"])
    assert [r["best"] for r in rows] == ["True" if num == best[0] else "False" for num in range(len(rows))]
    marked = [line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| ★")]
    assert len(marked) == 1 and f"| ★ | {best[0]} | ok |" in marked[0] and f"{best[1]:.4g} ±" in marked[0]
    with Image.open(sweep / f"metric_vs_{key}.png") as img:
        assert img.width > 300 and img.height > 200
    return rows


@pytest.mark.slow
def test_parallel_multirun_with_a_failing_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *SWEEP_FAST,
                "task.sigma_y=0.2,0.4,-1", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "n_jobs=2" in proc.stdout + proc.stderr and "validated against ConfigStore" not in proc.stderr
    rows = assert_report_matches_jobs(sweep, ["ok", "ok", "failed"], "task.sigma_y")
    assert not (sweep / "2" / "metrics.json").exists()  # validation failed before any output
    assert "task.sigma_y=-1" in rows[2]["error"] and rows[2]["error"].startswith("ConfigError")
    # a user error: one clean message from Hydra at the end, no traceback, "Error executing job" once
    assert "Traceback" not in proc.stderr and proc.stderr.count("Error executing job") == 1


@pytest.mark.slow
def test_submitit_local_multirun(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hydra/launcher=submitit_local", *SWEEP_FAST, "task.sigma_y=0.2,0.3,0.4",
                f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((sweep / ".submitit").iterdir())  # each job ran as its own submitit job
    rows = assert_report_matches_jobs(sweep, ["ok", "ok", "ok"], "task.sigma_y")
    assert [r["task.sigma_y"] for r in rows] == ["0.2", "0.3", "0.4"]


def test_optuna_search_of_the_dps_step_size(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # DPS on the tiny random model fits its measurement (status ok, not diverged) only with large steps
    job = [arg for arg in TINY_JOB if arg != "sampler=ddpm"]  # the search's sampler: dps
    proc = cli(["-m", "hparams_search=dps_step_size", "hydra.sweeper.n_trials=3", *job, "sampler.num_steps=4",
                "sampler.step_size=tag(log,interval(10.0,30.0))", "logger=wandb",
                f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for num in range(3):
        (override,) = [o for o in yaml.safe_load((sweep / str(num) / ".hydra" / "overrides.yaml").read_text())
                       if o.startswith("sampler.step_size=")]
        step = float(override.split("=")[1])
        assert 10.0 <= step <= 30.0
        trials[step] = json.loads((sweep / str(num) / "metrics.json").read_text())["metrics"]["psnr"]["mean"]
    best_step = max(trials, key=trials.get)
    assert results["best_value"] == pytest.approx(trials[best_step])
    assert results["best_params"]["sampler.step_size"] == pytest.approx(best_step)
    rows = assert_report_matches_jobs(sweep, ["ok", "ok", "ok"], "sampler.step_size")
    assert float(next(r for r in rows if r["best"] == "True")["sampler.step_size"]) == pytest.approx(best_step)
    # logger=wandb: the report is logged as a run of its own in the sweep dir, next to the trials' runs
    (report_run,) = (sweep / "wandb").glob("offline-run-*")
    assert (report_run / "files" / "summary.md").read_text() == (sweep / "summary.md").read_text()
    assert all(any((sweep / str(num) / "wandb").glob("offline-run-*")) for num in range(3))


def test_hparams_search_composes() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=dps_step_size"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "psnr"
    assert sweeper.params["sampler.step_size"] == "tag(log, interval(0.01, 10.0))"
    assert cfg.sampler.name == "dps" and sweeper.study_name == "dps_step_size"


def fake_job(sweep: Path, num: int, overrides: list[str], psnr: float | None, *, status: str = "ok",
             error: str | None = None, metric: str = "psnr", per_image: list[float] | None = None) -> None:
    """A job directory as Hydra and run(cfg) leave it; psnr None: no metrics.json (the job died).
    ``per_image``: the per-image PSNRs (their mean and population std then replace psnr and 0.5)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": metric}))
    if psnr is None:
        if error is not None:
            (job / "job_error.json").write_text(json.dumps({"error": error, "traceback": "..."}))
        return
    std = 0.5
    if per_image is not None:
        psnr, std = float(np.mean(per_image)), float(np.std(per_image))
    metrics = {"psnr": {"mean": psnr, "std": std}, "lpips": {"mean": 1 / psnr, "std": 0.01}}
    result = {"status": status, "error": error, "num_images": 4, "num_finished": 4 if status == "ok" else 1,
              "nfe": 10, "seconds_per_image": 0.1, "metrics": metrics, "baseline": {"psnr": {"mean": 9.0, "std": 1.0}}}
    if per_image is not None:
        result["num_images"] = result["num_finished"] = len(per_image)
        result["per_image"] = [{"index": i, "psnr": v, "lpips": 1 / v} for i, v in enumerate(per_image)]
    (job / "metrics.json").write_text(json.dumps(result))


@pytest.mark.parametrize("metric", ["psnr", "lpips"])
def test_report_of_a_two_key_grid_with_failed_and_dead_jobs(tmp_path: Path, metric: str) -> None:
    sweep = tmp_path / "grid"
    psnr = {(0.1, 0.05): 20.0, (1.0, 0.05): 24.0, (10.0, 0.05): 22.0, (0.1, 0.1): 18.0, (1.0, 0.1): 21.0}
    for num, ((step, sigma), value) in enumerate(psnr.items()):
        fake_job(sweep, num, ["model=tiny", f"sampler.step_size={step}", f"task.sigma_y={sigma}"], value, metric=metric)
    grid = ["model=tiny", "sampler.step_size=10.0", "task.sigma_y=0.1"]
    fake_job(sweep, 5, grid, None, error="ConfigError: bad", metric=metric)  # raised before metrics.json
    fake_job(sweep, 6, grid, None, metric=metric)  # killed before metrics.json
    fake_job(sweep, 7, grid, 30.0, status="running", metric=metric)  # killed while sampling
    fake_job(sweep, 8, grid, 31.0, status="failed", error="SamplingDivergedError: x", metric=metric)

    main([str(sweep)])

    rows = read_csv(sweep / "summary.csv")
    assert [r["job"] for r in rows] == [str(n) for n in range(9)]
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed"] * 4
    assert rows[5]["error"] == "ConfigError: bad"
    assert rows[6]["error"].startswith("no metrics.json")
    assert rows[7]["error"].startswith("did not finish: 1 of 4 images")
    assert rows[8]["error"] == "SamplingDivergedError: x"
    assert [float(r["psnr_mean"]) for r in rows[:5]] == list(psnr.values())
    assert rows[0]["baseline_psnr_mean"] == "9.0" and rows[0]["model"] == "tiny"
    best = 1  # highest PSNR 24 and, as lpips = 1/psnr here, lowest LPIPS
    assert [r["best"] for r in rows] == ["True" if n == best else "False" for n in range(9)]
    md = (sweep / "summary.md").read_text()
    assert "Fixed: `model=tiny`" in md
    assert "| ★ | 1 | ok | 1.0 | 0.05 | 24 ± 0.5 |" in md
    assert f"best ({'lowest' if metric == 'lpips' else 'highest'} mean {metric}): job 1" in md
    # the four jobs of one configuration: one row, failed, with each distinct error
    assert "|  | 5,6,7,8 | failed | 10.0 | 0.1 |" in md and "ConfigError: bad; no metrics.json" in md

    # one line per value of the other swept key; failed jobs are left out
    assert series(load_jobs(sweep), "sampler.step_size", "psnr") == {
        "task.sigma_y=0.05": [(0.1, 20.0), (1.0, 24.0), (10.0, 22.0)],
        "task.sigma_y=0.1": [(0.1, 18.0), (1.0, 21.0)],
    }
    assert series(load_jobs(sweep), "task.sigma_y", "psnr")["sampler.step_size=1.0"] == [(0.05, 24.0), (0.1, 21.0)]
    for key in ("sampler.step_size", "task.sigma_y"):
        with Image.open(sweep / f"metric_vs_{key}.png") as img:
            assert img.format == "PNG"
    assert not (sweep / "metric_vs_model.png").exists()  # not swept


def test_report_pools_seeds_flags_diverged_runs_and_never_stars_a_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "seeds"
    images = {  # (step size, seed) -> per-image PSNR
        (0.1, 0): [20.0, 22.0], (0.1, 1): [21.0, 25.0], (1.0, 0): [26.0, 24.0], (1.0, 1): [22.0, 23.0],
        (10.0, 0): [40.0, 41.0], (10.0, 1): [39.0, 42.0],
    }
    for num, ((step, seed), values) in enumerate(images.items()):
        status = "diverged" if step == 10.0 and seed == 1 else "ok"  # the best PSNR, but one seed diverged
        fake_job(sweep, num, [f"sampler.step_size={step}", f"seed={seed}"], 0.0, status=status, per_image=values)

    main([str(sweep)])

    md = (sweep / "summary.md").read_text()
    pooled = images[(1.0, 0)] + images[(1.0, 1)]
    assert "Pooled over seed" in md
    assert f"| ★ | 2,3 | ok | 1.0 | {np.mean(pooled):.4g} ± {np.std(pooled):.2g} |" in md
    assert f"| ⚠ | 4,5 | ok 1, diverged 1 | 10.0 | {np.mean(images[(10.0, 0)] + images[(10.0, 1)]):.4g} ±" in md
    assert md.count("| ★") == 1 and "★ best (highest mean psnr): jobs 2,3 (sampler.step_size=1.0)" in md
    assert "⚠ diverged:" in md and not (sweep / "metric_vs_seed.png").exists()
    rows = read_csv(sweep / "summary.csv")
    assert [r["best"] for r in rows] == ["False", "False", "True", "True", "False", "False"]  # a configuration
    assert [r["status"] for r in rows][4:] == ["ok", "diverged"]
    # only configurations whose runs all ended ok are plotted; seeds pooled into one point
    assert series(load_jobs(sweep), "sampler.step_size", "psnr") == {
        "all": [(0.1, pytest.approx(np.mean(images[(0.1, 0)] + images[(0.1, 1)]))), (1.0, pytest.approx(np.mean(pooled)))]
    }
    report = write_report(sweep)
    assert [row["n"] for row in report.rows] == [4, 4, 4] and [row["seeds"] for row in report.rows] == [2, 2, 2]
    assert report.best["sampler.step_size"] == 1.0 and report.best["psnr_std"] == pytest.approx(np.std(pooled))
    out = capsys.readouterr().out  # main prints the files, the table's top rows and the best line
    assert "| ★ | 2,3 | ok | 1.0 |" in out and out.rstrip().endswith("jobs 2,3 (sampler.step_size=1.0): " + f"{np.mean(pooled):.4g}")


def test_headline_keeps_the_best_row_beyond_the_top_rows(tmp_path: Path) -> None:
    sweep = tmp_path / "long"
    for num in range(15):
        fake_job(sweep, num, [f"sampler.step_size={num + 1}"], 10.0 + num)
    text = headline(write_report(sweep), max_rows=5)
    lines = text.splitlines()
    assert sum(line.startswith("| ") for line in lines) == 1 + 5 + 1 + 1  # header, 5 rows, "... more", the best
    assert "| ... 10 more rows in" in text and "| ★ | 14 | ok | 15 |" in text
    assert lines[-1].startswith("★ best (highest mean psnr): job 14")


def test_report_of_a_directory_that_is_not_a_sweep_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".hydra").mkdir()  # a single run's output directory
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a sweep directory (it is a single run's output directory)" in err
    assert "Traceback" not in err


def test_multirun_with_an_invalid_option_reports_once_without_traceback(tmp_path: Path) -> None:
    proc = cli(["-m", "task=nonexistent", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=120)
    assert proc.returncode == 2
    assert "task=nonexistent: no such option; allowed: deblur, denoise, generate" in proc.stderr
    assert "Traceback" not in proc.stderr and "holds no Hydra job" not in proc.stderr


def test_wandb_sweep_file_command_composes_and_runs(tmp_path: Path) -> None:
    """The command that `wandb agent` builds from conf/wandb_sweep.yaml (its own functions, no network) runs."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    spec = yaml.safe_load((ROOT / "conf" / "wandb_sweep.yaml").read_text())
    assert spec["program"] == "run.py" and spec["metric"] == {"name": "psnr/mean", "goal": "maximize"}
    params = {}
    for key, space in spec["parameters"].items():  # one point of the search space
        params[key] = {"value": space["values"][0] if "values" in space else space["max"]}
    sweep_vars = create_sweep_command_args({"args": params})
    sweep_vars.update(interpreter=[sys.executable], program=[str(ROOT / spec["program"])], env=[])
    command = []
    for chunk in create_sweep_command(list(spec["command"])):  # as wandb_agent.Agent._command_run
        command += sweep_vars.get(chunk[2:-1]) or [] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    assert command[:2] == [sys.executable, str(ROOT / "run.py")]
    assert all(arg in command for arg in sweep_vars["args_no_hyphens"])
    fast = ["model=tiny", "data=synthetic", "num_images=1", "batch_size=1", "sampler.num_steps=2",
            "metrics.lpips=false", f"hydra.run.dir={tmp_path / 'run'}"]  # keys the sweep does not set
    proc = subprocess.run([*command, *on_cpu(fast)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert result["metrics"]["psnr"]["mean"] is not None  # what the sweep's metric psnr/mean reads
    for key, value in params.items():
        assert OmegaConf.select(OmegaConf.create(config), key) == value["value"], key
    assert any((tmp_path / "run" / "wandb").glob("offline-run-*"))
