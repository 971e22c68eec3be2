"""``python -m diffexp.dashboard``: the W&B workspace and report are built offline, and every key their panels name
is one that an offline run of diffexp actually logged (read back from the run's files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli
from test_wandb import WANDB_FAST, inspect, offline_run

from diffexp.tracking.dashboard import COVERAGE_KEYS, MEDIA, POSTERIOR_KEY, QUALITY, SAMPLE_KEY, TABLES, build, spec


def _panels(dashboard_spec: dict) -> list[dict]:
    return [p for panels in dashboard_spec["sections"].values() for p in panels]


def test_the_workspace_has_one_panel_per_metric_and_swept_key_grouped_by_sampler() -> None:
    dashboard = build("me", "diffexp", group="seed_sweep", keys=["sampler.step_size", "task.sigma_y"])
    found = spec(dashboard)
    scatter = [p for p in _panels(found) if p["type"] == "ScatterPlot"]
    assert {(p["x"], p["y"]) for p in scatter} == {
        (key, template.format(metric=m)) for key in ("sampler.step_size", "task.sigma_y") for m in QUALITY
        for template in (SAMPLE_KEY, POSTERIOR_KEY)
    }
    assert [g.name for g in dashboard.workspace.runset_settings.groupby] == ["sampler.name"]
    assert "seed_sweep" in str(dashboard.workspace.runset_settings.filters)  # the sweep's W&B group only
    tables = {p["table_name"] for p in _panels(found) if "table_name" in p}
    assert tables == set(TABLES.values())
    assert found["workspace"] == "diffexp seed_sweep" and found["report"] == "diffexp: seed_sweep"
    report_panels = [b for b in dashboard.report.blocks if type(b).__name__ == "PanelGrid"]
    assert len(report_panels) == len(found["sections"])  # the report repeats every section


def test_every_key_a_panel_names_is_logged_by_a_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli([*WANDB_FAST, "num_samples=3", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = offline_run(out)
    summary = inspect(run_dir, summary=True)["summary"]
    records = inspect(run_dir, summary=False)
    logged = {key for r in records if r["type"] == "history" for key in r["history"]["item"]}
    found = spec(build("me", "diffexp", keys=["sampler.num_steps"]))
    named = set()
    for panel in _panels(found):
        for field in ("y", "metric"):
            if field in panel:
                named.add(panel[field])
        named.update(panel.get("metrics") or [])
    missing = sorted(k for k in named if k not in summary and "lpips" not in k)  # metrics.lpips=false here
    assert not missing, f"panels name summary keys no run logs: {missing}"
    assert set(COVERAGE_KEYS) <= named
    media = {k.split(".")[0] for k in logged}
    assert {MEDIA["grids"], MEDIA["calibration"], TABLES["per_image"]} <= media, sorted(media)


def test_the_command_prints_the_spec_without_an_account(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "diffexp.dashboard", "--entity", "me", "--key", "sampler.step_size"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    assert "Calibration" in printed["sections"] and printed["workspace"] == "diffexp"
