"""The run's own record of its settings, ``run_config.yaml``, next to its results.

Hydra writes ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` into the output directory before ``run`` starts,
also for a run that is then refused (directory not empty, in use, a resume with other settings): those files then
describe the refused run, not the results beside them. ``run_config.yaml`` is written only by a run that claimed
the directory and whose earlier results (if any) it accepted, atomically, before its first image:
``overrides`` (the command-line overrides, as in ``.hydra/overrides.yaml``) and ``config`` (the job's config,
unresolved, as in ``.hydra/config.yaml``). The sweep report and W&B read it, and fall back to ``.hydra/`` for
directories written before it existed. A refused run also puts Hydra's two files back from it
(``restore_hydra_files``), so that ``.hydra/`` matches the results again (``.hydra/hydra.yaml`` is left as the
last invocation wrote it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from diffexp.rundir.files import write_text

log = logging.getLogger(__name__)
RUN_CONFIG = "run_config.yaml"
HEADER = "# written by diffexp when this run claimed the directory: the settings of the results here\n"


class RunConfigUnreadable(ValueError):
    """A run's recorded config (``run_config.yaml`` or ``.hydra/*.yaml``) that cannot be read; names the file."""


def write_run_config(out_dir: Path, cfg: Any) -> None:
    """Record ``cfg`` (unresolved) and the Hydra job's overrides (none outside Hydra) in ``run_config.yaml``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    overrides = [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []
    record = {"overrides": overrides, "config": OmegaConf.to_container(cfg, resolve=False)}
    write_text(Path(out_dir) / RUN_CONFIG, HEADER + OmegaConf.to_yaml(record))


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: UnicodeDecodeError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise RunConfigUnreadable(f"{path} cannot be read: {reason}") from None


def read_run_config(job_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """(overrides, config) of the results in ``job_dir``: from ``run_config.yaml``, else from Hydra's
    ``.hydra/overrides.yaml`` and ``.hydra/config.yaml`` (an older directory; a missing config.yaml reads as {}).
    Raises ``RunConfigUnreadable`` naming the file that is unreadable or of the wrong shape."""
    job_dir = Path(job_dir)
    own = job_dir / RUN_CONFIG
    if own.is_file():
        record = _load(own)
        if not isinstance(record, dict):
            raise RunConfigUnreadable(f"{own} is not a diffexp run_config.yaml (not a mapping)")
        overrides, config = record.get("overrides"), record.get("config")
        paths = (own, own)
    else:
        hydra = job_dir / ".hydra"
        overrides = _load(hydra / "overrides.yaml") or []
        config = _load(hydra / "config.yaml") if (hydra / "config.yaml").is_file() else {}
        config = {} if config is None else config
        paths = (hydra / "overrides.yaml", hydra / "config.yaml")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise RunConfigUnreadable(f"{paths[0]}: the overrides are not a list of strings")
    if not isinstance(config, dict):
        raise RunConfigUnreadable(f"{paths[1]}: the config is not a mapping")
    return overrides, config


def restore_hydra_files(out_dir: Path) -> None:
    """Put ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` back as recorded in ``run_config.yaml`` (after a
    refused run, which Hydra let overwrite them). Nothing without both; a failure is only logged."""
    from omegaconf import OmegaConf

    out_dir = Path(out_dir)
    hydra = out_dir / ".hydra"
    if not (out_dir / RUN_CONFIG).is_file() or not hydra.is_dir():
        return
    try:
        overrides, config = read_run_config(out_dir)
        texts = {"config.yaml": OmegaConf.to_yaml(OmegaConf.create(config)),
                 "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(overrides))}
        for name, text in texts.items():
            path = hydra / name
            if not path.is_file() or path.read_text() != text:  # unchanged after a run that recorded itself
                write_text(path, text)
    except (OSError, ValueError) as err:  # RunConfigUnreadable, UnicodeDecodeError
        log.warning("could not restore %s from %s: %s", hydra, out_dir / RUN_CONFIG, err)
