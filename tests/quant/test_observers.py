import numpy as np
import pytest
import torch

from eaq.errors import EaqError
from eaq.quant.granularity import PerChannel, PerGroup, PerTensor
from eaq.quant.observers import (
    MinMaxObserver,
    MSEObserver,
    Observer,
    create_observer,
    observer_names,
    register_observer,
)
from eaq.quant.primitives import choose_qparams, fake_quantize, quant_range


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_names():
    assert {"minmax", "ema", "percentile", "mse"} <= set(observer_names())
    assert observer_names() == sorted(observer_names())


def test_unknown_observer_lists_names():
    with pytest.raises(EaqError, match="'nope'.*valid: .*minmax") as info:
        create_observer("nope", PerTensor())
    for name in ("ema", "mse", "percentile"):
        assert name in str(info.value)


def test_unknown_option_is_eaq_error():
    with pytest.raises(EaqError, match="bogus.*percentile"):
        create_observer("percentile", PerTensor(), bogus=1)
    obs = create_observer("percentile", PerTensor(), percentile=99.0)
    assert obs.percentile == 99.0


def test_register_custom_observer():
    @register_observer("_test_zero_one")
    class ZeroOne(Observer):
        def _observe(self, x):
            pass

        def min_max(self):
            return torch.tensor(0.0), torch.tensor(1.0)

    obs = create_observer("_test_zero_one", PerTensor())
    obs.update(torch.ones(3))
    s, zp, signed = obs.compute_qparams(8, symmetric=False, signed=None)
    assert signed is False and float(s) == pytest.approx(1 / 255)


@pytest.mark.parametrize("name", ["minmax", "ema", "percentile", "mse"])
def test_no_data_is_an_eaq_error(name):
    obs = create_observer(name, PerTensor())
    assert obs.n_updates == 0
    with pytest.raises(EaqError, match="saw no data: the calibration set is empty"):
        obs.compute_qparams(8, symmetric=True, signed=None)
    obs.update(torch.empty(0, 4))  # an empty batch is not data
    assert obs.n_updates == 0


def test_minmax_exact_per_tensor_channel_group():
    x1 = torch.randn(6, 8, generator=_gen(1))
    x2 = torch.randn(6, 8, generator=_gen(2)) * 2
    both = torch.stack([x1, x2])
    obs = create_observer("minmax", PerTensor())
    obs.update(x1)
    obs.update(x2)
    assert obs.n_updates == 2
    lo, hi = obs.min_max()
    assert lo.shape == () and torch.equal(lo, both.min()) and torch.equal(hi, both.max())

    obs = create_observer("minmax", PerChannel(0))
    obs.update(x1)
    obs.update(x2)
    lo, hi = obs.min_max()
    assert torch.equal(lo, both.amin(dim=(0, 2))[:, None])
    assert torch.equal(hi, both.amax(dim=(0, 2))[:, None])

    obs = create_observer("minmax", PerGroup(4))
    obs.update(x1)
    obs.update(x2)
    lo, hi = obs.min_max()
    assert lo.shape == (6, 2)
    assert torch.equal(hi, both.reshape(2, 6, 2, 4).amax(dim=(0, 3)))

    s, zp, signed = obs.compute_qparams(8, symmetric=True, signed=None)
    s_ref, zp_ref = choose_qparams(lo, hi, 8, symmetric=True, signed=True)
    assert signed is True and torch.equal(s, s_ref) and torch.equal(zp, zp_ref)


def test_activation_channel_axis_with_varying_batch_size():
    obs = create_observer("minmax", PerChannel(1))
    obs.update(torch.randn(4, 3, 5, 5, generator=_gen(0)))
    obs.update(torch.randn(2, 3, 5, 5, generator=_gen(1)))
    assert obs.min_max()[0].shape == (1, 3, 1, 1)


def test_scale_shape_change_between_batches_is_an_error():
    obs = create_observer("minmax", PerGroup(4))
    obs.update(torch.randn(4, 8))
    with pytest.raises(EaqError, match="scale shape"):
        obs.update(torch.randn(2, 8))


def test_ema_by_hand():
    obs = create_observer("ema", PerChannel(0))
    a = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, 0.0]])
    b = torch.tensor([[5.0, -10.0, 0.0], [1.5, -1.0, 0.0]])
    obs.update(a)
    lo, hi = obs.min_max()
    assert torch.equal(lo, torch.tensor([[-2.0], [0.0]]))
    assert torch.equal(hi, torch.tensor([[3.0], [0.5]]))
    obs.update(b)
    lo, hi = obs.min_max()
    torch.testing.assert_close(lo, torch.tensor([[-2.0 + 0.01 * (-10.0 + 2.0)], [0.01 * -1.0]]))
    torch.testing.assert_close(hi, torch.tensor([[3.0 + 0.01 * 2.0], [0.5 + 0.01 * 1.0]]))


def test_ema_matches_torch_ao_moving_average():
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver

    ref = MovingAverageMinMaxObserver(averaging_constant=0.01)
    obs = create_observer("ema", PerTensor())
    for seed in range(4):
        x = torch.randn(100, generator=_gen(seed)) * (seed + 1)
        ref(x)
        obs.update(x)
    lo, hi = obs.min_max()
    torch.testing.assert_close(lo, ref.min_val)
    torch.testing.assert_close(hi, ref.max_val)


