"""The five benchmarks. Each returns a result dict: ``title``, ``setup``, ``columns``, ``rows``,
``summary`` and ``notes``, which ``benchmarks.report`` turns into a Markdown section."""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile
from pathlib import Path
from typing import Any

import torch

import diffexp
from benchmarks import sides
from benchmarks.common import (
    Settings,
    compose_cfg,
    ground_truth,
    interleaved,
    load_model,
    median,
    package_version,
    paired_ratio_note,
    problem,
    setup,
)
from benchmarks.fast import fast
from benchmarks.memory import peak_memory
from diffexp.evaluation.metrics import Metrics

MB = 2**20


def generation(s: Settings, out_dir: Path) -> dict[str, Any]:
    """1. ``sampler=ddpm`` vs ``diffusers.DDPMPipeline``: same UNet, steps and batch; time and peak memory."""
    device = setup(s)
    model = load_model(s, device)
    pipe = sides.diffusers_pipeline(model)
    ddpm = problem(s, model, "ddpm", "generate")
    batch = list(range(s.gen_batch))
    seconds, _ = interleaved(
        {
            "diffexp": lambda n: sides.diffexp_solve(model, ddpm, s.seed, batch, n),
            "diffusers": lambda n: sides.diffusers_ddpm(pipe, s.gen_batch, s.seed, n),
        },
        s.gen_steps, s.repeats, device,
    )
    memory = peak_memory(s, [("diffexp-ddpm", s.gen_batch), ("diffusers-ddpm", s.gen_batch)], s.memory_steps)
    labels = {"diffexp": "diffexp `sampler=ddpm`", "diffusers": "diffusers `DDPMPipeline`"}
    rows = [
        {
            "side": labels[name], "median_s": median(seconds[name]), "s_per_image": median(seconds[name]) / s.gen_batch,
            "peak_mb": mem["peak_bytes"] / MB, "runs_s": seconds[name],
        }
        for name, mem in zip(labels, memory)
    ]
    return {
        "title": "1. Unconditional generation: diffexp vs diffusers",
        "setup": f"model={s.model}, {s.gen_steps} steps, batch {s.gen_batch}, {s.repeats} interleaved runs per side "
        f"(median); peak memory of one call at batch {s.gen_batch} ({memory[0]['method']}, fresh process per side)",
        "columns": [("side", "side", ""), ("median_s", "median s", ".2f"), ("s_per_image", "s / image", ".3f"),
                    ("peak_mb", "peak MB", ".1f")],
        "rows": rows,
        "summary": {
            "time ratio diffexp / diffusers (target <= 1.0)": rows[0]["median_s"] / rows[1]["median_s"],
            "peak memory ratio diffexp / diffusers": _ratio(rows[0]["peak_mb"], rows[1]["peak_mb"]),
        },
        "notes": [
            paired_ratio_note(seconds, "diffexp", "diffusers", "Time ratio diffexp / diffusers"),
            "Same UNet object, same scheduler config, same number of UNet evaluations; diffexp's grid "
            "spaces steps evenly over [0, T-1], the pipeline uses the scheduler's `leading` spacing "
            "(identical at 1000 steps).",
        ],
    }


