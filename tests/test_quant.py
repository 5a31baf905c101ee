"""Fake quantization and fp8 rounding against independent float64 / enumerated-table references."""
import itertools

import numpy as np
import pytest
import torch

from archdsl.quant import ActFakeQuant, Fp8Round, Precision, WeightFakeQuant


def test_weight_fake_quant_per_channel_symmetric():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    got = WeightFakeQuant()(w).double().numpy()
    wn = w.double().numpy()
    for c in range(5):
        scale = np.abs(wn[c]).max() / 127.0
        q = np.clip(np.round(wn[c] / scale), -127, 127)  # numpy rounds half to even, as torch does
        # the same integer levels, and values equal up to float32 rounding of the scale
        np.testing.assert_array_equal(np.round(got[c] / scale), q)
        np.testing.assert_allclose(got[c], q * scale, rtol=1e-6, atol=1e-7)
        assert len(np.unique(np.round(got[c] / scale))) <= 255


def test_act_fake_quant_observer_and_levels():
    torch.manual_seed(0)
    aq = ActFakeQuant(averaging=0.5).train()
    x1 = torch.randn(4, 7) * 3
    x2 = torch.randn(4, 7) + 1
    aq(x1)
    y = aq(x2)
    lo = x1.min() + 0.5 * (x2.min() - x1.min())
    hi = x1.max() + 0.5 * (x2.max() - x1.max())
    assert torch.allclose(aq.lo, lo) and torch.allclose(aq.hi, hi)
    lo_, hi_ = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi_ - lo_) / 255
    zp = min(max(round(-lo_ / scale), 0), 255)
    ref = (np.clip(np.round(x2.double().numpy() / scale) + zp, 0, 255) - zp) * scale
    np.testing.assert_allclose(y.double().numpy(), ref, atol=1e-5)


def test_act_fake_quant_straight_through_gradient_clips_outside_range():
    aq = ActFakeQuant().train()
    aq(torch.tensor([-1.0, 1.0]))  # observe the range [-1, 1]
    aq.eval()
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 2.5], requires_grad=True)
    aq(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def _e4m3_table():
    """Every finite float8 e4m3fn value from its bit layout (1 sign, 4 exponent bits with bias 7, 3 mantissa)."""
    vals = set()
    for e, m in itertools.product(range(16), range(8)):
        if e == 15 and m == 7:
            continue  # NaN
        v = (m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        vals |= {v, -v}
    return np.array(sorted(vals))


def _e5m2_table():
    vals = set()
    for e, m in itertools.product(range(31), range(4)):  # exponent 31 is inf/NaN
        v = (m / 4) * 2.0 ** -14 if e == 0 else (1 + m / 4) * 2.0 ** (e - 15)
        vals |= {v, -v}
    return np.array(sorted(vals))


@pytest.mark.parametrize("fmt,table", [("e4m3", _e4m3_table()), ("e5m2", _e5m2_table())])
def test_fp8_rounding_matches_the_format_table(fmt, table):
    torch.manual_seed(1)
    x = torch.cat([torch.randn(500) * 10, torch.randn(100) * 1e-3, torch.tensor([1e6, -1e6])])
    got = Fp8Round(fmt)(x).double().numpy()
    top = table.max()
    for xi, gi in zip(x.double().numpy(), got):
        xc = min(max(xi, -top), top)
        nearest = table[np.argsort(np.abs(table - xc))[:2]]
        # ties (exactly between two values) may go either way by even-mantissa; otherwise the nearest
        assert gi in nearest, (xi, gi, nearest)
        assert abs(gi - xc) <= abs(nearest[0] - xc) + 1e-12


def test_fp8_straight_through():
    x = torch.randn(10, requires_grad=True)
    Fp8Round("e4m3")(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(10))


def test_precision_bf16_region_returns_fp32_close_to_fp32():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3)
    x = torch.randn(2, 4, 9, 9)
    ref = conv(x)
    y = Precision(conv, "bf16")(x)
    assert y.dtype == torch.float32
    assert (y - ref).abs().max() / ref.abs().max() < 2e-2
    assert not torch.equal(y, ref)


def test_precision_int8_quantizes_weights_and_inputs_and_learns():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3)
    p = Precision(lin, "int8").train()
    x = torch.randn(16, 8)
    y = p(x)
    # the same result by hand: quantized input and per-channel weight, fp32 bias
    aq = p.act
    scale, zero = aq.qparams()
    xq = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
    w = lin.weight.detach().double()
    ws = w.abs().amax(1, keepdim=True) / 127
    wq = torch.clamp(torch.round(w / ws), -127, 127) * ws
    ref = xq.double() @ wq.t() + lin.bias.detach().double()
    assert torch.allclose(y.double(), ref, atol=1e-5)
    y.square().sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_an_int8_add_quantizes_both_arguments_on_one_grid_holding_both():
    # a residual x (wide) plus a layer-scaled branch (tiny): the grid must hold x, not an average of the two
    from archdsl.ops.merge import Add

    p = Precision(Add(), "int8").train()
    x, branch = torch.linspace(-4.0, 6.0, 11), torch.full((11,), 1e-6)
    y = p(x, branch)
    assert float(p.act.lo) == -4.0 and float(p.act.hi) == 6.0 and int(p.act.seen) == 1
    scale = 10.0 / 255
    ref = (np.clip(np.round(x.double().numpy() / scale) + round(4.0 / scale), 0, 255) - round(4.0 / scale)) * scale
    np.testing.assert_allclose(y.double().numpy(), ref, atol=1e-6)  # the branch rounds to 0 on that grid
