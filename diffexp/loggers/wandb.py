"""``logger=wandb``: one Weights & Biases run per job; online when logged in, offline otherwise.

Offline runs land in ``<output dir>/wandb/offline-run-*`` and are uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from diffexp.images import make_grid
from diffexp.outputs import image_name

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")
THUMBNAIL_PX = 128  # longest side of the thumbnails in the per-image table
IMAGE_COLUMNS = (("truth", "_truth"), ("measurement", "_measurement"), ("output", ""))


def logged_in() -> bool:
    """Whether W&B credentials exist: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_mode(mode: str) -> str:
    """``auto``: ``$WANDB_MODE`` when set, else ``online`` when logged in, else ``offline``."""
    if mode not in MODES:
        raise ValueError(f"logger.mode={mode!r} is invalid: allowed {MODES}")
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


def init_run(*, mode: str, init_timeout: float, directory: Path, **kwargs: Any) -> wandb.Run:
    """``wandb.init`` in the chosen mode; an online start that fails falls back to offline with a warning.

    A run still open in this process (a reused joblib worker) is finished first, so that jobs never
    log into each other's runs.
    """
    if wandb.run is not None:
        log.warning("finishing W&B run %s left open in this process by an earlier job", wandb.run.id)
        wandb.run.finish()
    mode = choose_mode(mode)
    settings = wandb.Settings(init_timeout=init_timeout)
    try:
        return wandb.init(mode=mode, dir=str(directory), settings=settings, **kwargs)
    except wandb.errors.Error as err:
        if mode != "online":
            raise
        warnings.warn(
            f"W&B online start failed ({type(err).__name__}: {err}); logging offline instead. "
            f"Upload later with `wandb sync {directory}/wandb/offline-run-*`.",
            stacklevel=2,
        )
        return wandb.init(mode="offline", dir=str(directory), settings=settings, **kwargs)


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a multirun: the name of its sweep directory (the same in every job), prefixed by
    its parent's name when that is a date, as in the default ``outputs/multirun/<date>/<time>``."""
    path = Path(sweep_dir)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name):
        return f"{path.parent.name}_{path.name}"
    return path.name


