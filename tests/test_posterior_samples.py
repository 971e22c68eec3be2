"""``num_samples=K`` posterior samples per measurement (issue #23): streams per (seed, image, sample), one y per
image, results independent of the batch and of K, the outputs and metrics of ``metrics.json``, resume per
(image, sample), and calibration: an exact sampler of the Gaussian oracle covers the truth at the nominal rate.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_cfg
from PIL import Image

import diffexp
from diffexp.evaluation.posterior import (
    LEVELS, bootstrap_ci, coverage, paired_ci, z2_expected, z_squared,
)
from diffexp.models.gaussian import gaussian_oracle
from diffexp.models.schedule import respaced_timesteps, sdedit_start
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.rng import image_generator, sample_generator
from diffexp.samplers.ddpm import ddpm
from diffexp.samplers.pigdm import pigdm
from diffexp.samplers.registry import spec_of
from diffexp.solve import Problem, solve_samples
from diffexp.tracking.console import summary_lines

CPU = torch.device("cpu")
# scoreald: no backprop through the UNet (fast); random masks: per-image operator parameters that must be shared
RUN = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "sampler=scoreald", "task=inpaint",
       "task.mask=random", "sampler.num_steps=3"]


def load(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def png(out: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(out / "images" / name), dtype=int)


def sample_pt(out: Path, i: int, k: int) -> torch.Tensor:
    return torch.load(out / "measurements" / f"{i:05d}_s{k}.pt", weights_only=True)["x"]


def run(out: Path, *overrides: str) -> dict[str, Any]:
    return diffexp.run(make_cfg([*RUN, *overrides], out))


# ---------------------------------------------------------------- streams


def test_sample_streams_differ_for_every_seed_image_and_sample() -> None:
    """No two (seed, image, sample) share a stream, and none is an image's own stream (whose continuation after
    the measurement is sample 0)."""
    keys = list(itertools.product(range(2), range(3), range(1, 4)))
    draws = {key: torch.randn(64, generator=sample_generator(*key, CPU)) for key in keys}
    draws.update({(s, i, 0): torch.randn(64, generator=image_generator(s, i, CPU)) for s in range(2) for i in range(3)})
    for a, b in itertools.combinations(draws, 2):
        assert abs(float(torch.corrcoef(torch.stack([draws[a], draws[b]]))[0, 1])) < 0.5, (a, b)
    with pytest.raises(ValueError, match="sample=0"):
        sample_generator(0, 0, 0, CPU)


def _inpaint_problem() -> tuple[Problem, Any]:
    model = gaussian_oracle(torch.zeros(1, 8, 8), 1.0)
    factory = functools.partial(Inpaint, sigma_y=0.1, mask="random")
    grid = respaced_timesteps(model.num_train_timesteps, 4)
    return Problem(functools.partial(pigdm, clip_denoised=False), spec_of(pigdm), grid, factory, False), model


def test_all_samples_of_an_image_see_its_measurement_and_its_operator() -> None:
    """y and the random mask of every sample of image i are those of a one-sample solve of image i alone."""
    problem, model = _inpaint_problem()
    truth = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pairs = [(3, 0), (3, 1), (3, 2), (5, 1), (5, 2)]
    solved = solve_samples(problem, model, truth, pairs, seed=0)
    assert solved.images == (3, 5) and solved.rows == (0, 0, 0, 1, 1)
    for i, t in ((3, truth[:1]), (5, truth[1:])):
        alone = solve_samples(problem, model, t, [(i, 0)], seed=0)
        for j, (image, _) in enumerate(pairs):
            if image == i:
                assert torch.equal(solved.y[j], alone.y[0])
                assert torch.equal(solved.operator.image_parameters(j)["mask"], alone.operator.image_parameters(0)["mask"])
    assert not torch.equal(solved.x[1], solved.x[2]), "samples of one image differ"


# ---------------------------------------------------------------- through run()


@pytest.fixture(scope="module")
def k3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """K = 3 samples of 2 images, batch 8 (all six samples in one batch)."""
    out = tmp_path_factory.mktemp("k3")
    run(out, "num_images=2", "num_samples=3", "batch_size=8")
    return out


def test_sample_zero_and_y_equal_the_one_sample_run(k3: Path, tmp_path: Path) -> None:
    """num_samples=1 is today's run; with K = 3 the measurement record and sample 0 are that run's."""
    run(tmp_path, "num_images=2", "batch_size=2")
    assert "num_samples" not in load(tmp_path) and "per_sample" not in load(tmp_path)
    for i in range(2):
        one, many = (torch.load(d / "measurements" / f"{i:05d}.pt", weights_only=True) for d in (tmp_path, k3))
        assert one.keys() == many.keys() and all(torch.equal(one[k], many[k]) for k in one)
        assert np.abs(png(tmp_path, f"{i:05d}.png") - png(k3, f"{i:05d}_s0.png")).max() <= 1


def _assert_same_samples(a: Path, b: Path, pairs: list[tuple[int, int]]) -> None:
    rows = {(r["index"], r["sample"]): r for r in load(b)["per_sample"]}
    for row in load(a)["per_sample"]:
        if (row["index"], row["sample"]) not in pairs:
            continue
        other = rows[(row["index"], row["sample"])]
        assert row.keys() == other.keys()
        for key in row:
            assert row[key] == (None if other[key] is None else pytest.approx(other[key], rel=1e-5, abs=1e-6)), key
    for i, k in pairs:  # batched convolutions sum in a batch-dependent order: last bits, grown over the chain's
        # steps (seen up to 1.0e-4 on one pixel of 768 on some CPUs); a different sample differs by O(1)
        torch.testing.assert_close(sample_pt(a, i, k), sample_pt(b, i, k), rtol=1e-4, atol=5e-4)


def test_samples_do_not_depend_on_the_batch(k3: Path, tmp_path: Path) -> None:
    run(tmp_path, "num_images=2", "num_samples=3", "batch_size=1")
    _assert_same_samples(tmp_path, k3, [(i, k) for i in range(2) for k in range(3)])


def test_samples_do_not_depend_on_k(tmp_path: Path) -> None:
    """K = 4 gives the first 4 samples of K = 8."""
    run(tmp_path / "k4", "num_images=1", "num_samples=4", "batch_size=8")
    run(tmp_path / "k8", "num_images=1", "num_samples=8", "batch_size=8")
    _assert_same_samples(tmp_path / "k4", tmp_path / "k8", [(0, k) for k in range(4)])


def test_outputs_and_grid(k3: Path) -> None:
    images = {p.name for p in (k3 / "images").iterdir()}
    for i in range(2):
        assert {f"{i:05d}{s}.png" for s in ("_s0", "_s1", "_s2", "_mean", "_std", "_truth", "_measurement")} <= images
        assert f"{i:05d}.png" not in images
        post = torch.load(k3 / "measurements" / f"{i:05d}_posterior.pt", weights_only=True)
        samples = torch.stack([sample_pt(k3, i, k) for k in range(3)])
        torch.testing.assert_close(post["mean"], samples.mean(0))
        torch.testing.assert_close(post["std"], samples.std(0))
        assert Image.open(k3 / "images" / f"{i:05d}_std.png").size[0] > 100, "a heat map with a colour bar"
    width, height = Image.open(k3 / "grid.png").size  # 16-px tiles, 2-px padding: truth | y | 3 samples | mean | std
    assert (width, height) == (2 + 7 * 18, 2 + 2 * 18)
    assert (k3 / "coverage.png").is_file()


def test_metrics_json(k3: Path) -> None:
    result = load(k3)
    rows, samples = result["per_image"], result["per_sample"]
    assert result["num_samples"] == 3 and result["nfe"] == 3 * result["nfe_per_sample"]
    assert result["num_finished"] == 2 and result["num_finished_samples"] == 6
    assert result["seconds_per_image"] == pytest.approx(3 * result["seconds_per_sample"])
    for i, row in enumerate(rows):
        mine = [s for s in samples if s["index"] == i]
        assert row["psnr"] == pytest.approx(np.mean([s["psnr"] for s in mine]))
        assert row["oracle_best_of_k_psnr"] == pytest.approx(max(s["psnr"] for s in mine))
        assert row["oracle_best_of_k_ssim"] == pytest.approx(max(s["ssim"] for s in mine))
        truth = (png(k3, f"{i:05d}_truth.png") / 255.0)
        mean = (torch.load(k3 / "measurements" / f"{i:05d}_posterior.pt", weights_only=True)["mean"] + 1) / 2
        mse = float(((mean.permute(1, 2, 0).numpy() - truth) ** 2).mean())
        assert row["posterior_mean_psnr"] == pytest.approx(-10 * math.log10(mse), abs=0.05)  # truth PNG: 8 bits
        assert 0 <= row["coverage_50"] <= row["coverage_90"] <= 1 and len(row["coverage_curve"]) == len(LEVELS)
    for block in ("posterior_mean", "oracle_best_of_k"):
        assert set(result[block]) == {"psnr", "ssim", "lpips"}
        assert set(result[block]["psnr"]) == {"mean", "std", "ci"}
        assert result[block]["lpips"] == {"mean": None, "std": None, "ci": None}  # no backbone: null, not an error
    mean = result["posterior_mean"]["psnr"]
    assert mean["mean"] == pytest.approx(np.mean([r["posterior_mean_psnr"] for r in rows]))
    assert mean["ci"][0] <= mean["mean"] <= mean["ci"][1]
    assert result["metrics"]["psnr"]["ci"] == bootstrap_ci([r["psnr"] for r in rows])
    assert result["diversity"]["pixel_std"]["mean"] > 0
    cov = result["coverage"]
    assert set(cov) == {"coverage_50", "coverage_90", "z2", "z2_expected", "curve"}
    assert cov["curve"]["nominal"] == list(LEVELS) and len(cov["curve"]["empirical"]) == len(LEVELS)


def test_console_prints_intervals_and_warns_when_overconfident(k3: Path) -> None:
    result = load(k3)
    lines = summary_lines(result, k3)
    assert any("95% CI" in line for line in lines) and any("oracle_best_of_k" in line for line in lines)
    psnr = result["posterior_mean"]["psnr"]["ci"]
    assert any(f"[{psnr[0]:.2f}, {psnr[1]:.2f}]" in line for line in lines)
    result["coverage"]["coverage_90"]["mean"] = 0.4
    assert any("over-confident" in line and "40%" in line for line in summary_lines(result, k3))
    result["coverage"]["coverage_90"]["mean"] = 0.88
    assert not any("over-confident" in line for line in summary_lines(result, k3))


def test_resume_per_sample(k3: Path, tmp_path: Path) -> None:
    """Resuming K = 2 with K = 3, batch 1 (bit-identical batches): only the third samples are drawn, and one whose
    file was damaged; the result is that of an uninterrupted K = 3 run at batch 1."""
    fresh, out = tmp_path / "fresh", tmp_path / "resumed"
    run(fresh, "num_images=2", "num_samples=3", "batch_size=1")
    run(out, "num_images=2", "num_samples=2", "batch_size=1")
    (out / "images" / "00001_s0.png").write_bytes(b"")
    drawn: list[tuple[int, int]] = []
    real = diffexp.experiment.solve_samples

    def spy(*args: Any, **kwargs: Any) -> Any:
        drawn.extend(args[3])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffexp.experiment, "solve_samples", spy)
        run(out, "num_images=2", "num_samples=3", "batch_size=1", "resume=true")
    assert sorted(drawn) == [(0, 2), (1, 0), (1, 2)]
    a, b = load(fresh), load(out)
    for key in ("per_sample", "per_image", "posterior_mean", "coverage", "metrics"):
        assert a[key] == b[key], key
    with pytest.raises(ValueError, match="num_samples"):
        run(out, "num_images=2", "num_samples=2", "batch_size=1", "resume=true")


def test_overwrite_deletes_a_posterior_run(k3: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(k3, out)
    run(out, "num_images=1", "batch_size=1", "overwrite=true")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.png", "00000_measurement.png",
                                                                   "00000_truth.png"]
    assert not (out / "coverage.png").exists()


# ---------------------------------------------------------------- calibration


def test_coverage_of_exchangeable_draws_is_nominal_at_every_k() -> None:
    """The truth as one more draw of the samples' law: nominal coverage at every level, even for K = 4 (plain
    sample quantiles would cover about (K − 1)/(K + 1) of it)."""
    g = torch.Generator().manual_seed(0)
    for k in (4, 8):
        curve = coverage(torch.randn(k, 1, 100, 100, generator=g), torch.randn(1, 100, 100, generator=g))
        assert curve == pytest.approx(list(LEVELS), abs=0.015)
    z2 = z_squared(torch.randn(8, 1, 100, 100, generator=g), torch.randn(1, 100, 100, generator=g))
    assert z2 == pytest.approx(z2_expected(8), rel=0.1)  # a squared Student t with K − 1 degrees of freedom
    tied = coverage(-torch.ones(8, 1, 4, 4), -torch.ones(1, 4, 4))  # saturated pixels carry no information
    assert tied == pytest.approx(list(LEVELS))
    outside = coverage(torch.zeros(8, 1, 4, 4), torch.ones(1, 4, 4), levels=[0.5, 0.9])
    assert outside == pytest.approx([0.0, 9 * 0.95 - 8])  # the floor max(0, (K + 1)(1 + p)/2 − K)


def test_bootstrap_interval_is_seeded_and_paired() -> None:
    values = list(np.random.default_rng(1).normal(size=20))
    ci = bootstrap_ci(values)
    assert ci == bootstrap_ci(values) and ci[0] < np.mean(values) < ci[1]
    assert bootstrap_ci([1.0]) is None and bootstrap_ci([1.0, None]) is None
    diff, dci = paired_ci([v + 0.5 for v in values], values)
    assert diff == pytest.approx(0.5) and dci == pytest.approx([0.5, 0.5])


def _gaussian_coverage(sampler: Any, factory: Any, *, sdedit: bool, num_steps: int, k: int = 16,
                       images: int = 48) -> tuple[list[float], float]:
    """K samples of each of ``images`` truths drawn from the prior N(0, I) on 1×8×8, through ``solve_samples``."""
    model = gaussian_oracle(torch.zeros(1, 8, 8), 1.0)
    t_max = sdedit_start(model.alphas_cumprod, 0.4) if sdedit else None
    grid = respaced_timesteps(model.num_train_timesteps, num_steps, t_max=t_max)
    problem = Problem(functools.partial(sampler, clip_denoised=False), spec_of(sampler), grid, factory, sdedit)
    truth = torch.randn(images, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    pairs = [(i, s) for i in range(images) for s in range(k)]
    x = solve_samples(problem, model, truth, pairs, seed=0).x.reshape(images, k, 1, 8, 8)
    # the run clamps its samples to the image range [-1, 1]: clamped, the truth stays exchangeable with them
    truth = truth.clamp(-1, 1)
    curves = [coverage(x[i], truth[i]) for i in range(images)]
    z2s = [z_squared(x[i], truth[i]) for i in range(images)]
    z2 = float(np.mean([v for v in z2s if v is not None])) if any(v is not None for v in z2s) else math.inf
    return list(np.mean(curves, axis=0)), z2


EXACT = {  # samplers exact on the Gaussian oracle (tests/test_posterior.py)
    "ddpm_sdedit_denoise": (ddpm, functools.partial(Identity, sigma_y=0.4), True, 100),
    # from pure noise: 1000 unit steps lose about 4% of the variance (tests/test_posterior.py)
    "pigdm_inpaint": (pigdm, functools.partial(Inpaint, sigma_y=0.4, mask="box", box_size=4), False, 1000),
}


@pytest.mark.parametrize(("sampler", "factory", "sdedit", "steps"), EXACT.values(), ids=EXACT.keys())
def test_exact_sampler_covers_the_truth_at_the_nominal_rate(sampler: Any, factory: Any, sdedit: bool,
                                                            steps: int) -> None:
    """90 % intervals cover 90 % ± 3 % (and 50 % ones 50 % ± 3 %): measured 0.899 and 0.483 (DDPM), 0.896 and
    0.498 (ΠGDM) over 48 images × 64 pixels, K = 16."""
    curve, _ = _gaussian_coverage(sampler, factory, sdedit=sdedit, num_steps=steps)
    assert abs(curve[LEVELS.index(0.9)] - 0.9) < 0.03, curve
    assert abs(curve[LEVELS.index(0.5)] - 0.5) < 0.03, curve


def test_overconfident_sampler_is_caught() -> None:
    """A sampler that collapses the variance (DDIM, η = 0, one draw from the initial noise only) covers far less."""
    from diffexp.samplers.ddim import ddim

    curve, _ = _gaussian_coverage(functools.partial(ddim, eta=0.0), functools.partial(Identity, sigma_y=0.4),
                                  sdedit=True, num_steps=50)
    assert curve[LEVELS.index(0.9)] < 0.75, curve


# ---------------------------------------------------------------- sweep report: paired by image


def _fake_job(sweep: Path, num: int, sampler: str, psnr: list[float], task: str = "deblur") -> None:
    """A finished job directory (Hydra's files and a metrics.json with per-image PSNRs)."""
    import yaml

    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"sampler={sampler}", f"task={task}"]))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": "psnr"}))
    rows = [{"index": i, "psnr": v} for i, v in enumerate(psnr)]
    result = {"status": "ok", "error": None, "task": task, "num_images": len(psnr), "num_finished": len(psnr),
              "nfe": 10, "seconds_per_image": 0.1, "metrics": {"psnr": {"mean": float(np.mean(psnr)),
                                                                       "std": float(np.std(psnr))}},
              "baseline": {}, "per_image": rows, "settings_values": {"data.seed": 0}}
    (job / "metrics.json").write_text(json.dumps(result))


