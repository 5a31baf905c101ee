"""MOAT: the library's moat_mbconv (archdsl/lib/moat.arch) against a float64 implementation written here from the
official MBConvBlock (google-research/deeplab2 model/layers/moat_blocks.py) with torch ops only, its gradients,
and MOAT-0 (searchspaces/models/moat_0.arch): the count of the official test, and a small forward."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl.ir.graph import totals
from tests.ops.op_testing import gradcheck_module

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"
BN_EPS = 1e-3  # Keras BatchNormalization's default, which the official code keeps


def block(cin, out, shape, **kw):
    args = "".join(f", {k} = {v}" for k, v in kw.items())
    src = f'import "moat"\nmodel t() {{ input x[{cin}, {", ".join(map(str, shape))}]\n moat_mbconv({cin}, {out}{args}) }}'
    m = archdsl.compile(archdsl.build(archdsl.parse(src))).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.3 + (1.0 if "running_var" in name else 0.0))
    return m.eval()


# ---- float64 reference: the official block's steps, each written out -------------------------------------------

def bn(x, p, pre):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    g = lambda k: p[f"{pre}.{k}"].reshape(shape)  # noqa: E731
    return (x - g("running_mean")) / torch.sqrt(g("running_var") + BN_EPS) * g("weight") + g("bias")


def pointwise(x, w, b=None):
    y = torch.einsum("oc,bc...->bo...", w.reshape(w.shape[0], -1), x)
    return y if b is None else y + b.reshape((1, -1) + (1,) * (x.dim() - 2))


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def depthwise(x, w, k, stride):
    """Each channel with its own k^d kernel, padding k // 2 on both sides, one output position at a time."""
    sizes = x.shape[2:]
    xp = F.pad(x, [k // 2] * (2 * len(sizes)))
    outs = [(s + 2 * (k // 2) - k) // stride + 1 for s in sizes]
    y = torch.zeros(*x.shape[:2], *outs, dtype=torch.float64)
    for pos in itertools.product(*(range(o) for o in outs)):
        window = xp[(slice(None), slice(None)) + tuple(slice(q * stride, q * stride + k) for q in pos)]
        y[(slice(None), slice(None)) + pos] = (window * w.reshape(w.shape[0], *window.shape[2:])).flatten(2).sum(-1)
    return y


def squeeze_excite(x, p, pre):
    s = x.flatten(2).mean(-1)
    h = s @ p[f"{pre}.fc1.weight"].T + p[f"{pre}.fc1.bias"]
    h = h * torch.sigmoid(h)  # the official SE's swish
    gate = torch.sigmoid(h @ p[f"{pre}.fc2.weight"].T + p[f"{pre}.fc2.bias"])
    return x * gate.reshape(*gate.shape, *([1] * (x.dim() - 2)))


def tf_same_avgpool2(x, stride):
    """TF AveragePooling2D(2, stride, 'same'): windows from 0, stride, ...; the last may hold one real element."""
    sizes = x.shape[2:]
    outs = [-(-s // stride) for s in sizes]
    y = torch.zeros(*x.shape[:2], *outs, dtype=torch.float64)
    for pos in itertools.product(*(range(o) for o in outs)):
        window = x[(slice(None), slice(None)) + tuple(slice(q * stride, min(q * stride + 2, s))
                                                      for q, s in zip(pos, sizes))]
        y[(slice(None), slice(None)) + pos] = window.flatten(2).mean(-1)
    return y


def ref_moat_mbconv(x, p, cin, out, stride, k=3):
    pre = "moat_mbconv"
    y = bn(x, p, f"{pre}.pre_norm.bn")
    y = gelu(bn(pointwise(y, p[f"{pre}.expand_conv.conv.weight"]), p, f"{pre}.expand_conv.bn"))
    y = gelu(bn(depthwise(y, p[f"{pre}.depthwise_conv.dwconv.weight"], k, stride), p, f"{pre}.depthwise_conv.bn"))
    y = squeeze_excite(y, p, f"{pre}.se")
    y = pointwise(y, p[f"{pre}.shrink_conv.conv.weight"], p[f"{pre}.shrink_conv.conv.bias"])
    shortcut = tf_same_avgpool2(x, stride) if stride > 1 else x
    if cin != out:
        shortcut = pointwise(shortcut, p[f"{pre}.shortcut_conv.conv.weight"], p[f"{pre}.shortcut_conv.conv.bias"])
    return y + shortcut


CASES = [  # cin, out, stride, spatial shape
    (6, 8, 2, (7, 5)),   # odd sizes: the last pooling window holds one row / column
    (6, 8, 2, (6, 8)),
    (8, 8, 1, (5, 4)),   # identity shortcut
    (6, 8, 1, (3, 5)),   # a 1x1 conv on the shortcut, no pooling
    (8, 8, 2, (5, 6)),   # pooled shortcut, no conv
    (4, 12, 2, (9,)),    # 1-D
    (4, 4, 1, (7,)),
]


@pytest.mark.parametrize("cin,out,stride,shape", CASES)
def test_moat_mbconv_against_float64(cin, out, stride, shape):
    m = block(cin, out, shape, stride=stride)
    p = {k: v.double() for k, v in m.state_dict().items()}
    x = torch.randn(2, cin, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_moat_mbconv(x, p, cin, out, stride), rtol=1e-10, atol=1e-12)


def test_moat_mbconv_widths_follow_the_output():
    """Hidden width 4 * out and SE width int(out / 4) (not of the input), as MBConvBlock.build."""
    m = block(8, 20, (4, 4), stride=2)
    p = m.state_dict()
    assert p["moat_mbconv.expand_conv.conv.weight"].shape == (80, 8, 1, 1)
    assert p["moat_mbconv.se.fc1.weight"].shape == (5, 80)
    assert "moat_mbconv.shortcut_conv.conv.bias" in p and "moat_mbconv.shrink_conv.conv.bias" in p
    assert block(8, 2, (4,), se_ratio=0.25).state_dict()["moat_mbconv.se.fc1.weight"].shape == (1, 8)  # max(1, .)


@pytest.mark.parametrize("cin,out,stride,shape", [(3, 4, 2, (3, 2)), (2, 2, 1, (3,))])
def test_moat_mbconv_gradients(cin, out, stride, shape):
    m = block(cin, out, shape, stride=stride, expand=1)
    x = torch.randn(2, cin, *shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_moat_0_runs_small():
    m = archdsl.compile(archdsl.build(archdsl.parse(MODELS / "moat_0.arch"), size=64, classes=10,
                                      depths=[1, 2, 2, 1])).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_moat_0_uses_the_official_block_kinds():
    G = archdsl.build(archdsl.parse(MODELS / "moat_0.arch"))
    ops = [d["op"] for _, d in G.nodes(data=True)]
    assert ops.count("moat") == 7 + 2 and ops.count("se") == 2 + 3  # SE only in the MBConv stages
    assert totals(G)["params"] == 27_846_892
