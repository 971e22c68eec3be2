"""FID/KID honesty checks: scipy and torchmetrics references, real < blurred < noise, unbiased KID, runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchvision.transforms.functional import gaussian_blur

from diffexp.evaluation import fid as dist
from diffexp.models.classifier import load_classifier, predict
from diffexp.data.loaders import ASSETS
from diffexp.evaluation.fid import (
    INCEPTION_WEIGHTS,
    MNIST_REFERENCE,
    InceptionFeatures,
    MnistFeatures,
    ReferenceStats,
    extract,
    fid_kid,
    folder_reference,
    frechet_distance,
    kernel_distance,
    load_images,
    mean_cov,
    mmd2,
)
from diffexp.experiment import run
from conftest import make_cfg

DIGITS = sorted((ASSETS / "mnist_eval").glob("*.png"))[:64]  # the set these tests were written on


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    """The first 64 bundled MNIST test digits (indices 0-63) in [0, 1]."""
    return load_images(DIGITS, channels=1, size=28)


@pytest.fixture(scope="module")
def features() -> MnistFeatures:
    return MnistFeatures()


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    return ReferenceStats.load(MNIST_REFERENCE)


def _blurred(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Gaussian blur truncated at 2σ (σ = 2: the 9×9 kernel of task=deblur)."""
    return gaussian_blur(x, kernel_size=int(4 * sigma) + 1, sigma=sigma)