def test_sweep_report_pairs_jobs_by_image(tmp_path: Path) -> None:
    """Images differ by ±10 dB, so unpaired intervals of samplers 0.5 dB apart overlap; paired by image the constant
    0.5 dB gap is significant, and a gap that is noise is marked ≈; another task is its own group."""
    from diffexp.tracking.report import load_jobs, main, paired_differences

    rng = np.random.default_rng(0)
    base = list(rng.uniform(10, 30, size=16))
    sweep = tmp_path / "sweep"
    _fake_job(sweep, 0, "best", [v + 0.5 for v in base])
    _fake_job(sweep, 1, "close", base)  # 0.5 dB below on every image
    _fake_job(sweep, 2, "noisy", [v + 0.5 + e for v, e in zip(base, rng.normal(0, 2, size=16), strict=True)])
    _fake_job(sweep, 3, "other", base, task="inpaint")
    main([str(sweep)])
    (group,) = [rows for best, rows in paired_differences(load_jobs(sweep)) if best.values["sampler"] == "best"]
    by = {p.config.values["sampler"]: p for p in group}
    assert by["close"].diff == pytest.approx(-0.5) and by["close"].significant is True
    assert by["noisy"].significant is False and by["noisy"].ci[0] < 0 < by["noisy"].ci[1]
    assert set(by) == {"best", "close", "noisy"}  # not the inpainting job
    md = (sweep / "summary.md").read_text()
    main_table, paired = md.split("## Paired by image: psnr (deblur)")
    assert "|  | 1 | close | deblur | 20.15 | -0.5 | [-0.5, -0.5] | 16 |" in paired
    assert "| ≈ | 2 | noisy |" in paired and "inpaint" not in paired
    unpaired = next(line for line in main_table.splitlines() if line.startswith("|  | 1 | ok |")).split("|")
    high = float(unpaired[7].strip(" []").split(",")[1])  # the unpaired interval of "close" reaches past "best"'s mean
    assert high > np.mean(base) + 0.5