def hydra_job() -> tuple[str | None, str | None, dict[str, str]]:
    """(group, name, config-group choices) of the current Hydra job; all empty outside one (compose API)."""
    if not HydraConfig.initialized():
        return None, None, {}
    hc = HydraConfig.get()
    group = sweep_group(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    choices = {k: v for k, v in hc.runtime.choices.items() if isinstance(v, str)}
    return group, hc.job.override_dirname or None, choices


def plain_config(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The fully resolved config as a plain dict; ``output_dir`` is set directly (no ``${hydra:}`` needed)."""
    unresolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    unresolved.output_dir = str(output_dir)
    return OmegaConf.to_container(unresolved, resolve=True)


def _thumbnail(path: Path) -> wandb.Image | None:
    if not path.is_file():
        return None
    with Image.open(path) as img:
        img = img.copy()
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return wandb.Image(img)


class WandbLogger:
    """One W&B run per job: config, per-step residual and x̂0 preview, final summary, image table, grid.

    Args:
        cfg: the job's composed config (logged, resolved, as the run's config).
        output_dir: the job's Hydra output directory; the W&B files go to ``<output_dir>/wandb/``.
        project, entity: where the run goes (entity None: the user's default).
        tags: extra tags; the task, sampler and model names are always added.
        group: W&B group; None: the sweep directory's name in a multirun, no group in a single run.
        mode: auto (``$WANDB_MODE`` if set, else online when logged in, else offline), online, offline, disabled.
        log_every: log the data residual and an x̂0 preview every this many sampling steps (0: never).
        preview_images: images in the x̂0 preview (>= 1).
        init_timeout: seconds to wait for an online start before falling back to offline.
    """

    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        *,
        project: str = "diffexp",
        entity: str | None = None,
        tags: Sequence[str] = (),
        group: str | None = None,
        mode: str = "auto",
        log_every: int = 0,
        preview_images: int = 4,
        init_timeout: float = 30.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.log_every = int(log_every)
        self.preview_images = int(preview_images)
        sweep, name, choices = hydra_job()
        model = choices.get("model") or cfg.model.get("name") or str(cfg.model._target_).rsplit(".", 1)[-1]
        self.run = init_run(
            mode=mode,
            init_timeout=init_timeout,
            directory=self.output_dir,
            project=project,
            entity=entity,
            group=group or sweep,
            name=name,
            job_type=cfg.task.name,
            tags=list(dict.fromkeys([cfg.task.name, cfg.sampler.name, model, *tags])),
            config=plain_config(cfg, self.output_dir),
        )
        self.run.define_metric("sampling/step")
        self.run.define_metric("sampling/*", step_metric="sampling/step")

    def log_step(self, state: dict[str, Any], *, operator: Any, y: Any) -> None:
        """Log the mean data residual ‖y - A(x̂0)‖ and a preview of x̂0 at sampling step ``state['i']``."""
        x0 = state["x0"].detach().float()
        residual = state.get("residual")
        if residual is None and operator is not None:
            with torch.no_grad():
                residual = (y - operator(x0)).flatten(1).norm(dim=1)
        data: dict[str, Any] = {"sampling/step": int(state["i"]), "sampling/t": int(state["t"])}
        if residual is not None:
            data["sampling/residual"] = float(residual.detach().float().mean())
        preview = x0[: self.preview_images].clamp(-1, 1)
        data["sampling/x0"] = wandb.Image(make_grid(preview, nrow=len(preview)), caption=f"t={int(state['t'])}")
        self.run.log(data)

    def log_results(self, result: dict[str, Any], output_dir: Path) -> None:
        """Summary (mean/std of every metric and baseline, nfe, s/image, status), image table and grid."""
        summary: dict[str, Any] = {
            key: result.get(key) for key in ("status", "error", "nfe", "seconds_per_image", "num_finished")
        }
        for prefix, block in (("", result.get("metrics") or {}), ("baseline/", result.get("baseline") or {})):
            for metric, stats in block.items():
                summary.update({f"{prefix}{metric}/{stat}": value for stat, value in stats.items()})
        self.run.summary.update(summary)
        data: dict[str, Any] = {}
        rows = result.get("per_image") or []
        if rows:
            data["images"] = self._table(rows, Path(output_dir) / "images")
        grid = Path(output_dir) / "grid.png"
        if grid.is_file():
            with Image.open(grid) as img:
                data["grid"] = wandb.Image(img.copy())
        if data:
            self.run.log(data)

    def _table(self, rows: list[dict[str, Any]], images: Path) -> wandb.Table:
        """One row per image: index, per-image metrics, thumbnails of truth / measurement / output."""
        keys = list(dict.fromkeys(key for row in rows for key in row))
        first = rows[0]["index"]
        pictures = [(col, suffix) for col, suffix in IMAGE_COLUMNS if (images / image_name(first, suffix)).is_file()]
        table = wandb.Table(columns=keys + [col for col, _ in pictures])
        for row in rows:
            thumbs = [_thumbnail(images / image_name(row["index"], suffix)) for _, suffix in pictures]
            table.add_data(*[row.get(key) for key in keys], *thumbs)
        return table

    def finish(self, exit_code: int) -> None:
        """Close the run; a non-zero ``exit_code`` marks it failed."""
        self.run.finish(exit_code=exit_code)


def log_report(
    sweep_dir: Path,
    files: Sequence[Path],
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    *,
    project: str,
    entity: str | None,
    group: str | None,
    mode: str,
    init_timeout: float,
) -> None:
    """Log a sweep report (table, plots, files) as a small run of job_type ``report`` in the sweep's group."""
    run = init_run(
        mode=mode,
        init_timeout=init_timeout,
        directory=sweep_dir,
        project=project,
        entity=entity,
        group=group or sweep_group(sweep_dir),
        name=f"report-{sweep_group(sweep_dir)}",
        job_type="report",
        config={"sweep_dir": str(sweep_dir)},
    )
    exit_code = 1
    try:
        data = [[row.get(c) for c in columns] for row in rows]
        table = wandb.Table(columns=list(columns), data=data, allow_mixed_types=True)
        plots = {f"plots/{f.stem}": wandb.Image(str(f)) for f in files if f.suffix == ".png"}
        run.log({"summary": table, **plots})
        for f in files:
            run.save(str(f), base_path=str(sweep_dir), policy="now")
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
