"""SLURM without a scheduler: our ``hydra/launcher=slurm`` values reach the sbatch script that submitit writes
(through the real Hydra launcher plugin and submitit's SlurmExecutor, a stand-in ``sbatch`` on PATH), and the
README's requeue recipe (a job killed by SIGTERM, then the same sweep again with ``resume=true`` into the same
``hydra.sweep.dir``) ends with the metrics.json of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import submitit.slurm.slurm
from conftest import CONF, ROOT, cli, on_cpu
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate

FAKE_SBATCH = """#!/bin/sh
cp "$1" "{out}"
echo "Submitted batch job 4242"
"""


def test_slurm_settings_reach_the_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-job sweep submitted as one job array: every resource we set becomes its #SBATCH line."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(out=script))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the script calls it on the node
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # the jobs are not run: their results are all that the launcher waits for after sbatch
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "results", lambda self: [JobReturn(status=JobStatus.COMPLETED)])
    sweep = tmp_path / "sweep"
    overrides = [
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
        "hydra.launcher.gpus_per_node=2", "hydra.launcher.cpus_per_task=6", "hydra.launcher.mem_gb=48",
        "hydra.launcher.constraint=a100", "hydra.launcher.array_parallelism=1", "hydra.job.name=zeta",
        "+hydra.launcher.additional_parameters={mail-type: END}", "hydra.launcher.setup=[module load cuda]",
        f"hydra.sweep.dir={sweep}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=cfg)

    returns = launcher.launch([["sampler.step_size=0.1"], ["sampler.step_size=1.0"]], initial_job_idx=0)

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    sbatch = {line for line in script.read_text().splitlines() if line.startswith("#SBATCH")}
    expected = {
        "--partition=gpu", "--time=90", "--gpus-per-node=2", "--cpus-per-task=6", "--mem=48GB",
        "--constraint=a100", "--array=0-1%1", "--nodes=1", "--ntasks-per-node=1", "--signal=USR2@120",
        "--mail-type=END", "--job-name=zeta", "--open-mode=append", "--wckey=submitit",
        f"--output={sweep}/.submitit/%A_%a/%A_%a_0_log.out", f"--error={sweep}/.submitit/%A_%a/%A_%a_0_log.err",
    }
    assert sbatch == {f"#SBATCH {option}" for option in expected}, sorted(sbatch)
    lines = script.read_text().splitlines()
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert "module load cuda" in lines[:srun]  # setup lines run before the job, with this environment's python
    assert f"{sys.executable} -u -m submitit.core._submit" in lines[srun]


# ---------------------------------------------------------------- requeue with resume


# 4 images one by one, long enough to interrupt after the first (as in test_reliability.py)
RUN = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "task=deblur", "sampler=dps",
       "sampler.num_steps=40", "num_images=4", "batch_size=1", "seed=0", "sampler.step_size=3.0"]
VOLATILE = ("seconds", "seconds_per_image")  # wall-clock fields: the only ones allowed to differ


def finished(metrics: Path) -> int:
    try:
        return json.loads(metrics.read_text())["num_finished"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def comparable(job: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((job / "metrics.json").read_text()).items() if k not in VOLATILE}


@pytest.mark.slow
def test_sigterm_then_rerun_with_resume_equals_an_uninterrupted_sweep(tmp_path: Path) -> None:
    """What SLURM does at a time limit (SIGTERM to the job), then the README's recipe: the same multirun
    command with ``resume=true`` and the same ``hydra.sweep.dir``. Only the missing images are sampled."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = cli(["-m", *RUN, f"hydra.sweep.dir={whole}"])
    assert proc.returncode == 0, proc.stderr[-3000:]

    log = tmp_path / "cut.log"
    with log.open("w") as stream:
        job = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "-m", *on_cpu(RUN), f"hydra.sweep.dir={cut}"], cwd=ROOT, stdout=stream,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 120
        while finished(cut / "0" / "metrics.json") < 1 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        job.send_signal(signal.SIGTERM)
        try:
            code = job.wait(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
    assert code == 143, log.read_text()[-3000:]
    cut_short = json.loads((cut / "0" / "metrics.json").read_text())
    assert (cut_short["error"], cut_short["status"]) == ("interrupted by SIGTERM", "failed")
    done = cut_short["num_finished"]
    assert 1 <= done < 4

    proc = cli(["-m", *RUN, "resume=true", f"hydra.sweep.dir={cut}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert comparable(cut / "0") == comparable(whole / "0")
    for png in sorted((whole / "0").rglob("*.png")):
        assert png.read_bytes() == (cut / "0" / png.relative_to(whole / "0")).read_bytes(), png
    steps = (4 - done) * 40  # the rerun's progress bar: the missing images only
    assert f"{steps}/{steps}" in proc.stderr and "160/160" not in proc.stderr
    status = comparable(whole / "0")["status"]  # the report is rewritten from the finished job
    assert f"| 0 | {status} |" in (cut / "summary.md").read_text() and status != "failed"
