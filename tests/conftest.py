"""Shared fixtures: compose the real config, run the real CLI, keep W&B offline and local."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAST = ["model=tiny", "data=synthetic", "logger=none", "num_images=2", "batch_size=2", "sampler.num_steps=3"]


@pytest.fixture(autouse=True)
def _offline_services(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(base / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test touches the network (CLI subprocesses inherit these)
    monkeypatch.setenv("HF_HOME", str(base / "hf_home"))  # nor a developer's Hugging Face cache


CPU = "runtime.device=cpu"
# Arguments of run.py after which nothing runs a model (help, config printing, shell completion).
NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--shell-completion", "-sc", "--info", "-i"}


def on_cpu(overrides: list[str]) -> list[str]:
    """``overrides`` plus ``runtime.device=cpu`` unless they set ``runtime.device`` themselves.

    Every test that runs a model runs it on the CPU: with ``device=auto`` a machine with a GPU would pick CUDA, and
    the float16-on-CPU, bit-identical and auto-vs-cpu tests would then test something else. A test that means
    ``auto`` (or ``cuda``) says so with its own ``runtime.device=...``, which is kept.
    """
    if any(o.lstrip("+~").split("=")[0] == "runtime.device" for o in overrides):
        return list(overrides)
    return [*overrides, CPU]


def make_cfg(overrides: list[str], out_dir: Path) -> DictConfig:
    """The real config composed with ``overrides`` (on the CPU unless they set ``runtime.device``: ``on_cpu``),
    writing into ``out_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=on_cpu(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(out_dir)
    return cfg


def cli(args: list[str], cwd: Path = ROOT, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in a subprocess, as a user would run it; on the CPU unless ``args`` set
    ``runtime.device`` (``on_cpu``; not added to help, ``--cfg`` or completion calls, which run no model)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = list(args) if NO_RUN_FLAGS & set(args) else on_cpu(args)
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, here and in CLI subprocesses: the test models are tiny (threads only add
    overhead; on a busy 2-core machine one thread is ~10x faster), and runs compared bit for bit
    across processes must use the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def _lpips_backbone_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME holding an AlexNet LPIPS backbone file (random weights, 244 MB): written once per session."""
    import torchvision

    from diffexp.evaluation.metrics import LPIPS_BACKBONE

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet().state_dict(), checkpoints / LPIPS_BACKBONE)
    return home


@pytest.fixture
def torch_home(_lpips_backbone_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME pointing at the session's AlexNet stand-in (nothing is downloaded); tests must not write to it."""
    monkeypatch.setenv("TORCH_HOME", str(_lpips_backbone_home))
    return _lpips_backbone_home
