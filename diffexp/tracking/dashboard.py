"""A saved W&B workspace and report for diffexp runs, built with ``wandb-workspaces``:
``python -m diffexp.dashboard --entity E --project P [--group G] [--key sampler.step_size ...] [--save]``.

Panels (each names only keys that ``diffexp.tracking.wandb`` logs; ``tests/test_dashboard.py`` checks them against
an offline run's files):

- quality against each swept key (``--key``, or the swept keys of ``--sweep-dir``), runs grouped by sampler:
  PSNR/SSIM/LPIPS of the samples (``psnr/mean``, ...) and of the posterior mean (``posterior_mean/psnr/mean``);
- the sweep report's configuration table with the paired differences to the best job (``summary``, logged by
  the report run of a multirun);
- calibration: the coverage of the truth by the samples' 50 % and 90 % intervals and the coverage curves;
- the comparison grids (``grid``) and the per-image table (``images``).

Without ``--save`` nothing is sent: the command prints the panel specs (what ``--save`` would create). Saving
needs a W&B account (``wandb login``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUALITY = ("psnr", "ssim", "lpips")
SAMPLE_KEY = "{metric}/mean"  # the mean over images of the per-sample metric (WandbLogger.log_results)
POSTERIOR_KEY = "posterior_mean/{metric}/mean"  # the posterior mean's metric (num_samples > 1)
COVERAGE_KEYS = ("coverage/coverage_50/mean", "coverage/coverage_90/mean", "coverage/z2/mean")  # vs the truth
MEDIA = {"grids": "grid", "calibration": "coverage_plot"}  # image keys of a run's history (coverage.png)
TABLES = {"per_image": "images", "comparison": "summary"}  # table keys: a run's images, a sweep report's rows
GROUP_BY = "sampler.name"


@dataclass(frozen=True)
class Dashboard:
    """The workspace and the report, not yet saved."""

    workspace: Any  # wandb_workspaces.workspaces.Workspace
    report: Any  # wandb_workspaces.reports.v2.Report


def _quality_panels(keys: Sequence[str]) -> list[Any]:
    import wandb_workspaces.reports.v2 as wr

    panels = []
    for key in keys:
        for metric in QUALITY:
            for template, what in ((SAMPLE_KEY, "samples"), (POSTERIOR_KEY, "posterior mean")):
                panels.append(wr.ScatterPlot(title=f"{metric} of the {what} vs {key}", x=wr.Config(key),
                                             y=wr.SummaryMetric(template.format(metric=metric))))
    return panels


def _sections(keys: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """(name, panels) of each section, shared by the workspace and the report."""
    import wandb_workspaces.reports.v2 as wr

    calibration = [wr.BarPlot(title="coverage of the truth (nominal: 0.5, 0.9)",
                              metrics=[wr.SummaryMetric(k) for k in COVERAGE_KEYS[:2]], groupby=GROUP_BY),
                   wr.ScalarChart(title="mean z² of the truth (calibrated: coverage/z2_expected)", metric=wr.SummaryMetric(COVERAGE_KEYS[2])),
                   wr.MediaBrowser(title="coverage vs nominal", media_keys=[MEDIA["calibration"]])]
    return [
        ("Quality vs settings (one colour per sampler)", _quality_panels(keys)),
        ("Sampler comparison (paired by image, 95 % CIs)", [wr.WeavePanelSummaryTable(table_name=TABLES["comparison"])]),
        ("Calibration", calibration),
        ("Grids", [wr.MediaBrowser(title="truth | measurement | samples | mean | std", media_keys=[MEDIA["grids"]])]),
        ("Per image", [wr.WeavePanelSummaryTable(table_name=TABLES["per_image"])]),
    ]


def build(entity: str, project: str, *, group: str | None = None, keys: Sequence[str] = ()) -> Dashboard:
    """The workspace (runs of ``group`` or all, grouped by sampler) and a report with the same panels."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.expr import Metric

    filters = [Metric("Group") == group] if group else []
    sections = _sections(keys)
    workspace = ws.Workspace(
        entity=entity, project=project, name=f"diffexp {group}" if group else "diffexp",
        sections=[ws.Section(name=name, panels=panels, is_open=True) for name, panels in sections],
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config(GROUP_BY)]),
    )
    runset = wr.Runset(entity=entity, project=project, name=group or "all runs", filters=filters, groupby=[GROUP_BY])
    blocks: list[Any] = [wr.P("Posterior samplers compared on the same images: means with 95 % bootstrap CIs; "
                              "oracle_best_of_k uses the ground truth (the DAPS convention), so it is not an "
                              "estimate a user could compute.")]
    for name, panels in sections:
        blocks += [wr.H2(name), wr.PanelGrid(runsets=[runset], panels=panels)]
    report = wr.Report(project=project, entity=entity, title=f"diffexp: {group or project}", blocks=blocks)
    return Dashboard(workspace, report)


def spec(dashboard: Dashboard) -> dict[str, Any]:
    """The sections and their panels as plain data: what ``--save`` creates, and what the tests check."""

    def panel(p: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(p).__name__, "title": getattr(p, "title", None)}
        for field in ("x", "y", "metric", "metrics", "media_keys", "table_name", "groupby"):
            value = getattr(p, field, None)
            if value is not None:
                out[field] = [getattr(v, "name", v) for v in value] if isinstance(value, list) else getattr(
                    value, "name", value)
        return out

    return {"workspace": dashboard.workspace.name,
            "sections": {s.name: [panel(p) for p in s.panels] for s in dashboard.workspace.sections},
            "report": dashboard.report.title}


def swept_keys_of(sweep_dir: Path) -> list[str]:
    """The keys a multirun swept (as its sweep report finds them)."""
    from diffexp.tracking.report import load_jobs, swept_keys

    return swept_keys(load_jobs(sweep_dir))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffexp.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True)
    parser.add_argument("--project", default="diffexp")
    parser.add_argument("--group", help="only the runs of this W&B group (a multirun's group)")
    parser.add_argument("--key", action="append", default=[], help="a swept config key (repeatable)")
    parser.add_argument("--sweep-dir", type=Path, help="take the swept keys from this multirun directory")
    parser.add_argument("--save", action="store_true", help="save the workspace and the report to W&B")
    args = parser.parse_args(argv)
    keys = [*args.key, *(swept_keys_of(args.sweep_dir) if args.sweep_dir else [])]
    dashboard = build(args.entity, args.project, group=args.group, keys=list(dict.fromkeys(keys)))
    if not args.save:
        print(json.dumps(spec(dashboard), indent=2))
        return
    try:
        dashboard.workspace.save()
        dashboard.report.save()
    except Exception as err:  # noqa: BLE001 - the W&B API raises many kinds (no key, no network, permissions)
        print(f"Error: could not save to W&B ({type(err).__name__}: {err}); run `wandb login` on a machine with "
              "internet", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"workspace: {dashboard.workspace.url}\nreport: {dashboard.report.url}")


if __name__ == "__main__":
    main()
