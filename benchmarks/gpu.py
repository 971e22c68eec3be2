"""GPU benchmark, one command (≤ 10 minutes): ``python -m benchmarks.gpu``.

A random-weight UNet with google/ddpm-ema-celebahq-256's architecture (256 px, 113.7 M parameters,
linear β, T = 1000, fixed_small, clip_sample): seconds per image of 1000-step ``ddpm`` and ``dps``
(Gaussian deblur 61×61, σ = 3, as the DPS paper) at batch 1 and 8, float32 vs bfloat16 autocast,
torch.compile off/on, and the peak GPU memory of each. Every configuration times ``--steps`` steps
of the 1000-step grid after ``--warmup`` untimed ones (every step costs the same UNet call) and
scales to 1000 steps; one full 1000-step run checks that scaling. Configurations run cheapest
first and are skipped, with the reason recorded, when ``--budget`` seconds would be exceeded.
Results: ``benchmarks/results/gpu_<gpu name>.json`` and ``.md``, rewritten after every configuration.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from benchmarks.common import RESULTS, machine_info, sync
from benchmarks.report import table
from diffexp.models.diffusion import DiffusionModel, tiny_unet
from diffexp.models.schedule import respaced_timesteps
from diffexp.operators.blur import Blur
from diffexp.samplers.ddpm import ddpm
from diffexp.samplers.dps import dps
from diffexp.samplers.registry import spec_of
from diffexp.solve import Problem, solve_batch

T = 1000
COMPILE_RESERVE_S = 150  # do not start a compiled configuration with less time left than this


def celebahq_unet() -> UNet2DModel:
    """google/ddpm-ema-celebahq-256's UNet2DModel config, random weights."""
    return UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32,
        attention_head_dim=None,
    )


def build_model(smoke: bool, device: torch.device) -> DiffusionModel:
    torch.manual_seed(0)
    unet = tiny_unet(sample_size=16) if smoke else celebahq_unet()
    scheduler = DDPMScheduler(
        num_train_timesteps=T, beta_schedule="linear", variance_type="fixed_small", clip_sample=True
    )
    return DiffusionModel(unet, scheduler, name="smoke" if smoke else "ddpm-celebahq-256-random").to(device)


def configurations(batches: list[int]) -> list[dict[str, Any]]:
    """Eager first (float32, then bfloat16), then compiled; within each, ddpm before dps."""
    return [
        {"compile": c, "dtype": d, "sampler": s, "batch": b}
        for c in (False, True) for d in ("float32", "bfloat16") for s in ("ddpm", "dps") for b in batches
    ]


