"""Our launcher configs (conf/hydra/launcher/) compose on top of the plugins' own, and the Ray launcher runs for
real (``hydra/launcher=ray_cluster``): a sweep on a Ray cluster that the test starts and stops, compared file by
file with the same sweep through the basic launcher."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CONF, FAST, cli
from hydra import compose, initialize_config_dir

RAY = Path(sys.executable).with_name("ray")
# FAST with W&B on (offline: conftest) and a job that fails validation in the middle
SWEEP = [*(o for o in FAST if o != "logger=none"), "logger=wandb", "metrics.lpips=false",
         "sampler.step_size=0.5,-1,1.0"]
VOLATILE = ("seconds", "seconds_per_image")  # wall-clock fields of metrics.json


@pytest.mark.parametrize(
    ("launcher", "target", "expected"),
    [
        ("parallel", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2, "prefer": "processes"}),
        ("submitit_local", "hydra_submitit_launcher.submitit_launcher.LocalLauncher", {"timeout_min": 60}),
        ("slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
         {"partition": None, "timeout_min": 240, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32, "qos": None}),
        pytest.param(  # the Ray plugin comes with the `ray` extra, which `make test-all` installs
            "ray_cluster", "hydra_ray_launcher.ray_launcher.RayLauncher",
            {"ray": {"init": {"address": None, "include_dashboard": False, "object_store_memory": None},
                     "remote": {"num_cpus": 1, "num_gpus": 0, "max_calls": 1}}},
            marks=pytest.mark.slow, id="ray_cluster",
        ),
    ],
)
@pytest.mark.filterwarnings("error::UserWarning")  # no "validated against ConfigStore schema" deprecation
def test_launcher_configs_extend_the_plugins(launcher: str, target: str, expected: dict[str, Any]) -> None:
    """Each file sets a few keys over the plugin's schema (its other keys keep the plugin's defaults)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == f"hydra_plugins.{target}"
    for key, value in expected.items():
        assert cfg.hydra.launcher[key] == value


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """``ray start --head`` (2 CPUs, no dashboard, small object store) in a directory of its own; stopped by
    SIGTERM to that one process (``--block`` takes its raylet and workers down with it).

    Yields the cluster's address, the environment a driver needs (token authentication as on a real cluster,
    the token passed in the environment: nothing is written to ~/.ray) and the cluster's working directory."""
    assert RAY.is_file(), "the Ray launcher test needs the ray extra: pip install -e '.[ray]' (make test-all does)"
    home = tmp_path_factory.mktemp("ray_home")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = (home / "ray_start.log").open("w")
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", "--object-store-memory=78643200", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        cwd=home, env={**os.environ, **env, "WANDB_MODE": "disabled"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        address_file = temp / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not address_file.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert address_file.is_file(), (home / "ray_start.log").read_text()[-3000:]
        yield address_file.read_text().strip(), env, home
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def sweep_dir(cwd: Path) -> Path:
    """The one sweep under ``cwd`` (the default ``hydra.sweep.dir``, outputs/multirun/<date>/<time>)."""
    (found,) = (cwd / "outputs" / "multirun").glob("*/*")
    return found


def layout(sweep: Path) -> set[str]:
    """Every path under the sweep, W&B's time stamps, run ids, media hashes and staging names masked."""
    masked = set()
    for path in sweep.rglob("*"):
        rel = path.relative_to(sweep).as_posix()
        rel = re.sub(r"run-\d{8}_\d{6}-\w+", "run-STAMP", rel)
        rel = re.sub(r"run-\w+\.wandb", "run-ID.wandb", rel)
        rel = re.sub(r"/staging/tmp\w+", "/staging/TMP", rel)
        masked.add(re.sub(r"_[0-9a-f]{20}\.", "_HASH.", rel))
    return masked


def comparable(job: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((job / "metrics.json").read_text()).items() if k not in VOLATILE}


def report(sweep: Path) -> list[dict[str, str]]:
    """summary.csv without its wall-clock column."""
    with (sweep / "summary.csv").open() as stream:
        return [{k: v for k, v in row.items() if k != "seconds_per_image"} for row in csv.DictReader(stream)]


@pytest.mark.slow
def test_ray_sweep_writes_what_the_basic_launcher_writes(
    ray_cluster: tuple[str, dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three jobs, the middle one invalid (step_size=-1), into the default sweep dir: Ray's workers run in the
    cluster's working directory, the outputs must land under the driver's all the same. The cluster runs with
    W&B disabled: the sweep passes WANDB_MODE to its jobs as the README says (``runtime_env``)."""
    address, env, home = ray_cluster
    basic, ray = tmp_path / "basic", tmp_path / "ray"
    basic.mkdir()
    ray.mkdir()
    start = time.perf_counter()
    proc_basic = cli(["-m", *SWEEP], cwd=basic)
    basic_s = time.perf_counter() - start
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    start = time.perf_counter()
    proc_ray = cli(["-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}",
                    "+hydra.launcher.ray.init.runtime_env={env_vars: {WANDB_MODE: offline}}", *SWEEP], cwd=ray)
    print(f"basic launcher: {basic_s:.1f} s, ray launcher: {time.perf_counter() - start:.1f} s")
    for proc in (proc_basic, proc_ray):  # Hydra reports the failed job after all of them ran
        assert proc.returncode == 1 and "sampler.step_size=-1 is invalid" in proc.stderr, proc.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in proc_ray.stderr
    a, b = sweep_dir(basic), sweep_dir(ray)
    assert layout(a) == layout(b), sorted(layout(a) ^ layout(b))
    assert not (home / "outputs").exists()

    # every job: same metrics, same PNGs; one W&B offline run in its own directory
    for job in ("0", "2"):
        assert comparable(a / job) == comparable(b / job)
        assert comparable(b / job)["num_finished"] == 2
        pngs = sorted(p.relative_to(a / job) for p in (a / job).rglob("*.png") if "wandb" not in p.parts)
        assert len(pngs) == 2 * 3 + 1
        for png in pngs:
            assert (a / job / png).read_bytes() == (b / job / png).read_bytes(), png
        (run,) = (b / job / "wandb").glob("offline-run-*")
        assert any(run.glob("run-*.wandb"))
    assert not (b / "1" / "metrics.json").exists()  # validation failed before any output

    # the sweep report: the failed job marked failed, the others as the basic launcher's
    rows = report(b)
    assert rows == report(a)
    assert rows[1]["status"] == "failed" and "sampler.step_size=-1 is invalid" in rows[1]["error"]
    assert (b / "summary.md").is_file()
    (report_run,) = (b / "wandb").glob("offline-run-*")  # the report's own W&B run
    assert any(report_run.glob("run-*.wandb"))
