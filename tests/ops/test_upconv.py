"""upconv (transposed conv, no padding) against a float64 gather written here: every output position sums the
input positions i and taps t with stride * i + t == position. 1-D, 2-D and 3-D, odd sizes, overlapping taps."""
from __future__ import annotations

import itertools

import pytest
import torch
from op_testing import build, flops_macs, gradcheck_module, nparams, shape_error


def gather_reference(m, x):
    x, w = x.double(), m.weight.double()  # w (C_in, C_out, *k)
    sizes, k, stride = x.shape[2:], m.kernel_size, m.stride
    out_sizes = [(s - 1) * st + kk for s, st, kk in zip(sizes, stride, k)]
    y = torch.zeros(x.shape[0], w.shape[1], *out_sizes, dtype=torch.float64)
    for pos in itertools.product(*(range(s) for s in out_sizes)):
        for tap in itertools.product(*(range(kk) for kk in k)):
            src = [(p - t) // st for p, t, st in zip(pos, tap, stride)]
            if all((p - t) % st == 0 and 0 <= i < s for p, t, st, i, s in zip(pos, tap, stride, src, sizes)):
                every = (slice(None), slice(None))
                y[(*every, *pos)] += x[(*every, *src)] @ w[(*every, *tap)]
    if m.bias is not None:
        y += m.bias.double().reshape(1, -1, *[1] * len(sizes))
    return y


CASES = [({"out": 3}, (4, 5, 3)), ({"out": 2, "k": 3, "stride": 2}, (3, 7)),
         ({"out": 2, "bias": False}, (3, 3, 2, 5)), ({"out": 2, "k": [3, 2, 2], "stride": [2, 2, 1]}, (2, 3, 2, 3)),
         ({"out": 4, "k": [2, 3], "stride": [2, 1]}, (2, 3, 4))]


@pytest.mark.parametrize("attrs,shape", CASES, ids=[str(s) for _, s in CASES])
def test_upconv_matches_the_gather(attrs, shape):
    spec, a, m = build("upconv", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    y = m(x)
    assert tuple(y.shape[1:]) == spec.shape(a, [shape])
    torch.testing.assert_close(y, gather_reference(m, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(spec.reference(m, x), gather_reference(m, x), rtol=1e-10, atol=1e-12)


def test_k2_stride2_doubles_every_size_and_counts():
    shape = (6, 3, 5, 4)
    spec, a, m = build("upconv", {"out": 4}, shape)
    assert spec.shape(a, [shape]) == (4, 6, 10, 8)
    assert nparams(m) == 6 * 4 * 8 + 4 == spec.params(a, [shape])
    assert flops_macs(m, torch.randn(1, *shape)) == 60 * 6 * 4 * 8 == spec.macs(a, [shape], (4, 6, 10, 8))


def test_gradients():
    _, _, m = build("upconv", {"out": 2, "k": 3, "stride": 2}, (2, 2, 3, 2))
    assert gradcheck_module(m.double(), torch.randn(1, 2, 2, 3, 2, dtype=torch.float64, requires_grad=True))


def test_stride_larger_than_kernel_is_an_error():
    err = shape_error("upconv", {"out": 2, "k": 2, "stride": 3}, (3, 5, 5))
    assert "stride [3, 3]" in err.message and "[3, 5, 5]" in err.message and "k = stride" in err.hint