def _with_outlier(n=20000, seed=0):
    x = torch.randn(n, generator=_gen(seed))
    x[123] = 50.0
    return x


def test_percentile_below_max_with_outlier():
    x = _with_outlier()
    obs = create_observer("percentile", PerTensor(), percentile=99.9)
    obs.update(x)
    lo, hi = obs.min_max()
    assert float(hi) < 10.0 < float(x.max())
    assert float(lo) > float(x.min())
    expect = np.percentile(x.numpy(), [0.1, 99.9])
    np.testing.assert_allclose([float(lo), float(hi)], expect, rtol=1e-5)
    s_sym, _, _ = obs.compute_qparams(8, symmetric=True, signed=True)
    abs_p = np.percentile(np.abs(x.numpy()), 99.9)
    assert float(s_sym) == pytest.approx(abs_p / 127, rel=1e-5)


def test_percentile_per_channel_averages_batches():
    g = _gen(3)
    a, b = torch.randn(4, 1000, generator=g), torch.randn(4, 1000, generator=g) * 3
    obs = create_observer("percentile", PerChannel(0), percentile=99.0)
    obs.update(a)
    obs.update(b)
    lo, hi = obs.min_max()
    assert hi.shape == (4, 1)
    expect = (np.percentile(a.numpy(), 99.0, axis=1) + np.percentile(b.numpy(), 99.0, axis=1)) / 2
    np.testing.assert_allclose(hi.reshape(-1).numpy(), expect, rtol=1e-5)


def test_percentile_subsamples_big_tensors():
    x = torch.randn(8, 64, 32, 32, generator=_gen(4))
    obs = create_observer("percentile", PerChannel(1), max_samples=2**14, min_per_block=1)
    obs.update(x)
    lo, hi = obs.min_max()
    assert hi.shape == (1, 64, 1, 1)
    assert bool((hi > 1.5).all()) and bool((hi <= x.amax(dim=(0, 2, 3), keepdim=True)).all())


def _mse(x, s, zp, bits, signed):
    return float((fake_quantize(x, s, zp, *quant_range(bits, signed)) - x).square().mean())


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_clips_laplace_with_outlier(symmetric):
    u = torch.rand(4, 5000, generator=_gen(5)) - 0.5
    x = -u.sign() * torch.log1p(-2 * u.abs())  # Laplace(0, 1) by inverse CDF
    x[0, 0], x[2, 7] = 40.0, -30.0
    x[1] *= 0.01  # a very different channel scale
    mse_obs = create_observer("mse", PerChannel(0))
    mm_obs = create_observer("minmax", PerChannel(0))
    for chunk in x.split(2500, dim=1):
        mse_obs.update(chunk)
        mm_obs.update(chunk)
    s, zp, signed = mse_obs.compute_qparams(4, symmetric=symmetric, signed=None)
    s_mm, zp_mm, _ = mm_obs.compute_qparams(4, symmetric=symmetric, signed=None)
    assert signed is True and s.shape == (4, 1)
    assert bool((mse_obs.alpha < 1.0).all()) and bool((mse_obs.alpha >= 0.3).all())
    assert bool((s < s_mm).all())
    assert _mse(x, s, zp, 4, True) < _mse(x, s_mm, zp_mm, 4, True)
    for c in range(4):  # per channel too
        assert _mse(x[c], s[c], zp[c], 4, True) <= _mse(x[c], s_mm[c], zp_mm[c], 4, True)


def test_mse_keeps_full_range_for_uniform_data():
    x = torch.rand(10000, generator=_gen(6)) * 2 - 1
    obs = create_observer("mse", PerTensor())
    obs.update(x)
    obs.compute_qparams(8, symmetric=True, signed=True)
    assert float(obs.alpha) > 0.95


def test_mse_sample_is_bounded_and_seeded():
    def run():
        obs = MSEObserver(PerChannel(0), max_samples=1000, min_per_block=1)
        for seed in range(5):
            obs.update(torch.randn(10, 400, generator=_gen(seed)))
        return obs

    a, b = run(), run()
    assert a.sample.shape == (10, 100)
    assert torch.equal(a.sample, b.sample)
    # the sample draws from every batch, not only the last one
    first = torch.randn(10, 400, generator=_gen(0))
    assert bool(torch.isin(a.sample, first).any())
    s1 = a.compute_qparams(8, symmetric=False, signed=True)[0]
    s2 = b.compute_qparams(8, symmetric=False, signed=True)[0]
    assert torch.equal(s1, s2)


@pytest.mark.parametrize("name", ["minmax", "ema", "percentile", "mse"])
def test_automatic_signedness(name):
    relu = torch.rand(1000, generator=_gen(7)) * 4
    obs = create_observer(name, PerTensor())
    obs.update(relu)
    s, zp, signed = obs.compute_qparams(8, symmetric=True, signed=None)
    assert signed is False
    obs.update(relu - 1)
    assert obs.compute_qparams(8, symmetric=True, signed=None)[2] is True
    assert obs.compute_qparams(8, symmetric=True, signed=False)[2] is False


def test_minmax_observer_class_is_the_registered_one():
    assert type(create_observer("minmax", PerTensor())) is MinMaxObserver


def test_mse_keeps_small_groups_of_big_weights_whole():
    w = torch.randn(64, 4096, generator=_gen(8))
    obs = MSEObserver(PerGroup(128), max_samples=2**12)
    obs.update(w)
    assert obs.sample.shape == (64 * 32, 128)
