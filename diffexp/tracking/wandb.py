"""``logger=wandb``: one Weights & Biases run per output directory; online when logged in, offline otherwise.

Host and key are wandb's own (``wandb login``, ``WANDB_API_KEY``, ``WANDB_BASE_URL``, its settings files):
nothing here names a host. Offline runs land in ``<output dir>/wandb/offline-run-*`` and are uploaded later
with the ``wandb sync`` command that the run's console summary prints.

Also the W&B side of the sweep report (``diffexp.tracking.report`` writes it, ``log_report`` uploads it):
``python -m diffexp.tracking.wandb <sweep dir> [--project P ...]`` writes a sweep's report and logs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from diffexp.evaluation.fid import summary_values
from diffexp.rundir.images import make_grid
from diffexp.rundir.files import image_name, write_text
from diffexp.rundir.runconfig import RUN_CONFIG, RunConfigUnreadable, read_run_config
from diffexp.tracking.report import PLOTTED, Report, parse_overrides, typed
from diffexp.tracking.report import main as report_cli
from diffexp.settings import Allowed, Finite, Ge, Gt, PositiveInt

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")
THUMBNAIL_PX = 128  # longest side of the thumbnails in the per-image table
IMAGE_COLUMNS = (("truth", "_truth"), ("measurement", "_measurement"), ("output", ""),  # the last three: K > 1
                 ("sample 0", "_s0"), ("posterior mean", "_mean"), ("posterior std", "_std"))
POSTERIOR_BLOCKS = ("posterior_mean", "oracle_best_of_k", "diversity", "coverage")  # metrics.json, num_samples > 1
RUN_ID_FILE = ".wandb_run_id"  # in the output directory: its one W&B run, continued by resume=true
PROBE_TIMEOUT = 3.0  # seconds for the TCP probe of the W&B host before an online start
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def base_url() -> str:
    """The W&B server of this process, as wandb resolves it (``WANDB_BASE_URL``, settings files, its default)."""
    return wandb.setup().settings.base_url


def logged_in() -> bool:
    """Whether wandb finds a key for its host (``WANDB_API_KEY``, netrc, settings), asked without prompting
    and without network (``wandb.login(prompt=False, verify=False)``). A malformed key counts as none."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except wandb.errors.AuthenticationError as err:
        log.warning("W&B key rejected (%s): logging offline", err)
        return False


def choose_mode(mode: str) -> str:
    """``auto``: ``$WANDB_MODE`` when set, else ``online`` when logged in, else ``offline``."""
    if mode not in MODES:
        raise ValueError(f"logger.mode={mode!r} is invalid: allowed {MODES}")
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


def host_unreachable(url: str, timeout: float) -> str | None:
    """Why the W&B host of ``url`` cannot be reached (DNS failure: at once; no TCP connection within
    ``timeout`` s), or None when it can. Behind a proxy (``HTTPS_PROXY`` etc.) wandb is left to try."""
    if any(os.environ.get(var) for var in PROXY_VARS):
        return None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{parts.hostname}:{port} unreachable ({type(err).__name__}: {err})"
    return None


def init_run(*, mode: str, init_timeout: float, directory: Path, **kwargs: Any) -> wandb.Run:
    """``wandb.init`` in the chosen mode. An online start falls back to offline with a warning when the
    host is unreachable (checked first, in at most ``PROBE_TIMEOUT`` s) or when wandb refuses it (e.g. a bad key).

    A run still open in this process (a reused joblib worker) is finished first, so that jobs never
    log into each other's runs.
    """
    if wandb.run is not None:
        log.warning("finishing W&B run %s left open in this process by an earlier job", wandb.run.id)
        wandb.run.finish()
    mode = choose_mode(mode)
    settings = wandb.Settings(init_timeout=init_timeout)
    if mode == "online":
        url = base_url()
        problem = host_unreachable(url, min(PROBE_TIMEOUT, init_timeout))
        if problem is None:
            try:
                return wandb.init(mode=mode, dir=str(directory), settings=settings, **kwargs)
            except wandb.errors.Error as err:
                problem = f"{type(err).__name__}: {err}"
        warnings.warn(f"W&B online start failed ({url}: {problem}); logging offline instead", stacklevel=2)
    return wandb.init(mode=mode if mode != "online" else "offline", dir=str(directory), settings=settings, **kwargs)


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a multirun: the name of its sweep directory (the same in every job), prefixed by
    its parent's name when that is a date, as in the default ``outputs/multirun/<date>/<time>``."""
    path = Path(sweep_dir)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name):
        return f"{path.parent.name}_{path.name}"
    return path.name