# ---------------------------------------------------------------- settings and W&B


def test_num_samples_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_samples=0"):
        run(tmp_path / "zero", "num_samples=0")


def test_generation_has_no_posterior_samples(tmp_path: Path) -> None:
    generate = ["model=tiny", "logger=none", "task=generate", "sampler=ddpm", "sampler.num_steps=2", "num_images=1",
                "metrics.fid=false"]
    with pytest.raises(ValueError, match="num_samples=2: posterior samples need a measurement"):
        diffexp.run(make_cfg([*generate, "num_samples=2"], tmp_path / "gen"))


def test_wandb_summary_has_the_posterior_numbers(tmp_path: Path) -> None:
    """logger=wandb (offline, through the CLI): the posterior blocks and their CIs are in the run's summary."""
    from conftest import cli
    from test_wandb import inspect, offline_run

    out = tmp_path / "run"
    proc = cli([*RUN, "logger=wandb", "num_images=2", "num_samples=2", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, summary = load(out), inspect(offline_run(out), summary=True)["summary"]
    assert summary["posterior_mean/psnr/mean"] == pytest.approx(result["posterior_mean"]["psnr"]["mean"])
    assert summary["posterior_mean/psnr/ci_low"] == pytest.approx(result["posterior_mean"]["psnr"]["ci"][0])
    assert summary["coverage/coverage_90/mean"] == pytest.approx(result["coverage"]["coverage_90"]["mean"])
    assert summary["oracle_best_of_k/psnr/mean"] == pytest.approx(result["oracle_best_of_k"]["psnr"]["mean"])
    assert summary["num_samples"] == 2 and summary["nfe_per_sample"] == result["nfe_per_sample"]
    assert summary["coverage_plot"]["_type"] == "image-file" and "coverage_curve_table" in summary


def test_image_statistics_with_lpips() -> None:
    """Pairwise LPIPS averages the K(K−1)/2 pairs, best-of-K takes the lowest LPIPS and the highest PSNR (a stub
    metric: the mean absolute difference stands in for LPIPS, its negative for PSNR)."""
    from diffexp.evaluation.posterior import image_statistics

    def stub(pred: torch.Tensor, target: torch.Tensor, operator: Any = None) -> dict[str, list[float]]:
        d = (pred - target).abs().flatten(1).mean(1)
        return {"psnr": (-d).tolist(), "lpips": d.tolist()}

    samples = torch.stack([torch.full((1, 4, 4), v) for v in (0.0, 0.2, 0.4)])
    row = image_statistics(samples, torch.full((1, 4, 4), 0.1), stub)
    assert row["pairwise_lpips"] == pytest.approx((0.2 + 0.4 + 0.2) / 3)
    assert row["oracle_best_of_k_lpips"] == pytest.approx(0.1) and row["oracle_best_of_k_psnr"] == pytest.approx(-0.1)
    assert row["posterior_mean_lpips"] == pytest.approx(0.1) and row["pixel_std"] == pytest.approx(0.1)


def test_z2_floors_the_spread_at_one_grey_level() -> None:
    """Samples all but saturated (spread 1e-4) and a truth 0.1 away: z² divides by one grey level, not by 1e-4."""
    samples = torch.stack([torch.full((1, 2, 2), -1.0 + 1e-4 * k) for k in range(4)])
    z2 = z_squared(samples, torch.full((1, 2, 2), -0.9))
    assert z2 == pytest.approx((0.1 - 1.5e-4) ** 2 / (2 / 255) ** 2, rel=1e-3)
