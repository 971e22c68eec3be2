"""An Optuna study (``hparams_search=dps_step_size``) goes on past a failing trial (``max_failure_rate``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import cli

# TPE's seed 10 draws -1 (invalid: the trial fails in validation), then 1.0. Denoising at σ_y = 1 keeps the
# tiny random UNet's output within the measurement's noise: the trial that runs ends ok, not diverged.
STUDY = [
    "-m", "hparams_search=dps_step_size", "sampler.step_size=choice(-1,1.0)", "hydra.sweeper.sampler.seed=10",
    "hydra.sweeper.n_trials=2", "model=tiny", "data=synthetic", "task=denoise", "task.sigma_y=1.0",
    "num_images=1", "batch_size=1", "sampler.num_steps=2", "metrics.lpips=false", "logger=none",
]


@pytest.mark.slow
def test_failing_trial_does_not_end_the_study(tmp_path: Path) -> None:
    # the plugin's default (max_failure_rate=0) ends the study at the first failure: the control
    control = cli([*STUDY, "hydra.sweeper.max_failure_rate=0.0", f"hydra.sweep.dir={tmp_path / 'control'}"])
    assert control.returncode == 1 and "sampler.step_size=-1 is invalid" in control.stderr, control.stderr[-3000:]
    assert not (tmp_path / "control" / "1").exists()

    sweep = tmp_path / "sweep"
    proc = cli([*STUDY, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (sweep / "summary.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["sampler.step_size"], r["status"]) for r in rows] == [("-1", "failed"), ("1.0", "ok")]
    psnr = json.loads((sweep / "1" / "metrics.json").read_text())["metrics"]["psnr"]["mean"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"sampler.step_size": 1.0} and results["best_value"] == psnr