def hydra_job() -> tuple[str | None, str | None, dict[str, str], dict[str, Any]]:
    """(group, name, config-group choices, overrides with typed values) of the current Hydra job; all empty
    outside one (compose API). The name lists every override but logger/resume/paths (seed included)."""
    if not HydraConfig.initialized():
        return None, None, {}, {}
    hc = HydraConfig.get()
    group = sweep_group(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    choices = {k: v for k, v in hc.runtime.choices.items() if isinstance(v, str) and not k.startswith("hydra/")}
    overrides = {k: typed(v) for k, v in parse_overrides(list(hc.overrides.task)).items()}
    return group, hc.job.override_dirname or None, choices, overrides


def plain_config(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The fully resolved config as a plain dict; ``output_dir`` is set directly (no ``${hydra:}`` needed)."""
    unresolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    unresolved.output_dir = str(output_dir)
    return OmegaConf.to_container(unresolved, resolve=True)


def run_id(output_dir: Path, *, resume: bool) -> tuple[str | None, str | None]:
    """(id, resume) for ``wandb.init``: the id stored in the output directory when ``resume`` (continued with
    ``resume="allow"``), else a new one. Under ``wandb agent`` the agent's run id is used (None here)."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return None, None
    stored = output_dir / RUN_ID_FILE
    if resume and stored.is_file():
        return stored.read_text().strip(), "allow"
    return secrets.token_hex(6), None


def remember_run(run: wandb.Run, output_dir: Path) -> None:
    """Store the run id in the output directory (a later ``resume=true`` continues this run)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / RUN_ID_FILE, run.id + "\n")


def sync_command(output_dir: Path, run: wandb.Run) -> str | None:
    """For an offline run: ``wandb sync`` with every offline directory of this run in ``output_dir`` (a
    resumed run has one per session). None for online or disabled runs."""
    if run.settings.mode != "offline":
        return None
    # offline-run-<date>_<time>-<id>, with -1, -2, ... when two sessions started within the same second
    same = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run.id)}(-\d+)?")
    dirs = sorted(d for d in (output_dir / "wandb").glob("offline-run-*") if same.fullmatch(d.name))
    return "wandb sync " + " ".join(shlex.quote(str(d)) for d in dirs) if dirs else None


def save_in_run(run: wandb.Run, source: Path, name: str) -> None:
    """A copy of ``source`` in the run's files as ``name``, saved from inside the run directory: an offline
    run holds the file itself (not a link to the output directory) and syncs whole."""
    target = Path(run.dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    run.save(str(target), base_path=run.dir, policy="now")


@contextmanager
def media_in_run_dir(run: wandb.Run) -> Iterator[None]:
    """wandb stages the media of a ``wandb.Table`` under ``$WANDB_DATA_DIR`` (default ~/.local/share/wandb)
    until upload; point it into the run's directory while logging, so an offline run keeps its media."""
    previous = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(Path(run.dir).parent / "data")
    try:
        yield
    finally:
        if previous is None:
            del os.environ["WANDB_DATA_DIR"]
        else:
            os.environ["WANDB_DATA_DIR"] = previous


def posterior_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Flat summary keys of the posterior blocks (``num_samples`` > 1): ``posterior_mean/psnr/mean``,
    ``.../ci_low``, ``.../ci_high``, ``oracle_best_of_k/...``, ``diversity/pixel_std/...``,
    ``coverage/coverage_90/...``, ``coverage/z2_expected``, and the CIs of ``metrics`` and ``baseline``."""
    out: dict[str, Any] = {}

    def flat(prefix: str, stats: dict[str, Any]) -> None:
        out.update({f"{prefix}/{k}": v for k, v in stats.items() if k in ("mean", "std")})
        ci = stats.get("ci")
        out.update({f"{prefix}/ci_low": ci[0] if ci else None, f"{prefix}/ci_high": ci[1] if ci else None})

    for block in POSTERIOR_BLOCKS:
        for name, stats in (result.get(block) or {}).items():
            if isinstance(stats, dict) and "mean" in stats:
                flat(f"{block}/{name}", stats)
    if (result.get("coverage") or {}).get("z2_expected") is not None:
        out["coverage/z2_expected"] = result["coverage"]["z2_expected"]
    for prefix, block in (("", "metrics"), ("baseline/", "baseline")):
        for name, stats in (result.get(block) or {}).items():
            if "ci" in stats:
                ci = stats["ci"]
                out.update({f"{prefix}{name}/ci_low": ci[0] if ci else None,
                            f"{prefix}{name}/ci_high": ci[1] if ci else None})
    for key in ("num_samples", "nfe_per_sample", "seconds_per_sample", "num_finished_samples"):
        if key in result:
            out[key] = result[key]
    return out


def _coverage_curve(result: dict[str, Any]) -> Any:
    """The coverage-vs-nominal curve as a W&B line plot (with the diagonal), or None."""
    curve = (result.get("coverage") or {}).get("curve")
    if not curve:
        return None
    return wandb.plot.line_series(xs=curve["nominal"], ys=[curve["empirical"], curve["nominal"]],
                                  keys=["empirical", "calibrated"], title="coverage of the truth vs nominal level",
                                  xname="nominal level")


def _thumbnail(path: Path) -> wandb.Image | None:
    if not path.is_file():
        return None
    with Image.open(path) as img:
        img = img.copy()
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return wandb.Image(img)


class WandbRun:
    """One W&B run per output directory, continued by ``resume`` (its id in ``<output_dir>/.wandb_run_id``): the
    tracker of training (``diffexp.training.ddpm``) and the base of ``WandbLogger``.

    Args:
        output_dir: the W&B files go to ``<output_dir>/wandb/``, the run id to ``<output_dir>/.wandb_run_id``.
        resume: continue the run whose id is stored in ``output_dir`` (a new run when there is none).
        mode: auto (``$WANDB_MODE`` if set, else online when logged in, else offline), online, offline, disabled.
        init_timeout: seconds to wait for an online start before falling back to offline.
        **init: the other arguments of ``wandb.init`` (project, entity, job_type, config, ...).
    """

    def __init__(self, output_dir: Path, *, resume: bool, mode: str = "auto", init_timeout: float = 30.0,
                 **init: Any) -> None:
        self.output_dir = Path(output_dir)
        wandb_id, resume_mode = run_id(self.output_dir, resume=resume)
        self.run = init_run(
            mode=mode, init_timeout=init_timeout, directory=self.output_dir, id=wandb_id, resume=resume_mode, **init
        )
        remember_run(self.run, self.output_dir)

    def log_metrics(self, values: dict[str, float], *, step: int) -> None:
        """Numbers at ``step`` of the run's history (e.g. the training loss)."""
        self.run.log(values, step=step)

    def log_images(self, images: dict[str, Image.Image], *, step: int) -> None:
        """Images at ``step`` of the run's history (e.g. a grid of samples)."""
        self.run.log({key: wandb.Image(image) for key, image in images.items()}, step=step)

    def log_summary(self, values: dict[str, Any]) -> None:
        """Final values of the run (its W&B summary)."""
        self.run.summary.update(values)

    def console_hint(self) -> str | None:
        """``W&B offline; upload with: wandb sync ...`` for an offline run; None when it is online or disabled."""
        command = sync_command(self.output_dir, self.run)
        return f"W&B offline; upload with: {command}" if command else None

    def finish(self, exit_code: int) -> None:
        """Close the run; a non-zero ``exit_code`` marks it failed."""
        self.run.finish(exit_code=exit_code)


class WandbLogger(WandbRun):
    """``logger=wandb``, a ``diffexp.tracking.base.Tracker``: one W&B run per output directory with the config,
    per-step residual and x̂0 preview, final summary, image table, grid, and the run's ``metrics.json``,
    ``run_config.yaml`` and its config as ``.hydra/config.yaml`` (from ``run_config.yaml``: the run's own).

    Args:
        cfg: the job's composed config (logged, resolved, as the run's config, with the Hydra group
            choices under ``choices`` and the command-line overrides, numbers as numbers, under ``overrides``).
        output_dir: the job's output directory; the W&B files go to ``<output_dir>/wandb/``, the run id to
            ``<output_dir>/.wandb_run_id`` (``resume=true`` continues that run).
        project, entity: where the run goes (entity None: the user's default).
        tags: extra tags; the task, sampler and model names are always added.
        group: W&B group; None: the sweep directory's name in a multirun, no group in a single run.
        mode: auto (``$WANDB_MODE`` if set, else online when logged in, else offline), online, offline, disabled.
        log_every: log the data residual and an x̂0 preview every this many sampling steps (0: never).
        preview_images: images in the x̂0 preview (>= 1).
        init_timeout: seconds to wait for an online start before falling back to offline.
    """

    log_every: int

    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        *,
        project: str = "diffexp",
        entity: str | None = None,
        tags: Sequence[str] = (),
        group: str | None = None,
        mode: Literal[MODES] = "auto",  # type: ignore[valid-type]
        log_every: Annotated[int, Ge(0), Allowed("an integer >= 0 (0: off)")] = 0,
        preview_images: PositiveInt = 4,
        init_timeout: Annotated[float, Gt(0), Finite, Allowed("a finite number of seconds > 0")] = 30.0,
    ) -> None:
        self.log_every = int(log_every)
        self.preview_images = int(preview_images)
        sweep, name, choices, overrides = hydra_job()
        model = choices.get("model") or cfg.model.get("name") or str(cfg.model._target_).rsplit(".", 1)[-1]
        config = plain_config(cfg, Path(output_dir))
        config.update(choices=choices, overrides=overrides)
        super().__init__(
            output_dir,
            resume=bool(cfg.get("resume")),
            mode=mode,
            init_timeout=init_timeout,
            project=project,
            entity=entity,
            group=group or sweep,
            name=name,
            job_type=cfg.task.name,
            tags=list(dict.fromkeys([cfg.task.name, cfg.sampler.name, model, *tags])),
            config=config,
        )
        self._save_config()
        self.run.define_metric("sampling/step")
        self.run.define_metric("sampling/*", step_metric="sampling/step")

    def _save_config(self) -> None:
        """The run's config file in the W&B run (as ``.hydra/config.yaml``): from the run's own record,
        ``run_config.yaml``, which a refused run cannot overwrite (``diffexp.rundir.runconfig``); from Hydra's
        ``.hydra/config.yaml`` outside ``run`` (no record). The record itself is saved as well."""
        own = self.output_dir / RUN_CONFIG
        try:
            _, config = read_run_config(self.output_dir) if own.is_file() else (None, None)
        except RunConfigUnreadable as err:
            log.warning("W&B: %s", err)
            config = None
        target = Path(self.run.dir) / ".hydra" / "config.yaml"
        if config is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
            self.run.save(str(target), base_path=self.run.dir, policy="now")
            save_in_run(self.run, own, RUN_CONFIG)
        elif (self.output_dir / ".hydra" / "config.yaml").is_file():
            save_in_run(self.run, self.output_dir / ".hydra" / "config.yaml", ".hydra/config.yaml")

    def log_step(self, state: dict[str, Any]) -> None:
        """Log the mean data residual (``state['residual']``, when there is a measurement) and a preview of x̂0;
        ``sampling/step`` counts the steps of the whole run (``state['step']``)."""
        x0 = state["x0"].detach().float()
        data: dict[str, Any] = {"sampling/step": int(state["step"]), "sampling/t": int(state["t"])}
        residual = state.get("residual")
        if residual is not None:
            data["sampling/residual"] = float(residual.detach().float().mean())
        preview = x0[: self.preview_images].clamp(-1, 1)
        data["sampling/x0"] = wandb.Image(make_grid(preview, nrow=len(preview)), caption=f"t={int(state['t'])}")
        self.run.log(data)

    def log_results(self, result: dict[str, Any], output_dir: Path) -> None:
        """Summary (mean/std of every metric and baseline, nfe, s/image, status, warnings), image table,
        captioned grid, and a copy of ``metrics.json``."""
        summary: dict[str, Any] = {
            key: result.get(key) for key in ("status", "error", "nfe", "seconds_per_image", "num_finished")
        }
        if result.get("warnings"):
            summary["warnings"] = "; ".join(map(str, result["warnings"]))
        for prefix, block in (("", result.get("metrics") or {}), ("baseline/", result.get("baseline") or {})):
            for metric, stats in block.items():
                summary.update({f"{prefix}{metric}/{stat}": value for stat, value in stats.items()})
        summary.update(summary_values(result.get("distribution")))  # fid, kid/mean, ... (diffexp.evaluation.fid)
        summary.update(posterior_summary(result))  # num_samples > 1: posterior mean, best of K, calibration
        self.log_summary(summary)
        data: dict[str, Any] = {}
        curve = _coverage_curve(result)
        if curve is not None:
            data["coverage_curve"] = curve
        if (Path(output_dir) / "coverage.png").is_file():
            with Image.open(Path(output_dir) / "coverage.png") as img:
                data["coverage_plot"] = wandb.Image(img.copy(), caption="coverage of the truth vs nominal level")
        rows = result.get("per_image") or []
        if rows:
            data["images"] = self._table(rows, Path(output_dir) / "images")
        grid = Path(output_dir) / "grid.png"
        if grid.is_file():
            caption = "truth | measurement | reconstruction" if result.get("metrics") else "samples"
            if result.get("num_samples"):
                caption = "truth | measurement | samples | posterior mean | posterior std"
            with Image.open(grid) as img:
                data["grid"] = wandb.Image(img.copy(), caption=caption)
        if data:
            with media_in_run_dir(self.run):
                self.run.log(data)
        metrics = Path(output_dir) / "metrics.json"
        if metrics.is_file():
            save_in_run(self.run, metrics, "metrics.json")

    def _table(self, rows: list[dict[str, Any]], images: Path) -> wandb.Table:
        """One row per image: index, per-image metrics, thumbnails of truth / measurement / output."""
        keys = [k for k in dict.fromkeys(key for row in rows for key in row)
                if not any(isinstance(row.get(k), list) for row in rows)]  # coverage_curve: in the summary instead
        first = rows[0]["index"]
        pictures = [(col, suffix) for col, suffix in IMAGE_COLUMNS if (images / image_name(first, suffix)).is_file()]
        table = wandb.Table(columns=keys + [col for col, _ in pictures], allow_mixed_types=True)
        for row in rows:
            thumbs = [_thumbnail(images / image_name(row["index"], suffix)) for _, suffix in pictures]
            table.add_data(*[row.get(key) for key in keys], *thumbs)
        return table


def log_report(
    report: Report,
    *,
    project: str,
    entity: str | None,
    group: str | None,
    mode: str,
    init_timeout: float,
) -> None:
    """Log a sweep report as a small run of job_type ``report`` in the sweep's group: the configuration table
    (swept values as numbers, seeds pooled), ``best/*`` in the summary, native W&B charts of each metric
    against each numeric swept key, the plots and the report files."""
    sweep_dir = report.sweep_dir
    run = init_run(
        mode=mode,
        init_timeout=init_timeout,
        directory=sweep_dir,
        project=project,
        entity=entity,
        group=group or sweep_group(sweep_dir),
        name=f"report-{sweep_group(sweep_dir)}",
        job_type="report",
        config={"sweep_dir": str(sweep_dir), "optimized_metric": report.metric, "swept": report.keys},
    )
    exit_code = 1
    try:
        table = wandb.Table(
            columns=list(report.columns), data=[[row.get(c) for c in report.columns] for row in report.rows],
            allow_mixed_types=True,
        )
        data: dict[str, Any] = {"summary": table}
        data.update({f"plots/{f.stem}": wandb.Image(str(f)) for f in report.files if f.suffix == ".png"})
        data.update(charts(report))
        with media_in_run_dir(run):
            run.log(data)
        if report.best is not None:
            run.summary.update({f"best/{key.replace('_mean', '/mean').replace('_std', '/std')}": value
                                for key, value in report.best.items() if key not in ("best", "status")})
        for f in report.files:
            save_in_run(run, f, f.name)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)


