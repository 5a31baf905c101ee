"""SpaRTAN: the library's spartan_spatial / spartan_wave / spartan_block (archdsl/lib/spartan.arch) and the
argmax_gather op against a float64 implementation written here from the official code (henry-pay/SpaRTAN
src/model/spartan.py `SMixer`, `CMixer`, `SELayer`, `Block`; convolutions as sums over kernel offsets, the wave
as complex128 products as the official module does), their gradients, and SpaRTAN-T
(searchspaces/models/spartan_t.arch): the parameter count and MACs of the official layers added up by formula,
and a small forward."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.graph import totals
from tests.ops.op_testing import gradcheck_module

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"
EPS = 1e-6  # the official BatchNorm and LayerNorm (group_norm) eps


def compile_block(call, cin, shape, seed=0):
    dims = ", ".join(map(str, shape))
    src = f'import "spartan"\nmodel t() {{ input x[{cin}, {dims}]\n {call} }}'
    return randomized(archdsl.compile(archdsl.build(archdsl.parse(src))), seed)


def randomized(m, seed=0):
    """(the module in float64 and eval mode, its state) with every float entry drawn again: a layer scale of
    1e-5 or a BN bias of 0 would hide a wrong branch."""
    m = m.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.3 + (1.0 if "running_var" in name else 0.0))
    return m.eval(), {k: v.double() for k, v in m.state_dict().items()}


# ---- float64 reference, step by step as the official modules --------------------------------------------------

def conv(x, w, b=None, groups=1, dilation=1, stride=1, padding=None):
    """Convolution as a sum over kernel offsets: each offset multiplies a (strided) window of the padded input by
    that tap of every group's weights. padding None: 'same' for an odd kernel, dilation * (k - 1) / 2."""
    k = w.shape[2:]
    pad = [dilation * (s - 1) // 2 if padding is None else padding for s in k]
    xp = F.pad(x, [p for p in reversed(pad) for _ in range(2)])
    outs = [(n + 2 * p - dilation * (s - 1) - 1) // stride + 1 for n, p, s in zip(x.shape[2:], pad, k)]
    cin_g, cout_g = x.shape[1] // groups, w.shape[0] // groups
    y = torch.zeros(x.shape[0], w.shape[0], *outs, dtype=torch.float64)
    for tap in itertools.product(*(range(s) for s in k)):
        window = xp[(slice(None), slice(None)) + tuple(slice(t * dilation, t * dilation + stride * (o - 1) + 1, stride)
                                                       for t, o in zip(tap, outs))]
        for g in range(groups):
            wg = w[g * cout_g:(g + 1) * cout_g, :, *tap]  # (cout_g, cin_g)
            y[:, g * cout_g:(g + 1) * cout_g] += torch.einsum("oi,bi...->bo...", wg,
                                                                window[:, g * cin_g:(g + 1) * cin_g])
    return y if b is None else y + b.reshape(1, -1, *[1] * len(k))


def per_channel(v, x):
    return v.reshape(1, -1, *[1] * (x.dim() - 2))


def bn(x, p, pre):
    return ((x - per_channel(p[f"{pre}.running_mean"], x)) / torch.sqrt(per_channel(p[f"{pre}.running_var"], x) + EPS)
            * per_channel(p[f"{pre}.weight"], x) + per_channel(p[f"{pre}.bias"], x))


def group_norm_1(x, p, pre):
    """The official LayerNorm(use_group=True): one mean and variance per sample over channels and positions."""
    flat = x.reshape(x.shape[0], -1)
    mu = flat.mean(1).reshape(-1, *[1] * (x.dim() - 1))
    var = ((x - mu) ** 2).reshape(x.shape[0], -1).mean(1).reshape(mu.shape)
    return (x - mu) / torch.sqrt(var + EPS) * per_channel(p[f"{pre}.weight"], x) + per_channel(p[f"{pre}.bias"], x)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def se_layer(x, p, pre):
    s = x.reshape(*x.shape[:2], -1).mean(-1)
    h = torch.clamp(s @ p[f"{pre}.fc1.weight"].T + p[f"{pre}.fc1.bias"], min=0)
    gate = torch.sigmoid(h @ p[f"{pre}.fc2.weight"].T + p[f"{pre}.fc2.bias"])
    return x * gate.reshape(*gate.shape, *[1] * (x.dim() - 2))


def pointwise(x, w, b):
    return conv(x, w.reshape(w.shape[0], -1, *[1] * (x.dim() - 2)), b)


def smixer(x, p, pre, groups):
    w = lambda n: p[f"{pre}.{n}"]  # noqa: E731
    x = pointwise(x, w("x.conv.weight"), w("x.conv.bias"))
    mean = x.reshape(*x.shape[:2], -1).mean(-1).reshape(*x.shape[:2], *[1] * (x.dim() - 2))
    x = x + per_channel(w("centred.layerscale.gamma"), x) * (x - mean)
    h = gelu(bn(conv(x, w("near.conv.weight"), groups=groups), p, f"{pre}.near.bn"))
    l_ = conv(conv(x, w("far.conv.weight"), groups=groups, dilation=2), w("far.conv_1.weight"), groups=groups,
              dilation=2)
    l_ = gelu(bn(l_, p, f"{pre}.far.bn"))
    y = torch.cat([se_layer(h, p, f"{pre}.near.se"), se_layer(l_, p, f"{pre}.far.se")], dim=1)
    return pointwise(y, w("conv.weight"), w("conv.bias"))


def cmixer(x, p, pre, groups):
    w = lambda n: p[f"{pre}.{n}"]  # noqa: E731
    ind = x.argmax(dim=1, keepdim=True)
    theta = gelu(pointwise(x, w("theta.linear.weight"), w("theta.linear.bias")))
    weight = pointwise(x, w("w.linear.weight"), w("w.linear.bias"))
    feat = weight * theta + torch.take_along_dim(weight, ind, 1) * torch.take_along_dim(theta, ind, 1)
    # channel pairs (2j, 2j + 1) as complex numbers, channels last, as the official view_as_complex
    z = torch.view_as_complex(feat.movedim(1, -1).reshape(*feat.shape[:1], *feat.shape[2:], -1, 2).contiguous())
    z = z * torch.view_as_complex(w("param.weight").contiguous())
    feat = torch.view_as_real(z).reshape(*z.shape[:-1], -1).movedim(-1, 1)
    y = gelu(bn(conv(feat, w("conv.weight"), groups=groups), p, f"{pre}.bn"))
    y = se_layer(y, p, f"{pre}.se")
    return pointwise(y, w("linear.weight"), w("linear.bias"))


def block(x, p, dim, expand, late, pre="spartan_block"):
    s_groups, c_groups = (dim // 2, dim) if late else (1, dim * expand)
    x = x + per_channel(p[f"{pre}.layerscale.gamma"], x) * smixer(group_norm_1(x, p, f"{pre}.gn"), p,
                                                                  f"{pre}.spartan_spatial", s_groups)
    return x + per_channel(p[f"{pre}.layerscale_1.gamma"], x) * cmixer(group_norm_1(x, p, f"{pre}.gn_1"), p,
                                                                       f"{pre}.spartan_wave", c_groups)


# ---- the library blocks against it ----------------------------------------------------------------------------

def _bool(v):
    return "true" if v else "false"


BLOCKS = [  # dim, expand, late, spatial shape
    (16, 4, False, (7, 5)),   # full 3x3 spatial convs, depthwise wave conv
    (16, 2, True, (9, 6)),    # depthwise spatial convs, wave conv in groups of 2
    (24, 2, True, (5, 7)),
    (16, 4, False, (11,)),    # 1-D
    (8, 2, True, (13,)),
]


@pytest.mark.parametrize("dim,expand,late,shape", BLOCKS)
def test_block_against_float64(dim, expand, late, shape):
    nd = len(shape)
    m, p = compile_block(f"spartan_block({dim}, {expand}, late = {_bool(late)}, nd = {nd})", dim, shape)
    x = torch.randn(2, dim, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), block(x, p, dim, expand, late), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("groups,shape", [(1, (5, 7)), (8, (6, 3)), (1, (9,))])
def test_spatial_mixer_alone(groups, shape):
    m, p = compile_block(f"spartan_spatial(16, {groups}, nd = {len(shape)})", 16, shape)
    x = torch.randn(2, 16, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), smixer(x, p, "spartan_spatial", groups), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("expand,groups,shape", [(4, 32, (5, 3)), (2, 8, (3, 7)), (3, 24, (7,))])
def test_wave_aggregation_alone(expand, groups, shape):
    m, p = compile_block(f"spartan_wave(8, {expand}, {groups}, nd = {len(shape)})", 8, shape)
    x = torch.randn(2, 8, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), cmixer(x, p, "spartan_wave", groups), rtol=1e-10, atol=1e-12)


def test_widths_follow_the_official_layers():
    _, p = compile_block("spartan_block(32, 2, late = true)", 32, (4, 4))
    assert p["spartan_block.spartan_spatial.x.conv.weight"].shape == (16, 32, 1, 1)  # proj_in to half the width
    assert p["spartan_block.spartan_spatial.near.se.fc1.weight"].shape == (4, 16)    # SE of a quarter of the half
    assert p["spartan_block.spartan_spatial.far.conv.weight"].shape == (16, 1, 3, 3)  # depthwise when late
    assert p["spartan_block.spartan_wave.se.fc1.weight"].shape == (8, 64)            # SE of dim / 4, not neck / 4
    assert p["spartan_block.spartan_wave.conv.weight"].shape == (64, 2, 3, 3)        # groups of `expand` channels
    assert p["spartan_block.spartan_wave.param.weight"].shape == (32, 2)             # one complex weight per pair
    _, p = compile_block("spartan_block(32, 4)", 32, (4, 4))
    assert p["spartan_block.spartan_spatial.near.conv.weight"].shape == (16, 16, 3, 3)  # full convs early
    assert p["spartan_block.spartan_wave.conv.weight"].shape == (128, 1, 3, 3)          # depthwise early


@pytest.mark.parametrize("late,shape", [(True, (3, 4)), (False, (2, 3)), (True, (5,))])
def test_block_gradients(late, shape):
    m, _ = compile_block(f"spartan_block(8, 2, late = {_bool(late)}, nd = {len(shape)})", 8, shape, seed=1)
    x = torch.randn(2, 8, *shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


# ---- argmax_gather -------------------------------------------------------------------------------------------

def test_argmax_gather_takes_the_first_of_tied_channels_and_no_gradient_to_the_key():
    src = 'model t() { input x[3, 4]\n key: identity\n v: linear(5)\n $v >> argmax_gather($key) }'
    m = archdsl.compile(archdsl.build(archdsl.parse(src))).double()
    x = torch.tensor([[[1.0, 2.0, 0.0, 5.0], [1.0, 2.0, 7.0, 5.0], [0.0, 2.0, 7.0, 1.0]]], dtype=torch.float64)
    v = m.v.linear(x)
    want = torch.stack([v[0, 0, 0], v[0, 0, 1], v[0, 1, 2], v[0, 0, 3]])  # ties go to the lower channel
    torch.testing.assert_close(m(x)[0, 0], want)
    key = x.clone().requires_grad_()
    values = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    out = m.argmax_gather(values, key)
    out.sum().backward()
    assert key.grad is None and values.grad.sum() == 4 and (values.grad.abs().sum(1) == 1).all()


def test_argmax_gather_gradcheck():
    src = 'model t() { input x[4, 3, 2]\n key: identity\n v: linear(6)\n $v >> argmax_gather($key) }'
    m = archdsl.compile(archdsl.build(archdsl.parse(src))).double()
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


@pytest.mark.parametrize("body,what", [
    ("v: linear(2)\n $v >> argmax_gather($key)", "index past the 2 channels"),
    ("v: conv(4, k = 2, stride = 2, padding = 0)\n $v >> argmax_gather($key)", "same positions"),
])
def test_argmax_gather_errors_name_the_line(body, what):
    with pytest.raises(ArchError) as err:
        archdsl.build(archdsl.parse(f"model t() {{ input x[3, 4, 4]\n key: identity\n {body} }}"))
    assert what in err.value.message and err.value.span.line == 4


# ---- SpaRTAN-T ---------------------------------------------------------------------------------------------

def official_count_and_macs(depths=(3, 3, 12, 2), expands=(4, 4, 2, 2), dims=(64, 128, 256), init=32,
                            classes=1000, size=224):
    """Parameters, and MACs of convolutions and linear layers, of the official SpaRTAN(...) added up layer by
    layer as SpaRTAN.__init__ builds them (ConvNormAct: conv without bias + BatchNorm; SELayer: two biased 1x1)."""
    params = macs = 0

    def conv_(cin, cout, k, side, groups=1, bias=True):
        nonlocal params, macs
        params += cout * (cin // groups) * k * k + (cout if bias else 0)
        macs += cout * (cin // groups) * k * k * side * side

    def bn_(c):
        nonlocal params
        params += 2 * c

    def se_(c, rd):
        conv_(c, rd, 1, 1)
        conv_(rd, c, 1, 1)

    side = size // 2
    conv_(3, init // 2, 3, side, bias=False)
    bn_(init // 2)
    side //= 2
    conv_(init // 2, init, 3, side, bias=False)
    bn_(init)
    widths = [init, *dims]
    for layer, depth in enumerate(depths):
        dim, late = widths[layer], layer >= len(depths) // 2
        for _ in range(depth):
            params += 2 * dim + 2 * dim + dim + dim  # norm_1, norm_2, scale_1, scale_2
            half, g = dim // 2, (dim // 2 if late else 1)
            params += half  # SMixer.gamma
            conv_(dim, half, 1, side)
            conv_(half, half, 3, side, g, bias=False)
            bn_(half)
            for _ in range(2):  # l_conv: two dilated convs, BN + GELU after the second
                conv_(half, half, 3, side, g, bias=False)
            bn_(half)
            se_(half, half // 4)
            se_(half, half // 4)
            conv_(dim, dim, 1, side)
            neck = dim * expands[layer]
            conv_(dim, neck, 1, side)
            conv_(dim, neck, 1, side)
            params += neck  # CMixer.complex: neck / 2 complex numbers
            conv_(neck, neck, 3, side, dim if late else neck, bias=False)
            bn_(neck)
            se_(neck, dim // 4)
            conv_(neck, dim, 1, side)
        if layer != len(depths) - 1:
            side //= 2
            conv_(dim, widths[layer + 1], 2, side, bias=False)
            bn_(widths[layer + 1])
    params += widths[-1] * classes + classes
    macs += widths[-1] * classes
    return params, macs


def _spartan_t(**overrides):
    return archdsl.build(archdsl.parse(MODELS / "spartan_t.arch"), **overrides)


def test_spartan_t_count_is_the_official_one():
    params, conv_macs = official_count_and_macs()
    assert params == 3_820_296  # the paper's 3.8M
    assert conv_macs == 799_589_888  # torch's FlopCounterMode over the official module at 224 says the same
    t = totals(_spartan_t())
    assert t["params"] == params
    # plus the wave's complex products, which the einsum counts (2 per real output) and the official
    # module's view_as_complex multiply hides from a FLOP counter
    stages = [(3, 128, 56), (3, 256, 28), (12, 256, 14), (2, 512, 7)]  # blocks, neck width, side
    assert t["macs"] == conv_macs + sum(2 * n * neck * side * side for n, neck, side in stages)


def spartan_t(x, p, dims, depths, expands):
    """SpaRTAN.forward: the two stem ConvNormActs (GELU), stages with a 2x2/2 ConvNormAct (SiLU) between them,
    average pool, linear."""
    for name in ("stem.conv", "stem.conv_1"):
        x = gelu(bn(conv(x, p[f"{name}.weight"], stride=2, padding=1), p, name.replace("conv", "bn")))
    for i, depth in enumerate(depths):
        if i > 0:
            y = bn(conv(x, p[f"stage{i}.down.conv.weight"], stride=2, padding=0), p, f"stage{i}.down.bn")
            x = y * torch.sigmoid(y)
        for d in range(depth):
            x = block(x, p, dims[i], expands[i], i >= len(depths) // 2, pre=f"stage{i}.block{d}.spartan_block")
    return x.flatten(2).mean(-1) @ p["head.linear.weight"].T + p["head.linear.bias"]


def test_spartan_t_against_float64_at_a_small_size():
    dims, depths, size = [16, 24, 32, 48], [1, 1, 2, 1], 36  # odd maps: 9x9 after the stem, 4x4 after a 2x2/2
    m, p = randomized(archdsl.compile(_spartan_t(size=size, classes=5, dims=dims, depths=depths)))
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), spartan_t(x, p, dims, depths, [4, 4, 2, 2]), rtol=1e-10, atol=1e-12)


def test_spartan_t_small_override_counts_and_runs():
    G = _spartan_t(size=64, classes=10, depths=[1, 1, 2, 1])
    assert totals(G)["params"] == official_count_and_macs(depths=(1, 1, 2, 1), classes=10, size=64)[0]
    ops = [d["op"] for _, d in G.nodes(data=True)]
    assert ops.count("argmax_gather") == 2 * 5 and ops.count("se") == 3 * 5
    m = archdsl.compile(G).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    m.train()(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