def _noise(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _scipy_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The formula as pytorch-fid writes it, with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_shipped_classifier_labels_bundled_digits(real: torch.Tensor) -> None:
    labels = np.loadtxt(ASSETS / "mnist_eval" / "labels.csv", delimiter=",", skiprows=1, usecols=2, dtype=int)[: len(real)]
    accuracy = (predict(load_classifier(), real * 2 - 1).numpy() == labels).mean()
    assert accuracy >= 0.95


def test_frechet_distance_matches_scipy(real: torch.Tensor, features: MnistFeatures, reference: ReferenceStats) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    b = 0.5 + torch.randn(200, 12, generator=g, dtype=torch.float64)
    feats = extract(features, _blurred(real))
    for x, (mu2, s2) in ((a, mean_cov(b)), (feats, (reference.mean, reference.cov))):
        mu1, s1 = mean_cov(x)
        ours = frechet_distance(mu1, s1, mu2, s2)
        expected = _scipy_fid(*(t.numpy() for t in (mu1, s1, mu2, s2)))
        assert ours == pytest.approx(expected, rel=1e-6)
        assert np.cov(x.numpy(), rowvar=False) == pytest.approx(s1.numpy(), rel=1e-9, abs=1e-12)


def test_fid_and_kid_agree_with_torchmetrics(real: torch.Tensor, features: MnistFeatures) -> None:
    fake = _blurred(real[:32])
    tm_fid = FrechetInceptionDistance(feature=features, normalize=True)
    tm_fid.update(real[32:], real=True)
    tm_fid.update(fake, real=False)
    tm_kid = KernelInceptionDistance(feature=features, normalize=True, subsets=3, subset_size=32)
    tm_kid.update(real[32:], real=True)
    tm_kid.update(fake, real=False)
    f_real, f_fake = extract(features, real[32:]), extract(features, fake)
    ours = frechet_distance(*mean_cov(f_fake), *mean_cov(f_real))
    assert ours == pytest.approx(float(tm_fid.compute()), rel=1e-4)
    kid_mean, _ = tm_kid.compute()  # full sets: every subset is the whole set, so no randomness
    assert float(mmd2(f_fake, f_real)) == pytest.approx(float(kid_mean), rel=1e-4)


def test_kid_is_na_when_every_subset_is_the_whole_set() -> None:
    """Sets of equal size up to the subset size: identical subsets, so KID is null with its reason (never a std
    of 0 by construction); a larger set on either side gives subsets that differ, and a spread."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=g, dtype=torch.float64), torch.randn(40, 16, generator=g, dtype=torch.float64)
    same = kernel_distance(a, b[:8])
    assert same["mean"] is None and same["std"] is None and same["subset_size"] == 8
    assert "8 vs 8 images" in same["reason"] and "more than 1000 images" in same["reason"]
    assert kernel_distance(a[:5], b[:5], subset_size=4)["std"] > 0  # both sets larger than the subset
    for x, y in ((a, b), (b, a)):
        kid = kernel_distance(x, y)
        assert kid["subset_size"] == 8 and kid["std"] > 0 and "reason" not in kid


def test_real_vs_itself_is_zero(real: torch.Tensor, features: MnistFeatures) -> None:
    f = extract(features, real)
    mean, cov = mean_cov(f)
    # 64 images in 128-d: a rank-deficient covariance, whose ~0 eigenvalues give ~1e-7 square roots
    assert abs(frechet_distance(mean, cov, mean, cov)) < 1e-6 * float(cov.trace())


def test_real_far_below_blurred_far_below_noise(real: torch.Tensor, features: MnistFeatures, reference) -> None:
    """Against the shipped test-set statistics, and between disjoint halves of the bundled digits; more blur
    scores worse (the mnist features saturate towards noise: FID ≈ 1000 for images far from any digit)."""
    sets = {"real": real, "blurred": _blurred(real, 1.0), "blurred_more": _blurred(real, 2.0), "noise": _noise(64)}
    scores = {name: fid_kid(extract(features, x), reference) for name, x in sets.items()}
    fid = {k: v["fid"] for k, v in scores.items()}
    kid = {k: v["kid"]["mean"] for k, v in scores.items()}
    assert 4 * fid["real"] < fid["blurred"] < fid["blurred_more"] < fid["noise"] and 2.5 * fid["blurred"] < fid["noise"], fid
    assert 50 * kid["real"] < kid["blurred"] < kid["blurred_more"] < kid["noise"] and 2.5 * kid["blurred"] < kid["noise"], kid
    half_a, half_b = real[::2], real[1::2]
    stats_b = mean_cov(extract(features, half_b))
    halves = {name: frechet_distance(*mean_cov(extract(features, x)), *stats_b)
              for name, x in (("real", half_a), ("blurred", _blurred(half_a, 1.0)), ("noise", _noise(32)))}
    # 32 vs 32 images: FID's small-set bias lifts every value (real vs real ≈ 170 here, ≈ 70 for 64 vs 10,000)
    assert 2 * halves["real"] < halves["blurred"] and 2.5 * halves["blurred"] < halves["noise"], halves


def test_kid_is_unbiased_on_disjoint_real_subsets(reference: ReferenceStats, real, features) -> None:
    """KID over 10 disjoint pairs of 50 real test features averages ≈ 0; the biased (V-statistic) MMD does not."""
    f = reference.kid_features.double()
    pairs = [(f[100 * k : 100 * k + 50], f[100 * k + 50 : 100 * k + 100]) for k in range(10)]
    values = np.array([float(mmd2(a, b)) for a, b in pairs])
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * standard_error

    def biased(a: torch.Tensor, b: torch.Tensor) -> float:
        k = lambda p, q: (p @ q.T / p.shape[1] + 1) ** 3  # noqa: E731
        return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())

    assert np.mean([biased(a, b) for a, b in pairs]) > 5 * standard_error
    blurred = float(mmd2(extract(features, _blurred(real[:50])), f[:50]))
    assert blurred > 10 * abs(values.mean())


def test_kid_subset_size_adapts_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(30, 8, generator=g)
    out = kernel_distance(a, b, subsets=4)
    assert out["subset_size"] == 5 and out["subsets"] == 4
    assert kernel_distance(a, b, subsets=4) == out
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(a[:1], b)


def test_reference_folder_is_cached_by_content(tmp_path: Path, monkeypatch, features) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "ref"
    folder.mkdir()
    for p in DIGITS[:20]:
        (folder / p.name).write_bytes(p.read_bytes())
    first = folder_reference(str(folder), features, features="mnist", channels=1, size=28)
    cached = list((tmp_path / "cache" / "diffexp" / "reference_stats").glob("mnist-1x28-*.safetensors"))
    assert len(cached) == 1 and first.num_images == 20 and len(first.kid_features) == 20
    expected = mean_cov(extract(features, load_images(DIGITS[:20], channels=1, size=28)))
    assert torch.allclose(first.mean, expected[0]) and torch.allclose(first.cov, expected[1])

    def no_compute(*args, **kwargs):
        raise AssertionError("the cached statistics should have been used")

    monkeypatch.setattr(dist, "extract", no_compute)
    again = folder_reference(str(folder), features, features="mnist", channels=1, size=28)
    assert torch.equal(again.cov, first.cov)
    (folder / DIGITS[0].name).write_bytes(DIGITS[30].read_bytes())  # changed content → recomputed
    with pytest.raises(AssertionError, match="cached"):
        folder_reference(str(folder), features, features="mnist", channels=1, size=28)


def _metrics_json(cfg_overrides: list[str], out: Path) -> dict:
    run(make_cfg(cfg_overrides, out))
    return json.loads((out / "metrics.json").read_text())


TINY = ["model=tiny", "data=synthetic", "logger=none", "sampler.num_steps=3", "metrics.fid_features=mnist"]


def test_generate_run_reports_fid_kid_and_class_coverage(tmp_path: Path) -> None:
    result = _metrics_json([*TINY, "task=generate", "sampler=ddpm", "num_images=3", "batch_size=3"], tmp_path)
    block = result["distribution"]
    assert block["features"] == "mnist" and block["num_images"] == 3
    assert block["reference"] == "MNIST test set (10000 images)" and block["reference_images"] == 10000
    assert block["fid"] > 0 and block["kid"]["subset_size"] == 3
    assert sum(block["class_histogram"]) == 3 and 0 < block["class_coverage"] <= 0.3


def test_inverse_run_resume_recomputes_over_all_images(tmp_path: Path) -> None:
    base = [*TINY, "task=deblur", "batch_size=2"]
    whole = _metrics_json([*base, "num_images=4"], tmp_path / "whole")["distribution"]
    _metrics_json([*base, "num_images=2"], tmp_path / "part")
    resumed = _metrics_json([*base, "num_images=4", "resume=true"], tmp_path / "part")["distribution"]
    assert resumed == whole
    assert whole["num_images"] == 4 and whole["reference"] == "ground truths (4 images)"
    assert {"fid", "kid", "baseline_fid", "baseline_kid", "accuracy", "baseline_accuracy"} <= set(whole)
    for kid in (whole["kid"], whole["baseline_kid"]):  # 4 outputs against their 4 truths: KID is n/a, with why
        assert kid["mean"] is None and kid["std"] is None and kid["reason"].startswith("4 vs 4 images")


def test_fid_false_and_contradiction(tmp_path: Path) -> None:
    result = _metrics_json([*TINY, "task=generate", "sampler=ddpm", "num_images=2", "metrics.fid=false"], tmp_path)
    assert result["distribution"] is None
    with pytest.raises(ValueError, match="fid_required=true contradicts"):
        run(make_cfg([*TINY, "metrics.fid=false", "metrics.fid_required=true"], tmp_path / "b"))


def test_missing_inception_weights_warn_once_or_fail_before_sampling(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(dist, "_warned", set())
    overrides = ["model=tiny", "data=synthetic", "logger=none", "sampler.num_steps=2", "num_images=2"]
    with caplog.at_level(logging.WARNING):
        first = _metrics_json([*overrides, "task=deblur"], tmp_path / "a")  # tiny is 16-px RGB: auto → inception
        _metrics_json([*overrides, "task=deblur"], tmp_path / "b")
    assert first["distribution"] is None
    warnings = [r.getMessage() for r in caplog.records if INCEPTION_WEIGHTS in r.getMessage()]
    assert len(warnings) == 1 and "hub/checkpoints" in warnings[0] and "make prefetch" in warnings[0]
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS):
        run(make_cfg([*overrides, "task=deblur", "metrics.fid_required=true"], tmp_path / "c"))
    assert not list((tmp_path / "c").glob("images/*.png"))  # failed before sampling


@pytest.fixture
def inception_weights(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME holding torch-fidelity's InceptionV3 file with random weights (nothing is downloaded)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    path = home / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    path.parent.mkdir(parents=True)
    torch.save({}, path)
    torch.manual_seed(0)
    with monkeypatch.context() as m:  # build the network without loading (there is nothing to load yet)
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(path))
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_features_match_torchmetrics(inception_weights: Path, real: torch.Tensor) -> None:
    a, b = real[:6], _blurred(real[6:12])
    extractor = InceptionFeatures(inception_weights)
    ours = frechet_distance(*mean_cov(extract(extractor, b)), *mean_cov(extract(extractor, a)))
    reference = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_weights))
    to_uint8 = lambda x: (x * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)  # noqa: E731
    reference.update(to_uint8(a), real=True)
    reference.update(to_uint8(b), real=False)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-3)
    assert dist.inception_problem() is None


@pytest.mark.slow
def test_generated_digits_score_near_real_far_below_blurred(real: torch.Tensor, features, reference, tmp_path) -> None:
    """The shipped DDPM's samples (64, DDIM 50 steps) against the MNIST test statistics. At 64 images FID's
    spread (±10) hides the gap between real digits and the model's samples (1000 images show it: README)."""
    result = _metrics_json(
        ["task=generate", "sampler=ddim", "sampler.num_steps=50", "num_images=64", "batch_size=64", "logger=none"],
        tmp_path,
    )["distribution"]
    sets = (("real", real), ("blurred", _blurred(real)))
    scores = {name: fid_kid(extract(features, x), reference) for name, x in sets}
    assert result["fid"] < 2 * scores["real"]["fid"] and 4 * result["fid"] < scores["blurred"]["fid"]
    assert 4 * result["kid"]["mean"] < scores["blurred"]["kid"]["mean"]
    assert result["class_coverage"] >= 0.8


@pytest.mark.slow
def test_deblurred_digits_score_far_below_the_blurred_ones(tmp_path: Path) -> None:
    """The default deblurring (shipped model, DPS), 8 digits with 100 steps: FID and class accuracy."""
    block = _metrics_json(["sampler.num_steps=100", "logger=none"], tmp_path)["distribution"]
    assert block["num_images"] == 8 and block["reference"] == "ground truths (8 images)"
    assert 10 * block["fid"] < block["baseline_fid"]
    assert block["accuracy"] >= 0.875 and block["accuracy"] > block["baseline_accuracy"]


def test_bad_settings_fail_before_compute(tmp_path: Path) -> None:
    from diffexp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics.fid_features='vgg' is invalid: allowed is one of auto, mnist"):
        run(make_cfg([*TINY[:-1], "metrics.fid_features=vgg"], tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="metrics.reference="):
        run(make_cfg([*TINY, "task=generate", "sampler=ddpm", f"metrics.reference={tmp_path / 'none'}"], tmp_path / "b"))


def test_inception_file_name_is_torch_fidelitys() -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert Path(URL_INCEPTION_V3).name == INCEPTION_WEIGHTS


def test_summary_values_flatten_the_block() -> None:
    block = {"features": "mnist", "num_images": 8, "fid": 3.0, "kid": {"mean": 0.1, "std": 0.01},
             "baseline_fid": 9.0, "baseline_kid": {"mean": 0.5, "std": 0.02}, "accuracy": 1.0, "baseline_accuracy": 0.5}
    assert dist.summary_values(block) == {
        "fid_features": "mnist", "fid_images": 8, "fid": 3.0, "kid/mean": 0.1, "kid/std": 0.01, "baseline/fid": 9.0,
        "baseline/kid/mean": 0.5, "baseline/kid/std": 0.02, "accuracy": 1.0, "baseline/accuracy": 0.5,
    }
    assert dist.summary_values(None) == {}


def test_console_summary_shows_fid_kid_and_accuracy_next_to_the_baseline(tmp_path: Path) -> None:
    from diffexp.tracking.console import summary_lines

    result = {
        "status": "ok", "task": "deblur", "sampler": "dps", "model": "mnist", "num_images": 8, "num_finished": 8,
        "nfe": 200, "seconds_per_image": 1.0, "metrics": {}, "baseline": {},
        "distribution": {
            "features": "mnist", "num_images": 8, "fid": 6.16, "baseline_fid": 658.5, "kid": {"mean": 1.5, "std": 0.25},
            "baseline_kid": {"mean": 33.8, "std": 2.0}, "accuracy": 1.0, "baseline_accuracy": 0.625,
        },
    }
    lines = [" ".join(line.split()) for line in summary_lines(result, tmp_path)]
    assert "fid 6.16 658.50" in lines and "kid 1.500 ± 0.250 33.800 ± 2.000" in lines
    assert "accuracy 1.000 0.625" in lines and any("on 8 images, mnist features" in line for line in lines)
    assert not any("kid n/a" in line for line in lines)


def test_console_summary_shows_kid_na_with_its_reason(tmp_path: Path) -> None:
    from diffexp.tracking.console import summary_lines

    g = torch.Generator().manual_seed(0)
    outputs, truths = (torch.randn(8, 16, generator=g, dtype=torch.float64) for _ in range(2))
    kid = kernel_distance(outputs, truths)
    result = {"status": "ok", "num_images": 8, "num_finished": 8, "nfe": 200, "seconds_per_image": 1.0,
              "distribution": {"features": "mnist", "num_images": 8, "fid": 6.16, "baseline_fid": 658.5, "kid": kid,
                               "baseline_kid": kernel_distance(truths, outputs)}}
    lines = [" ".join(line.split()) for line in summary_lines(result, tmp_path)]
    assert "kid n/a n/a" in lines and not any("±" in line for line in lines)
    assert [line for line in lines if line.startswith("kid n/a:")] == [f"kid n/a: {kid['reason']}"]