def charts(report: Report) -> dict[str, Any]:
    """``charts/<metric>_vs_<key>``: a W&B line chart (one swept key) or scatter (several) of the pooled mean
    of each metric against each numeric swept key; needs no panel built by hand."""
    out: dict[str, Any] = {}
    for key in report.keys:
        if not any(isinstance(row.get(key), (int, float)) for row in report.rows):
            continue
        for metric in PLOTTED:
            column = f"{metric}_mean"
            if column not in report.columns or all(row.get(column) is None for row in report.rows):
                continue
            x = key.replace(".", "_")  # a dot would be a nested field in the chart's Vega spec
            points = [[row[key], row[column]] for row in report.rows
                      if isinstance(row.get(key), (int, float)) and row.get(column) is not None]
            chart_table = wandb.Table(columns=[x, column], data=sorted(points))
            plot = wandb.plot.line if len(report.keys) == 1 else wandb.plot.scatter
            out[f"charts/{metric}_vs_{x}"] = plot(chart_table, x, column, title=f"{metric} (mean) vs {key}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Write a sweep's report (as ``python -m diffexp.tracking.report``) and log it to W&B as a run of job_type
    ``report``; run in a new process by ``diffexp.tracking.callbacks.SweepReport`` after a failed job."""
    parser = argparse.ArgumentParser(
        prog="python -m diffexp.tracking.wandb", description="Write a sweep's report and log it to W&B."
    )
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (hydra.sweep.dir)")
    parser.add_argument("--project", default="diffexp", help="W&B project (default: diffexp)")
    parser.add_argument("--entity", help="W&B entity (default: yours)")
    parser.add_argument("--group", help="W&B group (default: the sweep directory's name, as its jobs)")
    parser.add_argument("--mode", default="auto", help="auto (default), online, offline")
    parser.add_argument("--init-timeout", type=float, default=30.0, help="seconds before offline fallback")
    args = parser.parse_args(argv)
    report = report_cli([str(args.sweep_dir)])
    log_report(report, project=args.project, entity=args.entity, group=args.group, mode=args.mode,
               init_timeout=args.init_timeout)


if __name__ == "__main__":
    main()