def dps(s: Settings, out_dir: Path) -> dict[str, Any]:
    """2. DPS per image (batch 1): diffexp vs deepinv vs the official loop; time and PSNR on the same y."""
    device = setup(s)
    model = load_model(s, device)
    dps_problem = problem(s, model, "dps", s.dps_task)
    zeta = float(dps_problem.sample.keywords["step_size"])
    weight = sides.deepinv_weight(model, s.dps_steps, zeta)
    metrics = Metrics(lpips=False)
    seconds: dict[str, list[float]] = {}
    scores: dict[str, list[dict[str, float]]] = {}
    notes = [
        f"Task `{s.dps_task}` as configured in conf/task/{s.dps_task}.yaml; diffexp (`diffexp.solve.solve_batch`) "
        f"and the official loop use zeta = {zeta:g} (the task's default); every side gets the same y and x_T (drawn "
        f"from the image's generator, as `run` draws them); deepinv `DPS(solver='ddpm', weight={weight:.1f})`, "
        "the weight that gives the same total guidance (`benchmarks.sides.deepinv_weight`); deepinv wraps the same "
        "UNet with its own `ScoreModelWrapper` (scale_t = sqrt(alphas_cumprod)) and runs its solver in float64 (its "
        "default).",
    ]
    deepinv_error = None
    for j in range(s.dps_images):
        truth = ground_truth(s, model, [j])
        operator, y, x, _ = sides.peer_inputs(model, dps_problem, s.seed, [j], truth)
        if j == 0:
            deepinv_error = _deepinv_fails(model, operator, y, x, s.seed)
            notes.append(
                f"deepinv not compared: {deepinv_error}" if deepinv_error else
                f"deepinv {package_version('deepinv')} runs with torch {torch.__version__} on the diffusers UNet."
            )
        contenders = {
            "diffexp": functools.partial(sides.diffexp_solve, model, dps_problem, s.seed, [j], truth=truth),
            "official": functools.partial(sides.official_dps, model, operator, y, x, s.seed, zeta),
        }
        if not deepinv_error:
            contenders["deepinv"] = functools.partial(sides.deepinv_dps, model, operator, y, x, s.seed, weight)
        times, outputs = interleaved(contenders, s.dps_steps, s.repeats, device)
        outputs["diffexp"] = sides.solved_for(outputs["diffexp"], y)
        outputs["measurement"] = operator.baseline(y).clamp(-1, 1)
        for name, out in outputs.items():
            seconds.setdefault(name, []).extend(times.get(name, []))
            values = metrics(out, truth)
            scores.setdefault(name, []).append({"psnr": values["psnr"][0], "ssim": values["ssim"][0]})
    labels = {
        "diffexp": "diffexp `sampler=dps`", "deepinv": "deepinv `DPS`",
        "official": "official DPS loop (re-implemented)", "measurement": "measurement (baseline)",
    }
    rows = []
    for name, label in labels.items():
        if name not in scores:
            continue
        runs = seconds.get(name, [])
        rows.append({
            "side": label, "s_per_image": median(runs) if runs else None,
            "psnr": sum(v["psnr"] for v in scores[name]) / len(scores[name]),
            "ssim": sum(v["ssim"] for v in scores[name]) / len(scores[name]), "runs_s": runs,
        })
    t = {name: median(seconds[name]) for name in seconds if seconds[name]}
    summary = {"time ratio diffexp / official loop": t["diffexp"] / t["official"]}
    notes.append(paired_ratio_note(seconds, "diffexp", "official", "Time ratio diffexp / official loop"))
    if "deepinv" in t:
        summary["time ratio diffexp / deepinv"] = t["diffexp"] / t["deepinv"]
        notes.append(paired_ratio_note(seconds, "diffexp", "deepinv", "Time ratio diffexp / deepinv"))
    return {
        "title": "2. DPS per image: diffexp vs deepinv vs the official loop",
        "setup": f"model={s.model}, task={s.dps_task}, {s.dps_steps} steps, batch 1, {s.dps_images} image(s) x "
        f"{s.repeats} interleaved runs per side (median time; PSNR/SSIM mean over images, same measurement y)",
        "columns": [("side", "side", ""), ("s_per_image", "s / image", ".2f"), ("psnr", "PSNR dB", ".2f"),
                    ("ssim", "SSIM", ".3f")],
        "rows": rows,
        "summary": summary,
        "notes": notes,
    }


def _deepinv_fails(model: Any, operator: Any, y: torch.Tensor, x: torch.Tensor, seed: int) -> str | None:
    """Why deepinv's DPS cannot run on this model here (from a 2-step trial), or None."""
    try:
        sides.deepinv_dps(model, operator, y, x, seed, 1.0, 2)
    except ImportError as err:
        return f"`import deepinv` failed ({err}); install it with `pip install deepinv`"
    except Exception as err:  # noqa: BLE001 - whatever deepinv raises is the result to report
        return f"deepinv's DPS raised {type(err).__name__}: {err}"
    return None


def scaling(s: Settings, out_dir: Path) -> dict[str, Any]:
    """3. Seconds per image at each batch size for ddpm, dps and scoreald."""
    device = setup(s)
    model = load_model(s, device)
    rows = []
    for name in ("ddpm", "dps", "scoreald"):
        task = "generate" if name == "ddpm" else s.dps_task
        solve = problem(s, model, name, task)
        contenders = {}
        for b in s.scaling_batches:
            indices = list(range(b))
            truth = None if task == "generate" else ground_truth(s, model, indices)
            contenders[b] = functools.partial(sides.diffexp_solve, model, solve, s.seed, indices, truth=truth)
        times, _ = interleaved(contenders, s.scaling_steps, s.repeats, device)
        base = median(times[s.scaling_batches[0]]) / s.scaling_batches[0]
        for b in s.scaling_batches:
            per_image = median(times[b]) / b
            rows.append({"sampler": name, "batch": b, "s_per_image": per_image,
                         "s_per_image_per_step_ms": 1000 * per_image / s.scaling_steps, "speedup": base / per_image})
    return {
        "title": "3. Batch scaling",
        "setup": f"model={s.model}, {s.scaling_steps} steps, task={s.dps_task} for dps/scoreald, {s.repeats} "
        "interleaved runs per batch size (median); speed-up relative to the smallest batch",
        "columns": [("sampler", "sampler", ""), ("batch", "batch", "d"), ("s_per_image", "s / image", ".3f"),
                    ("s_per_image_per_step_ms", "ms / image / step", ".2f"), ("speedup", "speed-up", ".2f")],
        "rows": rows,
        "summary": {},
        "notes": [],
    }


