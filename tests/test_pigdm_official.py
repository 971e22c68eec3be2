"""ΠGDM's ``guidance`` setting (issue #22): ``consistent`` is today's sampler bit for bit, ``official`` is one step of
NVlabs/RED-diff ``algos/pgdm.py`` (awd: True) written out here with dense matrices and plain tensor ops:

    x_s = sqrt(ᾱ_s)·x̂0 + sqrt(1 − ᾱ_s − c1²)·ε + c1·z + w·sqrt(ᾱ_s)·sqrt(ᾱ_t)·Jᵀ(A⁺y − A⁺A x̂0),

J = ∂x̂0/∂x_t, c1 = η·sqrt((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t)); ε and x̂0 unguided. J is the closed form of the Gaussian
oracle's x̂0 (a scalar times I) or, for the tiny UNet (whose J is not symmetric), torch.func.jacrev.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import FAST, make_cfg
from diffusers import DDPMScheduler
from torch import Tensor

from diffexp.models.diffusion import DiffusionModel, tiny_unet
from diffexp.models.gaussian import dense_matrix, gaussian_oracle
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.super_resolution import SuperResolution
from diffexp.rng import per_image_noise
from diffexp.samplers.pigdm import pigdm
from diffexp.validate import ConfigError, validate

SHAPE = (1, 8, 8)
N_PIX = 64
S2 = 0.5
MU = torch.linspace(-0.5, 0.5, N_PIX, dtype=torch.float64).reshape(SHAPE)
ORACLE = gaussian_oracle(MU, S2)
GRID = torch.tensor([600, 300, 0])  # step 0 goes from t = 600 to s = 300


def _gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def _op(name: str, sigma_y: float = 0.2) -> torch.nn.Module:
    g = _gens(1)
    return {
        "identity": lambda: Identity(SHAPE, g, sigma_y),
        "inpaint": lambda: Inpaint(SHAPE, g, sigma_y, mask="box", box_size=4),
        "sr2": lambda: SuperResolution(SHAPE, g, sigma_y, factor=2),
    }[name]().double()


def _xy(op: torch.nn.Module, n: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    y = op(torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)) * 0.5
    return x, y


@pytest.fixture(scope="module")
def unet() -> DiffusionModel:
    return DiffusionModel(tiny_unet(8, 1, seed=1), DDPMScheduler(clip_sample=False)).double()


def _first_step(model, x: Tensor, y: Tensor, op, **kwargs) -> Tensor:
    states: list[dict] = []
    pigdm(model, x, timesteps=GRID, generators=_gens(len(x)), y=y, operator=op, callback=states.append,
          clip_denoised=False, **kwargs)
    return states[0]["x"]


def _official_step(x: Tensor, y: Tensor, a: Tensor, ab_t: Tensor, ab_s: Tensor, eps: Tensor, jac, w: float,
                   eta: float) -> Tensor:
    """RED-diff ``PGDM.sample``, one step, per image: ``jac(i)`` is image i's dense ∂x̂0/∂x_t (n × n)."""
    a_pinv = torch.linalg.pinv(a)
    c1 = eta * ((1 - ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)).sqrt()
    c2 = ((1 - ab_s) - c1**2).sqrt()
    z = per_image_noise(_gens(len(x)), x)  # the run's generators, copied: the step's one draw
    out = []
    for i in range(len(x)):
        xt, et = x[i].flatten(), eps[i].flatten()
        x0 = (xt - et * (1 - ab_t).sqrt()) / ab_t.sqrt()
        mat = a_pinv @ y[i].flatten() - a_pinv @ (a @ x0)
        grad_term = jac(i).T @ mat
        coeff = ab_s.sqrt() * ab_t.sqrt() * w
        out.append(ab_s.sqrt() * x0 + c1 * z[i].flatten() + c2 * et + grad_term * coeff)
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("name", ["identity", "inpaint", "sr2"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_official_step_with_the_gaussian_oracle(name: str, eta: float) -> None:
    """ε* = sqrt(1−ᾱ)(x − sqrt(ᾱ)μ)/(ᾱs² + 1 − ᾱ) and J = sqrt(ᾱ)s²/(ᾱs² + 1 − ᾱ)·I in closed form."""
    op = _op(name)
    x, y = _xy(op)
    ac = ORACLE.alphas_cumprod.double()
    ab_t, ab_s = ac[int(GRID[0])], ac[int(GRID[1])]
    eps = (1 - ab_t).sqrt() * (x - ab_t.sqrt() * MU) / (ab_t * S2 + 1 - ab_t)
    scale = ab_t.sqrt() * S2 / (ab_t * S2 + 1 - ab_t)
    expected = _official_step(x, y, dense_matrix(op, SHAPE), ab_t, ab_s, eps,
                              lambda i: scale * torch.eye(N_PIX, dtype=torch.float64), w=1.7, eta=eta)
    got = _first_step(ORACLE, x, y, op, guidance="official", step_size=1.7, eta=eta)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["inpaint", "sr2"])
def test_official_step_with_a_tiny_unet_and_its_dense_jacobian(unet, name: str) -> None:
    """A non-symmetric J (the tiny UNet's, by jacrev): the VJP must be Jᵀ(A⁺y − A⁺A x̂0), not J(...)."""
    op = _op(name)
    x, y = _xy(op)
    t = int(GRID[0])
    ac = unet.alphas_cumprod.double()
    ab_t, ab_s = ac[t], ac[int(GRID[1])]
    with torch.no_grad():
        eps = unet.eps(x, t)

    def jac(i: int) -> Tensor:
        return torch.func.jacrev(lambda v: unet.x0(v.reshape(1, *SHAPE), t).flatten())(x[i].flatten())

    expected = _official_step(x, y, dense_matrix(op, SHAPE), ab_t, ab_s, eps, jac, w=0.8, eta=0.5)
    got = _first_step(unet, x, y, op, guidance="official", step_size=0.8, eta=0.5)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)
    # and it is not the consistent form
    assert not torch.allclose(got, _first_step(unet, x, y, op, step_size=0.8, eta=0.5), atol=1e-6)


@pytest.mark.parametrize("model_name", ["oracle", "unet"])
def test_consistent_is_the_default_bit_for_bit(unet, model_name: str) -> None:
    model = ORACLE if model_name == "oracle" else unet
    op = _op("inpaint")
    x, y = _xy(op)
    kwargs = dict(timesteps=GRID, generators=None, y=y, operator=op, step_size=1.3, eta=0.6)
    default = pigdm(model, x, **{**kwargs, "generators": _gens(2)})
    consistent = pigdm(model, x, **{**kwargs, "generators": _gens(2)}, guidance="consistent")
    assert torch.equal(default, consistent)


def test_shipped_config_defaults() -> None:
    import yaml

    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "sampler" / "pigdm.yaml").read_text())
    assert conf["guidance"] == "consistent" and conf["num_steps"] == 100


def test_a_bad_guidance_is_refused_naming_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("sampler.guidance='foo' is invalid: allowed is one of consistent, "
                                                    "official")):
        validate(make_cfg([*FAST, "sampler=pigdm", "task=inpaint", "sampler.guidance=foo"], tmp_path))
    op = _op("identity")
    with pytest.raises(ValueError, match=r"sampler\.guidance='foo' must be one of consistent, official"):
        pigdm(None, torch.zeros(1, *SHAPE), timesteps=torch.tensor([5]), generators=_gens(1),
              y=torch.zeros(1, *SHAPE), operator=op, guidance="foo")
