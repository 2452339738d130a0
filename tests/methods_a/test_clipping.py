"""KL and ACIQ clipping observers."""

import pytest
import torch

from eaq.quant import PerChannel, PerTensor, create_observer, fake_quantize, observer_names
from eaq.quant.clipping import ACIQ_GAUSSIAN, ACIQ_LAPLACE, _aciq_mse, aciq_alpha
from eaq.quant.primitives import quant_range


def _laplace_with_outliers(n: int = 20000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    x[:10] = torch.tensor([40.0, -35, 30, 50, -45, 33, 38, -41, 36, 29])
    return x


def _fq_mse(name: str, x: torch.Tensor, bits: int = 4) -> tuple[float, float]:
    obs = create_observer(name, PerTensor())
    for chunk in x.chunk(4):  # several batches: exercises range growth
        obs.update(chunk)
    scale, zp, signed = obs.compute_qparams(bits, symmetric=True, signed=None)
    qmin, qmax = quant_range(bits, signed)
    fq = fake_quantize(x, scale, zp, qmin, qmax)
    return float(scale) * qmax, float((fq - x).square().mean())


def test_registered():
    assert {"kl", "aciq"} <= set(observer_names())


@pytest.mark.parametrize("name", ["kl", "aciq"])
def test_clips_outliers_and_beats_minmax(name):
    x = _laplace_with_outliers()
    clip, mse = _fq_mse(name, x)
    _, mse_minmax = _fq_mse("minmax", x)
    assert clip < 0.5 * float(x.abs().max())
    assert mse < 0.5 * mse_minmax


def test_kl_range_growth_matches_single_batch():
    x = _laplace_with_outliers()
    one = create_observer("kl", PerTensor())
    one.update(x)
    many = create_observer("kl", PerTensor())
    for chunk in x.flip(0).chunk(8):  # outliers arrive last: the histogram must grow
        many.update(chunk)
    assert torch.isclose(many.hist.sum(), one.hist.sum())
    t1 = float(one.compute_qparams(4, symmetric=True, signed=True)[0])
    t2 = float(many.compute_qparams(4, symmetric=True, signed=True)[0])
    assert t2 == pytest.approx(t1, rel=0.1)


@pytest.mark.parametrize("bits", range(2, 9))
def test_aciq_constants_match_the_error_model(bits):
    for dist, table in (("laplace", ACIQ_LAPLACE), ("gaussian", ACIQ_GAUSSIAN)):
        a = table[bits]
        # the published alpha is (near) a minimum of the paper's expected-MSE model
        assert _aciq_mse(a, bits, dist) <= min(_aciq_mse(a * f, bits, dist) for f in (0.97, 1.03))
    assert aciq_alpha(10) > aciq_alpha(8)  # solved numerically beyond the table


def test_aciq_gaussian_and_unsigned():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50000, generator=g)
    obs = create_observer("aciq", PerTensor(), distribution="gaussian")
    obs.update(x)
    scale, _, _ = obs.compute_qparams(4, symmetric=True, signed=True)
    assert float(scale) * 7 == pytest.approx(2.55, rel=0.05)
    relu = create_observer("aciq", PerTensor())
    relu.update(x.clamp(min=0))
    scale, _, signed = relu.compute_qparams(4, symmetric=True, signed=None)
    assert not signed and 0 < float(scale) * 15 <= float(x.max()) + 1e-5


@pytest.mark.parametrize("name", ["kl", "aciq"])
def test_per_channel_shapes(name):
    w = torch.randn(8, 4, 3, 3)
    obs = create_observer(name, PerChannel(0), **({"bins": 256} if name == "kl" else {}))
    obs.update(w)
    scale, zp, _ = obs.compute_qparams(4, symmetric=True, signed=True)
    assert scale.shape == (8, 1, 1, 1) and zp.shape == (8, 1, 1, 1)
    assert (scale > 0).all()
