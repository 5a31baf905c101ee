"""TiC's MSA-Conv: the module against a float64 loop written here (every position, every window slot), counts
against the official layer's layer list, gradients, locality and resolution independence, errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from op_testing import (build, check_examples, check_loop_reference, flops_macs, gradcheck_module, nparams,
                        shape_error)

import archdsl


def loop_reference(m, x):
    """Per sample, position, head: scores against every window slot (zero key outside the grid, or no slot at all
    when pad="none"), softmax by exp / sum, values summed; then x + that, the closing conv tap by tap, ReLU."""
    x = x.double()
    b, c, *size = x.shape
    heads, kk, dil = m.heads, m.k, m.dilation
    d = c // heads
    wqkv, bqkv = m.qkv.weight.double().reshape(3 * c, c), m.qkv.bias.double()
    qkv = torch.einsum("oc,bc...->bo...", wqkv, x) + bqkv.reshape(1, -1, *[1] * len(size))
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    y = x.clone()
    grid = [range(s) for s in size]
    slots = list(itertools.product(range(kk), repeat=len(size)))
    for n, pos in itertools.product(range(b), itertools.product(*grid)):
        for h in range(heads):
            ch = slice(h * d, (h + 1) * d)
            scores, values = [], []
            for off in slots:
                at = tuple(p + dil * (o - kk // 2) for p, o in zip(pos, off))
                if all(0 <= a < s for a, s in zip(at, size)):
                    scores.append(float((q[(n, ch, *pos)] * k[(n, ch, *at)]).sum()) / math.sqrt(d))
                    values.append(v[(n, ch, *at)])
                elif m.pad == "zero":
                    scores.append(0.0)
                    values.append(torch.zeros(d, dtype=torch.float64))
            top = max(scores)
            e = [math.exp(s - top) for s in scores]
            y[(n, ch, *pos)] += sum(w / sum(e) * val for w, val in zip(e, values))
    w = m.proj.weight.double()
    out = torch.zeros(b, w.shape[0], *size, dtype=torch.float64)
    for pos in itertools.product(*grid):
        for off in slots:
            at = tuple(p + o - kk // 2 for p, o in zip(pos, off))
            if all(0 <= a < s for a, s in zip(at, size)):
                out[(slice(None), slice(None), *pos)] += y[(slice(None), slice(None), *at)] @ w[(slice(None),
                                                                                               slice(None), *off)].T
    return out.clamp(min=0)


def test_examples_agree_with_modules():
    check_examples("msaconv")


@pytest.mark.parametrize("shape,attrs", [
    ((4, 9), {}), ((6, 7), {"k": 5, "heads": 2, "pad": "none"}), ((6, 11), {"dilation": 2, "heads": 3}),
    ((4, 5, 6), {}), ((6, 4, 5), {"heads": 2, "pad": "none", "out": 3}), ((2, 5, 5), {"dilation": 2}),
], ids=["1d", "1d-k5-none", "1d-dil2", "2d", "2d-none-out", "2d-dil2"])
def test_matches_the_loop_reference(shape, attrs):
    check_loop_reference("msaconv", attrs, shape, loop_reference)


@pytest.mark.parametrize("shape,attrs", [((2, 5), {"pad": "none"}), ((2, 3, 4), {"heads": 2})], ids=["1d", "2d"])
def test_gradients(shape, attrs):
    _, _, m = build("msaconv", attrs, shape, perturb=0.1)
    m = m.double()
    assert gradcheck_module(m, torch.randn(1, *shape, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("shape,attrs,params,macs", [
    # C = 4 on 5 x 6, k = 3: qkv 4*12 + 12 = 60, closing conv 4*4*9 = 144 (no bias).
    # MACs per position: qkv 48, q.k and a.v 4*9 each, the conv 144 -> 30 * 264.
    ((4, 5, 6), {}, 60 + 144, 30 * (48 + 72 + 144)),
    # C = 6 on length 7, k = 5, out = 2: qkv 6*18 + 18 = 126, conv 2*6*5 = 60; per position 108 + 60 + 60.
    ((6, 7), {"k": 5, "out": 2, "heads": 3}, 126 + 60, 7 * (108 + 60 + 60)),
], ids=["2d", "1d"])
def test_counts_by_hand(shape, attrs, params, macs):
    spec, a, m = build("msaconv", attrs, shape)
    assert spec.params(a, [shape]) == params == nparams(m)
    assert spec.macs(a, [shape], spec.shape(a, [shape])) == macs
    # torch's counter sees the two convs, not the window products (elementwise): 2 C k^d per position fewer
    window = 2 * shape[0] * a.k ** (len(shape) - 1) * math.prod(shape[1:])
    assert flops_macs(m.eval(), torch.randn(1, *shape)) == macs - window


def test_reach_is_two_windows_and_any_resolution_runs():
    """An output sees the window of the window: a change 3 taps away (k = 3: attention 1 + closing conv 1 = 2)
    leaves it alone; the same weights run on a larger grid (no size-bound parameter)."""
    _, _, m = build("msaconv", {}, (3, 9, 9))
    m = m.double().eval()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 4, 7] += 5.0
    with torch.no_grad():
        diff = (m(x) - m(x2)).abs()[0].amax(0)
    assert diff[4, 4] == 0 and diff[4, 5] > 0
    assert m(torch.randn(1, 3, 17, 13, dtype=torch.float64)).shape == (1, 3, 17, 13)


def test_zero_and_none_padding_differ_only_near_the_border():
    _, _, zero = build("msaconv", {"k": 3}, (2, 8, 8))
    _, _, none = build("msaconv", {"k": 3, "pad": "none"}, (2, 8, 8))
    zero, none = zero.double(), none.double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        diff = (zero(x) - none(x)).abs()[0].amax(0)
    assert diff[2:6, 2:6].max() == 0 and diff[0].max() > 0


def test_errors():
    assert "heads=4" in str(shape_error("msaconv", {"heads": 4}, (6, 5, 5)))
    with pytest.raises(archdsl.ArchError) as e:
        archdsl.build(archdsl.parse("model m() {\n  input x[4, 8, 8]\n  msaconv(4)\n}\n"))
    assert "odd" in str(e.value) and ":3:" in str(e.value)
