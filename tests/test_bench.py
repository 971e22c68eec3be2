"""Smoke test of the benchmark code (``make bench``) on the tiny model: every benchmark writes its JSON
with the expected keys and ``latest.md`` holds every section (no timing is asserted); the GPU script
runs in --smoke mode; the re-implemented official DPS loop equals ``sampler=dps``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from benchmarks import defaults_table, gpu, sides
from benchmarks import run as bench
from benchmarks import posterior_bias
from benchmarks.common import posterior_samplers, settings_from
from benchmarks.suites import SUITES
from diffexp.models.diffusion import tiny_model
from diffexp.models.schedule import respaced_timesteps
from diffexp.operators.blur import Blur
from diffexp.samplers.dps import dps
from diffexp.samplers.registry import available, spec_of
from diffexp.solve import Problem

TINY = [
    "--quick", "--model", "tiny", "--data", "synthetic", "--threads", "1", "--repeats", "1",
    "--gen-steps", "2", "--gen-batch", "1", "--dps-steps", "2", "--dps-images", "1",
    "--scaling-steps", "1", "--scaling-batches", "1", "2", "--quality-steps", "1", "2", "--quality-images", "1",
    "--quality-tasks", "deblur", "--memory-batch", "1", "--memory-steps", "1",
    "--fast-images", "1", "--fast-steps", "2",
]  # batch 1 for memory: three fresh worker processes in all (the slow part), the ddpm one shared
KEYS = {"name", "title", "setup", "columns", "rows", "summary", "notes", "machine", "settings", "seconds"}
MACHINE = {"cpu", "cpu_cores", "torch_threads", "torch", "diffusers", "device", "date"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        bench.main([*TINY, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", list(SUITES))
def test_each_benchmark_writes_its_json(results: Path, name: str) -> None:
    data = json.loads((results / f"{name}.json").read_text())
    assert KEYS <= set(data)
    assert MACHINE <= set(data["machine"])
    assert data["rows"], name
    for key, _, _ in data["columns"]:
        assert all(key in row for row in data["rows"]), (name, key)


def test_comparisons_report_ratios(results: Path) -> None:
    generation = json.loads((results / "generation.json").read_text())
    assert {r["side"] for r in generation["rows"]} == {"diffexp `sampler=ddpm`", "diffusers `DDPMPipeline`"}
    assert generation["summary"]["time ratio diffexp / diffusers (target <= 1.0)"] > 0
    assert all(r["peak_mb"] is not None and len(r["runs_s"]) == 1 for r in generation["rows"])
    dps = json.loads((results / "dps.json").read_text())
    sides = {r["side"] for r in dps["rows"]}
    assert {"diffexp `sampler=dps`", "official DPS loop (re-implemented)", "measurement (baseline)"} <= sides
    assert "deepinv `DPS`" in sides or any("deepinv not compared" in n for n in dps["notes"])
    assert all(r["psnr"] is not None for r in dps["rows"])
    for result in (generation, dps):  # the per-round ratio spread shows the noise behind a ratio of medians
        assert any(" per round: median " in note for note in result["notes"]), result["notes"]
    scaling = json.loads((results / "scaling.json").read_text())
    expected = {(s, b) for s in ("ddpm", "dps", "scoreald") for b in (1, 2)}
    assert {(r["sampler"], r["batch"]) for r in scaling["rows"]} == expected
    memory = json.loads((results / "memory.json").read_text())
    assert [r["sampler"] for r in memory["rows"]] == ["ddpm", "dps"]
    fast = json.loads((results / "fast.json").read_text())  # every posterior sampler of the registry, and DPS
    names = {r["sampler"] for r in fast["rows"]} - {"deepinv-diffpir"}
    fewest = fast["summary"]["fewest steps within 0.2 dB of DPS"]  # "name steps, ..." or "none"
    searched = {"@".join(item.split(" ")) for item in fewest.split(", ")} if fewest != "none" else set()
    assert names - searched == set(posterior_samplers()) and searched <= names  # the fewest-steps rows are timed
    assert any(note.startswith("Fewest steps within 0.2 dB of DPS (tried: 1): ") for note in fast["notes"])
    assert fast["setup"].startswith("model=tiny, task=deblur, digits 8–8 (never used for tuning)")


def test_quality_table_and_plot(results: Path) -> None:
    quality = json.loads((results / "quality.json").read_text())
    expected = {(s, n) for s in ("dps", "scoreald") for n in (1, 2)}
    assert {(r["sampler"], r["steps"]) for r in quality["rows"]} == expected
    assert (results / "quality_vs_steps.png").stat().st_size > 0


def test_latest_md_has_every_section_and_the_machine(results: Path) -> None:
    text = (results / "latest.md").read_text()
    for name in SUITES:
        assert json.loads((results / f"{name}.json").read_text())["title"] in text
    assert "torch threads" in text and torch.__version__ in text
    assert "| side | median s | s / image | peak MB |" in text


def test_only_refreshes_one_section_and_keeps_the_others(results: Path) -> None:
    before = json.loads((results / "generation.json").read_text())["machine"]["date"]
    bench.main([*TINY, "--out", str(results), "--only", "scaling"])
    text = (results / "latest.md").read_text()
    assert all(json.loads((results / f"{n}.json").read_text())["title"] in text for n in SUITES)
    assert json.loads((results / "generation.json").read_text())["machine"]["date"] == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_script_without_cuda_exits_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_script_smoke(tmp_path: Path) -> None:
    assert gpu.main(["--smoke", "--steps", "1", "--warmup", "1", "--batches", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_smoke.json").read_text())
    expected = {(s, d) for s in ("ddpm", "dps") for d in ("float32", "bfloat16")}
    assert {(r["sampler"], r["dtype"]) for r in data["rows"]} == expected
    assert data["full_run"] is not None and (tmp_path / "gpu_smoke.md").is_file()


def test_official_dps_loop_equals_diffexp_dps_at_batch_1() -> None:
    """The re-implemented official loop is the same algorithm as ``sampler=dps``: fed the same y, x_T and noise
    (``peer_inputs``, the draws ``solve_batch`` makes), the two agree to float rounding (so the DPS timing compares
    implementations, not algorithms)."""
    model = tiny_model(sample_size=8)
    sample = functools.partial(dps, step_size=0.5)
    operator_factory = functools.partial(Blur, sigma_y=0.05, kernel_size=3)
    problem = Problem(sample, spec_of(sample), respaced_timesteps(model.num_train_timesteps, 6), operator_factory,
                      sdedit=False)
    truth = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    solved = sides.diffexp_solve(model, problem, 0, [0], 6, truth)
    operator, y, x, gens = sides.peer_inputs(model, problem, 0, [0], truth)
    ours = sides.solved_for(solved, y)  # solve_batch measured the very y the peer gets
    official = sides.official_dps(model, operator, y, x, gens[0], 0.5, 6)
    torch.testing.assert_close(official, ours, atol=1e-5, rtol=0)


def test_solved_for_refuses_another_measurement() -> None:
    model = tiny_model(sample_size=8)
    sample = functools.partial(dps, step_size=0.5)
    problem = Problem(sample, spec_of(sample), respaced_timesteps(model.num_train_timesteps, 2),
                      functools.partial(Blur, sigma_y=0.05, kernel_size=3), sdedit=False)
    truth = torch.zeros(1, 3, 8, 8)
    solved = sides.diffexp_solve(model, problem, 0, [0], 2, truth)
    _, y, _, _ = sides.peer_inputs(model, problem, 1, [0], truth)  # another seed: another noise draw
    with pytest.raises(RuntimeError, match="not the same y"):
        sides.solved_for(solved, y)


def test_benchmark_sampler_lists_come_from_the_registry() -> None:
    """The fast-sampler benchmark and the posterior-bias table run every posterior sampler of conf/sampler/."""
    posterior = {name for name, spec in available().items() if spec.measurement}
    assert set(posterior_samplers()) == posterior and "ddpm" not in posterior
    assert set(settings_from({}, quick=False).fast_samplers) == posterior - {"dps"}
    assert set(posterior_bias.SAMPLERS) == posterior


def test_posterior_bias_refuses_a_sampler_without_its_num_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(posterior_bias, "STEPS", {k: v for k, v in posterior_bias.STEPS.items() if k != "dps"})
    monkeypatch.setattr("sys.argv", ["posterior_bias", "--only", "dps"])
    with pytest.raises(ValueError, match="dps have no num_steps"):
        posterior_bias.main()


@pytest.mark.parametrize(
    ("sampler", "task", "expected", "nfe"),
    [
        ("dps", "deblur", "step_size 5", 200),
        ("scoreald", "inpaint", "step_size 1, corrector_steps 1, corrector_size 1", 399),
        ("diffpir", "deblur", "lam 4, zeta 1", 100),
        ("daps_exact", "deblur", "step_size 0.5, ode_steps 1", 100),
        ("daps", "inpaint", "lr 5e-05, tau 0.01, ode_steps 5", 1000),
        ("reddiff", "deblur", "lam 0.05, lr 0.5", 100),
    ],
)
def test_defaults_table_reports_the_resolved_per_task_step_size(
    tmp_path: Path, sampler: str, task: str, expected: str, nfe: int
) -> None:
    """``make table``'s rows name the step size the job really used: the task's default, read from the saved
    ``.hydra/config.yaml`` (whose ``sampler`` node holds the values of ``conf/tuned/<task>_<sampler>.yaml``)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", f"sampler={sampler}"])
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"task={task}", f"sampler={sampler}"]))
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    stats = {"psnr": {"mean": 25.0, "std": 1.0}, "ssim": {"mean": 0.9, "std": 0.01}}
    result = {"status": "ok", "task": task, "sampler": sampler, "seconds_per_image": 2.0, "nfe": nfe,
              "metrics": stats, "baseline": {"psnr": {"mean": 15.0, "std": 0.5}}}
    (job / "metrics.json").write_text(json.dumps(result))
    row = defaults_table.table(tmp_path).splitlines()[2]
    assert row == f"| {task} | {sampler} | {expected} | 25.00 ± 1.00 | 0.900 ± 0.010 | — | {nfe} | 2.00 | 15.00 ± 0.50 |"
