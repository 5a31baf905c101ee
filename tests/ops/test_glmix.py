"""GLMix's global-local mixer: the module against a float64 loop written here (slots by explicit bins and sums),
the parameter count against the official block's layers built from torch, MAC formulas by hand, gradients,
global reach through the slots, errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from op_testing import (build, check_examples, check_loop_reference, flops_macs, gradcheck_module, nparams,
                        shape_error)
from torch import nn


def _softmax(v):
    top = max(v)
    e = [math.exp(x - top) for x in v]
    return [x / sum(e) for x in e]


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _lin(layer, v):
    return [sum(w * x for w, x in zip(row, v)) + b for row, b in zip(layer.weight.tolist(), layer.bias.tolist())]


def _bins(n, side):
    return [range(i * n // side, -(-(i + 1) * n // side)) for i in range(side)]


def loop_reference(m, x):
    """One sample at a time with Python floats: initial slots by averaging each adaptive-pool bin (or the
    learnable ones), cosine logits, clustering, per-head slot attention, dispatch; the local branch as sums of
    taps; everything summed."""
    out = torch.zeros_like(x, dtype=torch.float64)
    b, c, *size = x.shape
    grid = list(itertools.product(*(range(s) for s in size)))
    h, kk = m.mha.heads, m.local[1].kernel_size[0]
    d = c // h
    w0, w1, w2 = (t.weight.double() for t in m.local)
    b0, b1, b2 = (t.bias.double() for t in m.local)
    for n in range(b):
        tok = [[float(x[(n, ch, *p)]) for ch in range(c)] for p in grid]
        if m.init == "param":
            s0 = m.slots[0].double().tolist()
        else:
            side = m.n_slots if len(size) == 1 else math.isqrt(m.n_slots)
            cells = itertools.product(*(_bins(s, side) for s in size))
            s0 = []
            for cell in cells:
                members = [tok[grid.index(p)] for p in itertools.product(*cell)]
                s0.append([sum(t[ch] for t in members) / len(members) for ch in range(c)])
        logits = [[float(m.scale) * sum(a * b_ for a, b_ in zip(_unit(s), _unit(t))) for t in tok] for s in s0]
        slots = [[sum(w * t[ch] for w, t in zip(_softmax(row), tok)) for ch in range(c)] for row in logits]
        qkv = [_lin(m.mha.in_proj, s) for s in slots]
        mixed = [[0.0] * c for _ in slots]
        for head, i in itertools.product(range(h), range(len(slots))):
            cols = range(head * d, (head + 1) * d)
            att = _softmax([sum(qkv[i][j] * qkv[o][c + j] for j in cols) / math.sqrt(d) for o in range(len(slots))])
            for j in cols:
                mixed[i][j] = sum(a * qkv[o][2 * c + j] for o, a in enumerate(att))
        slots = [_lin(m.mha.out_proj, s) for s in mixed]
        for pi, p in enumerate(grid):
            w = _softmax([logits[s][pi] for s in range(len(slots))])
            for ch in range(c):
                out[(n, ch, *p)] = sum(ws * s[ch] for ws, s in zip(w, slots))
    x = x.double()
    a = torch.einsum("oc,nc...->no...", w0.flatten(1), x) + b0.reshape(1, -1, *[1] * len(size))
    dw = torch.zeros_like(a) + b1.reshape(1, -1, *[1] * len(size))
    for p, off in itertools.product(grid, itertools.product(range(kk), repeat=len(size))):
        at = tuple(q + o - kk // 2 for q, o in zip(p, off))
        if all(0 <= z < s for z, s in zip(at, size)):
            dw[(slice(None), slice(None), *p)] += a[(slice(None), slice(None), *at)] * w1[(slice(None), 0, *off)]
    return out + torch.einsum("oc,nc...->no...", w2.flatten(1), dw) + b2.reshape(1, -1, *[1] * len(size))


def test_examples_agree_with_modules():
    check_examples("glmix")


@pytest.mark.parametrize("shape,attrs", [
    ((4, 9), {"slots": 4}), ((6, 7), {"slots": 3, "heads": 2, "k": 3}), ((4, 5, 6), {"slots": 4}),
    ((4, 3, 4), {"slots": 5, "init": "param", "heads": 2}), ((2, 2, 3), {"slots": 9, "k": 3}),
], ids=["1d", "1d-heads2", "2d", "2d-param", "2d-more-slots-than-rows"])
def test_matches_the_loop_reference(shape, attrs):
    check_loop_reference("glmix", attrs, shape, loop_reference)


@pytest.mark.parametrize("shape,attrs", [((2, 5), {"slots": 2}), ((2, 3, 3), {"slots": 4, "init": "param", "k": 3})],
                         ids=["1d", "2d"])
def test_gradients(shape, attrs):
    _, _, m = build("glmix", attrs, shape, perturb=0.1)
    m = m.double()
    assert gradcheck_module(m, torch.randn(1, *shape, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("shape,attrs", [((64, 14, 14), {}), ((32, 7, 9), {"slots": 16, "init": "param", "k": 3}),
                                         ((24, 50), {"slots": 10, "heads": 3})], ids=["2d", "2d-param", "1d"])
def test_params_equal_the_official_layers(shape, attrs):
    """The official block's mixing layers built from torch: slot_scale, nn.MultiheadAttention, feature_conv
    (1x1, depthwise k, 1x1) and, for learnable slots, init_slots."""
    spec, a, m = build("glmix", attrs, shape)
    c, dims = shape[0], len(shape) - 1
    conv = (nn.Conv1d, nn.Conv2d)[dims - 1]
    official = [nn.MultiheadAttention(c, a.heads or 1, batch_first=True), conv(c, c, 1),
                conv(c, c, a.k, padding=a.k // 2, groups=c), conv(c, c, 1)]
    count = 1 + sum(nparams(layer) for layer in official) + (a.slots * c if a.init == "param" else 0)
    assert spec.params(a, [shape]) == count == nparams(m)


@pytest.mark.parametrize("shape,attrs,macs", [
    # C = 4, P = 30, S = 4, k = 5: logits, clustering, dispatch 3 * 4*30*4; MHA 4*4*16 + 2*16*4;
    # local branch 30 * (2*16 + 4*25).
    ((4, 5, 6), {"slots": 4}, 3 * 480 + 256 + 128 + 30 * (32 + 100)),
    # C = 6, P = 7, S = 3, k = 3: 3 * 3*7*6 + 4*3*36 + 2*9*6 + 7 * (72 + 18).
    ((6, 7), {"slots": 3, "heads": 2, "k": 3}, 378 + 432 + 108 + 630),
], ids=["2d", "1d"])
def test_macs_by_hand(shape, attrs, macs):
    spec, a, m = build("glmix", attrs, shape)
    assert spec.macs(a, [shape], shape) == macs == flops_macs(m.eval(), torch.randn(1, *shape))


def test_slots_carry_information_across_the_image():
    """The 5x5 local branch cannot reach from (0, 0) to (7, 7); the slots do."""
    _, _, m = build("glmix", {"slots": 4}, (4, 8, 8))
    m = m.double().eval()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0, 7, 7] += 2.0
    with torch.no_grad():
        assert (m(x) - m(x2))[..., 0, 0].abs().max() > 1e-8


def test_errors():
    assert "square" in str(shape_error("glmix", {"slots": 8}, (4, 6, 6)))
    assert "heads=3" in str(shape_error("glmix", {"heads": 3, "slots": 4}, (4, 6, 6)))
