"""Sweeps: multiruns through the real CLI with the joblib and submitit launchers, an Optuna search, the
launcher configs, and the sweep report (``diffexp.report``). The basic launcher with W&B is in test_wandb.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONF, cli
from hydra import compose, initialize_config_dir
from PIL import Image

from diffexp.report import load_jobs, main, series

TINY_JOB = [
    "model=tiny", "data=synthetic", "task=deblur", "sampler=dps", "num_images=2", "batch_size=2",
    "sampler.num_steps=2", "metrics.lpips=false",
]
SWEEP_FAST = [*TINY_JOB, "logger=none"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def assert_report_matches_jobs(sweep: Path, statuses: list[str]) -> list[dict[str, str]]:
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
        assert int(row["nfe"]) == result["nfe"] == 2
        if best is None or result["metrics"]["psnr"]["mean"] > best[1]:
            best = (num, result["metrics"]["psnr"]["mean"])
    assert [r["best"] for r in rows] == ["True" if num == best[0] else "False" for num in range(len(rows))]
    marked = [line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| ★")]
    assert len(marked) == 1 and f"| ★ | {best[0]} | ok |" in marked[0] and f"{best[1]:.4g} ±" in marked[0]
    with Image.open(sweep / "metric_vs_sampler.step_size.png") as img:
        assert img.width > 300 and img.height > 200
    return rows


@pytest.mark.slow
def test_joblib_multirun_with_a_failing_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP_FAST,
                "sampler.step_size=0.1,1.0,-1", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "n_jobs=2" in proc.stdout + proc.stderr and "validated against ConfigStore" not in proc.stderr
    rows = assert_report_matches_jobs(sweep, ["ok", "ok", "failed"])
    assert not (sweep / "2" / "metrics.json").exists()  # validation failed before any output
    assert "sampler.step_size=-1" in rows[2]["error"] and rows[2]["error"].startswith("ConfigError")


@pytest.mark.slow
def test_submitit_local_multirun(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hydra/launcher=submitit_local", *SWEEP_FAST, "sampler.step_size=0.1,0.3,1.0",
                f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((sweep / ".submitit").iterdir())  # each job ran as its own submitit job
    rows = assert_report_matches_jobs(sweep, ["ok", "ok", "ok"])
    assert [r["sampler.step_size"] for r in rows] == ["0.1", "0.3", "1.0"]


def test_optuna_search_of_the_dps_step_size(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hparams_search=dps_step_size", "hydra.sweeper.n_trials=3", *TINY_JOB, "logger=wandb",
                f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for num in range(3):
        (override,) = [o for o in yaml.safe_load((sweep / str(num) / ".hydra" / "overrides.yaml").read_text())
                       if o.startswith("sampler.step_size=")]
        step = float(override.split("=")[1])
        assert 0.01 <= step <= 10.0
        trials[step] = json.loads((sweep / str(num) / "metrics.json").read_text())["metrics"]["psnr"]["mean"]
    best_step = max(trials, key=trials.get)
    assert results["best_value"] == pytest.approx(trials[best_step])
    assert results["best_params"]["sampler.step_size"] == pytest.approx(best_step)
    rows = assert_report_matches_jobs(sweep, ["ok", "ok", "ok"])
    assert float(next(r for r in rows if r["best"] == "True")["sampler.step_size"]) == pytest.approx(best_step)
    # logger=wandb: the report is logged as a run of its own in the sweep dir, next to the trials' runs
    (report_run,) = (sweep / "wandb").glob("offline-run-*")
    assert (report_run / "files" / "summary.md").read_text() == (sweep / "summary.md").read_text()
    assert all(any((sweep / str(num) / "wandb").glob("offline-run-*")) for num in range(3))


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("joblib", {"n_jobs": 2}),
        ("submitit_local", {"timeout_min": 60}),
        ("submitit_slurm", {"partition": None, "timeout_min": 240, "gpus_per_node": 1}),
        ("ray", {"ray": {"init": {"address": None, "include_dashboard": False},
                         "remote": {"num_cpus": 1, "num_gpus": 0, "max_calls": 1}}}),
    ],
)
@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated against ConfigStore schema:UserWarning")
def test_launcher_configs_compose(launcher: str, expected: dict[str, Any]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    plugin = {"joblib": "hydra_joblib_launcher", "ray": "hydra_ray_launcher"}.get(launcher, "hydra_submitit_launcher")
    assert cfg.hydra.launcher._target_.startswith(f"hydra_plugins.{plugin}.")
    for key, value in expected.items():
        assert cfg.hydra.launcher[key] == value


def test_hparams_search_composes() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=dps_step_size"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "psnr"
    assert sweeper.params["sampler.step_size"] == "tag(log, interval(0.01, 10.0))"
    assert cfg.sampler.name == "dps" and sweeper.study_name == "dps_step_size"


def fake_job(sweep: Path, num: int, overrides: list[str], psnr: float | None, *, status: str = "ok",
             error: str | None = None, metric: str = "psnr") -> None:
    """A job directory as Hydra and run(cfg) leave it; psnr None: no metrics.json (the job died)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": metric}))
    if psnr is None:
        if error is not None:
            (job / "job_error.json").write_text(json.dumps({"error": error, "traceback": "..."}))
        return
    metrics = {"psnr": {"mean": psnr, "std": 0.5}, "lpips": {"mean": 1 / psnr, "std": 0.01}}
    result = {"status": status, "error": error, "num_images": 4, "num_finished": 4 if status == "ok" else 1,
              "nfe": 10, "seconds_per_image": 0.1, "metrics": metrics, "baseline": {"psnr": {"mean": 9.0, "std": 1.0}}}
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
    assert "| 5 | failed | 10.0 | 0.1 |" in md and "ConfigError: bad" in md

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


def test_report_of_an_empty_dir_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Hydra job directories"):
        main([str(tmp_path)])