def time_steps(
    model: DiffusionModel, sampler: str, batch: int, dtype: str, steps: list[int], device: torch.device
) -> float:
    """Seconds of one ``solve_batch`` over the grid steps ``steps`` (indices into the 1000-step grid)."""
    grid = respaced_timesteps(T, T).to(device)[steps]
    gens = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
    truth = operator = None
    sample = functools.partial(ddpm)
    if sampler == "dps":
        kernel_size = 61 if model.sample_size > 61 else 7  # 7: the --smoke UNet's 16 px images
        operator = functools.partial(Blur, sigma_y=0.05, kernel_size=kernel_size, std=3.0)
        truth = torch.rand(batch, *model.image_shape, device=device) * 2 - 1
        sample = functools.partial(dps, step_size=1.0)
    problem = Problem(sample, spec_of(sample), grid, operator, sdedit=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    sync(device)
    start = time.perf_counter()
    with autocast:
        solve_batch(problem, model, truth, gens)
    sync(device)
    return time.perf_counter() - start


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_config(model: DiffusionModel, cfg: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict:
    """Warm-up (compiles when compiled), then the timed window; seconds per image scaled to 1000 steps."""
    start = time.perf_counter()
    time_steps(model, cfg["sampler"], cfg["batch"], cfg["dtype"], list(range(args.warmup)), device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    window = list(range(args.warmup, args.warmup + args.steps))
    seconds = time_steps(model, cfg["sampler"], cfg["batch"], cfg["dtype"], window, device)
    per_step = seconds / args.steps
    return {
        **cfg, "warmup_s": warmup_s, "ms_per_step": 1000 * per_step,
        "s_per_image_1000_steps": per_step * T / cfg["batch"], "peak_mb": peak_mb(device),
    }


def write(out: Path, result: dict[str, Any]) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    columns = [("sampler", "sampler", ""), ("batch", "batch", "d"), ("dtype", "dtype", ""), ("compile", "compile", ""),
               ("s_per_image_1000_steps", "s / image (1000 steps)", ".2f"), ("ms_per_step", "ms / step", ".1f"),
               ("peak_mb", "peak MB", ".0f"), ("warmup_s", "warm-up s", ".1f")]
    lines = [f"## GPU benchmark: {result['machine']['gpu'] or result['machine']['device']}", "",
             f"Setup: {result['setup']}", "", table(columns, result["rows"]), ""]
    if result.get("full_run"):
        f = result["full_run"]
        lines.append(
            f"- Full 1000-step check ({f['sampler']}, batch {f['batch']}, {f['dtype']}): {f['s_per_image']:.2f} "
            f"s / image measured vs {f['predicted_s_per_image']:.2f} scaled from the window."
        )
    lines += [f"- skipped: {_label(s['config'])} ({s['reason']})" for s in result["skipped"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _label(cfg: dict[str, Any]) -> str:
    return f"{cfg['sampler']} batch {cfg['batch']} {cfg['dtype']}{' compiled' if cfg['compile'] else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=480,
        help="seconds of benchmarking (default 480: with start-up and one overrunning compile, under 10 minutes)",
    )
    parser.add_argument("--steps", type=int, default=25, help="timed steps per configuration (default 25)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true",
                        help="run the script's code on any device with a tiny UNet and no compile (for tests)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if not torch.cuda.is_available() and not args.smoke:
        print("benchmarks/gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}). Run it on a CUDA machine; the CPU benchmarks are "
              "`python -m benchmarks.run` (make bench).", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args.smoke, device)
    machine = machine_info(device)
    name = re.sub(r"[^A-Za-z0-9]+", "_", machine["gpu"] or "smoke").strip("_")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"gpu_{name}"
    result: dict[str, Any] = {
        "machine": machine, "model": model.name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "setup": f"{model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), "
        f"{args.warmup} warm-up + {args.steps} timed steps of the 1000-step grid per configuration, scaled to 1000 "
        "steps; dps: Gaussian deblur (61x61 at 256 px) std 3, zeta 1; peak memory: "
        "torch.cuda.max_memory_allocated over the timed window (weights included).",
        "rows": [], "skipped": [], "full_run": None,
    }
    eager_unet, compiled_unet = model.unet, None
    for cfg in configurations(args.batches):
        left = args.budget - (time.perf_counter() - began)
        if cfg["compile"] and args.smoke:
            result["skipped"].append({"config": cfg, "reason": "--smoke does not compile"})
            continue
        if left < (COMPILE_RESERVE_S if cfg["compile"] else 30):
            result["skipped"].append({"config": cfg, "reason": f"time budget: {left:.0f} s left"})
            continue
        if cfg["compile"] and compiled_unet is None:  # as runtime.compile=true does: torch.compile of the UNet
            compiled_unet = torch.compile(eager_unet)
        model.unet = compiled_unet if cfg["compile"] else eager_unet
        row = run_config(model, cfg, args, device)
        result["rows"].append(row)
        print(f"[gpu] {row}", flush=True)
        write(out, result)
    model.unet = eager_unet
    eager_fp32 = [r for r in result["rows"] if r["sampler"] == "ddpm" and r["dtype"] == "float32" and not r["compile"]]
    if eager_fp32 and args.budget - (time.perf_counter() - began) > 60:
        predicted = eager_fp32[0]
        full_steps = T if not args.smoke else args.warmup + args.steps
        seconds = time_steps(model, "ddpm", predicted["batch"], "float32", list(range(full_steps)), device)
        result["full_run"] = {"sampler": "ddpm", "batch": predicted["batch"], "dtype": "float32",
                              "s_per_image": seconds / predicted["batch"] * T / full_steps,
                              "predicted_s_per_image": predicted["s_per_image_1000_steps"]}
    result["seconds"] = time.perf_counter() - began
    write(out, result)
    print(f"[gpu] done in {result['seconds']:.0f} s: {out.with_suffix('.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