def quality(s: Settings, out_dir: Path) -> dict[str, Any]:
    """4. PSNR/SSIM of dps and scoreald vs the number of steps, through ``diffexp.run`` itself."""
    rows = []
    quiet = contextlib.redirect_stderr(io.StringIO())  # no progress bar per run (errors still raise)
    with tempfile.TemporaryDirectory() as tmp, quiet:
        for task in s.quality_tasks:
            for name in ("dps", "scoreald"):
                for steps in s.quality_steps:
                    cfg = compose_cfg(
                        s, f"task={task}", f"sampler={name}", f"sampler.num_steps={steps}",
                        f"num_images={s.quality_images}", f"batch_size={s.quality_images}", f"seed={s.seed}",
                        "metrics.lpips=false", f"output_dir={Path(tmp) / f'{task}-{name}-{steps}'}",
                    )
                    result = diffexp.run(cfg)
                    rows.append({
                        "task": task, "sampler": name, "steps": steps, "step_size": float(cfg.sampler.step_size),
                        "psnr": result["metrics"]["psnr"]["mean"], "ssim": result["metrics"]["ssim"]["mean"],
                        "baseline_psnr": result["baseline"]["psnr"]["mean"],
                        "s_per_image": result["seconds_per_image"],
                    })
    plot = out_dir / "quality_vs_steps.png"
    _plot_quality(rows, plot)
    return {
        "title": "4. Quality vs steps",
        "setup": f"model={s.model}, data={s.data}, first {s.quality_images} images, seed {s.seed}, step sizes: "
        "each task's defaults (conf/tuned/<task>_<sampler>.yaml); through `diffexp.run` (metrics as in "
        "metrics.json); plot: quality_vs_steps.png",
        "columns": [("task", "task", ""), ("sampler", "sampler", ""), ("step_size", "step size", "g"),
                    ("steps", "steps", "d"), ("psnr", "PSNR dB", ".2f"), ("ssim", "SSIM", ".3f"),
                    ("baseline_psnr", "measurement PSNR", ".2f"), ("s_per_image", "s / image", ".2f")],
        "rows": rows,
        "summary": {},
        "notes": [],
        "plot": plot.name,
    }


def _plot_quality(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    steps = sorted({r["steps"] for r in rows})
    for metric, ax in zip(("psnr", "ssim"), axes):
        for k, task in enumerate(dict.fromkeys(r["task"] for r in rows)):
            for name, marker, style in zip(("dps", "scoreald"), ("o", "s"), ("-", "--")):
                pts = [r for r in rows if r["task"] == task and r["sampler"] == name]
                ax.plot([r["steps"] for r in pts], [r[metric] for r in pts], marker=marker, linestyle=style,
                        color=f"C{k}", label=f"{task} / {name}")
            if metric == "psnr":
                baseline = next(r["baseline_psnr"] for r in rows if r["task"] == task)
                ax.axhline(baseline, color=f"C{k}", linestyle=":", label=f"{task} measurement")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.minorticks_off()
        ax.set_xlabel("steps")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.grid(True, alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Quality vs steps")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory(s: Settings, out_dir: Path) -> dict[str, Any]:
    """5. Peak memory per image of dps (backprop through the UNet) vs ddpm, one fresh process per run."""
    batches = sorted({1, s.memory_batch})
    jobs = [(side, b) for side in ("diffexp-ddpm", "diffexp-dps") for b in batches]
    results = peak_memory(s, jobs, s.memory_steps)
    rows = []
    for side in ("diffexp-ddpm", "diffexp-dps"):
        peaks = {r["batch"]: r["peak_bytes"] / MB for r in results if r["side"] == side}
        big = peaks[batches[-1]]
        marginal = (big - peaks[1]) / (batches[-1] - 1) if len(batches) > 1 else big
        rows.append({"sampler": side.removeprefix("diffexp-"), "peak_mb_batch_1": peaks[1],
                     "peak_mb": big, "peak_mb_per_image": big / batches[-1], "marginal_mb_per_image": marginal})
    return {
        "title": "5. Peak memory per image: dps vs ddpm",
        "setup": f"model={s.model}, task={s.dps_task} for dps, one call of {s.memory_steps} steps at batch 1 and "
        f"{batches[-1]}, each in a fresh process ({results[0]['method']})",
        "columns": [("sampler", "sampler", ""), ("peak_mb_batch_1", "peak MB, batch 1", ".1f"),
                    ("peak_mb", f"peak MB, batch {batches[-1]}", ".1f"),
                    ("peak_mb_per_image", "peak MB / image", ".2f"),
                    ("marginal_mb_per_image", "marginal MB / image", ".2f")],
        "rows": rows,
        "summary": {
            "dps / ddpm, peak per image": _ratio(rows[1]["peak_mb_per_image"], rows[0]["peak_mb_per_image"]),
            "dps / ddpm, marginal per image": _ratio(
                rows[1]["marginal_mb_per_image"], rows[0]["marginal_mb_per_image"]
            ),
        },
        "notes": ["marginal MB / image = (peak at batch B - peak at batch 1) / (B - 1): the memory one more image "
                  "in the batch costs, without fixed costs."],
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


SUITES = {
    "generation": generation, "dps": dps, "scaling": scaling, "quality": quality, "memory": memory, "fast": fast,
}
