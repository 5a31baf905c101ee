"""Tests for the convolutional token mixers: dcls, wconv, replk, dilreparam, inceptiondw, gnconv."""
from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archdsl.errors import ArchError
from archdsl.ops.dcls import DclsConv, dcls_dense_kernel_reference, dcls_shareable_params
from archdsl.ops.registry import get_op

MIXERS = ("dcls", "wconv", "replk", "dilreparam", "inceptiondw", "gnconv")


def build(name, attrs, in_shape, seed=0):
    spec = get_op(name)
    a = spec.bind([], attrs, [in_shape])
    cls, kw = spec.torch(a, [in_shape])
    torch.manual_seed(seed)
    return spec, a, cls(**kw).double()


def randomize_bn(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
            with torch.no_grad():
                bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
                bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))


def bn_by_hand(bn, y, training):
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if training:
        dims = [0] + list(range(2, y.dim()))
        mean, var = y.mean(dims), y.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (y - mean.reshape(shape)) / (var.reshape(shape) + bn.eps).sqrt() * bn.weight.reshape(shape) \
        + bn.bias.reshape(shape)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------- generic registry facts


EXAMPLES = [(name, attrs, ins) for name in MIXERS for attrs, ins in get_op(name).examples]


@pytest.mark.parametrize("name,attrs,ins", EXAMPLES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXAMPLES)])
def test_examples_generic_facts(name, attrs, ins):
    spec, a, m = build(name, attrs, ins[0])
    randomize_bn(m)
    out = spec.shape(a, ins)
    x = torch.randn(2, *ins[0], dtype=torch.float64)
    for training in (True, False):
        m.train(training)
        y = m(x)
        assert tuple(y.shape[1:]) == tuple(out)
        torch.testing.assert_close(y, spec.reference(m, x), rtol=1e-10, atol=1e-10)
    assert spec.params(a, ins) == n_params(m)
    with FlopCounterMode(display=False) as fc:
        m(x[:1])
    assert spec.flop_counter_exact and fc.get_total_flops() == 2 * spec.macs(a, ins, out)


@pytest.mark.parametrize("name", MIXERS)
def test_module_class_is_self_contained(name):
    """Emitted code copies the class source with only math, torch, nn, F in scope."""
    spec = get_op(name)
    attrs, ins = spec.examples[0]
    _, a, m = build(name, attrs, ins[0])
    cls, kw = spec.torch(a, ins)
    assert all(isinstance(v, (int, float, bool, str, type(None), tuple, list)) for v in kw.values())
    scope = {"math": math, "torch": torch, "nn": nn, "F": F}
    exec(inspect.getsource(cls), scope)
    torch.manual_seed(0)
    copy = scope[cls.__name__](**kw).double()
    copy.load_state_dict(m.state_dict())
    x = torch.randn(2, *ins[0], dtype=torch.float64)
    torch.testing.assert_close(copy(x), m(x))


# ------------------------------------------------------------------------------------------------ dcls


def dense_kernel_loop(m):
    """A second, differently written construction: per element, per kernel cell (no floor/neighbours)."""
    ks = m.kernel_size
    w, p = m.weight.detach(), m.P.detach()
    out = torch.zeros(w.shape[0], w.shape[1], *ks, dtype=torch.float64)
    for o, i, e in itertools.product(*map(range, w.shape)):
        pos = [min(max(p[d, o, i, e].item(), -(k // 2)), k - 1 - k // 2) + k // 2 for d, k in enumerate(ks)]
        vals = {}
        for cell in itertools.product(*map(range, ks)):
            if m.SIG is None:  # bilinear: the tent function in every dim
                vals[cell] = math.prod(max(0.0, 1 - abs(c - q)) for c, q in zip(cell, pos))
            else:
                s = [abs(m.SIG[d, o, i, e].item()) + 0.27 for d in range(len(ks))]
                vals[cell] = math.exp(-0.5 * sum(((c - q) / sd) ** 2 for c, q, sd in zip(cell, pos, s)))
        total = 1.0 if m.SIG is None else sum(vals.values())
        for cell, v in vals.items():
            out[(o, i, *cell)] += w[o, i, e].item() * v / total
    return out


@pytest.mark.parametrize("interp", ["bilinear", "gauss"])
@pytest.mark.parametrize("k,groups,in_ch,out_ch", [((7,), 3, 3, 3), ((5, 4), 1, 2, 3), ((3, 5), 2, 4, 2)])
def test_dcls_dense_kernel_matches_explicit_loops(interp, k, groups, in_ch, out_ch):
    torch.manual_seed(3)
    m = DclsConv(in_ch, out_ch, 3, k, groups=groups, padding=tuple(kk // 2 for kk in k), interp=interp).double()
    with torch.no_grad():  # spread positions over (and past) the whole extent
        for d, kk in enumerate(k):
            m.P[d].uniform_(-kk / 2 - 1, kk / 2 + 1)
        if m.SIG is not None:
            m.SIG.uniform_(-0.6, 0.6)
    dense = m.kernel()
    assert dense.shape == (out_ch, in_ch // groups, *k)
    torch.testing.assert_close(dense, dcls_dense_kernel_reference(m), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense, dense_kernel_loop(m), rtol=1e-12, atol=1e-12)
    # bilinear spreads each weight without loss; the normalised Gaussian too: kernel sum == weight sum
    torch.testing.assert_close(dense.sum(), m.weight.sum())


def test_dcls_bilinear_is_the_two_neighbour_split():
    m = DclsConv(1, 1, 1, (5,), padding=(2,)).double()
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.P.fill_(0.25)  # centre 2 -> position 2.25: 0.75 on cell 2, 0.25 on cell 3
    torch.testing.assert_close(m.kernel()[0, 0], torch.tensor([0, 0, 1.5, 0.5, 0], dtype=torch.float64))


def test_dcls_positions_clamped_at_the_border():
    for interp in ("bilinear", "gauss"):
        torch.manual_seed(0)
        m = DclsConv(2, 2, 2, (5, 4), groups=2, padding=(2, 2), interp=interp).double()
        with torch.no_grad():
            m.P[0].fill_(100.0)
            m.P[1].fill_(-100.0)
        far = m.kernel()
        with torch.no_grad():
            m.P[0].fill_(2.0)  # 5 -> extent [-2, 2]
            m.P[1].fill_(-2.0)  # 4 -> extent [-2, 1]
        torch.testing.assert_close(far, m.kernel())
        if interp == "bilinear":  # everything on the corner cell (row 4, col 0)
            expect = torch.zeros_like(far)
            expect[:, :, 4, 0] = m.weight.sum(-1)
            torch.testing.assert_close(far, expect)
    # an even extent's upper limit is k - 1 - k//2 (the last cell), not k//2
    m = DclsConv(1, 1, 1, (4,), padding=(2,)).double()
    with torch.no_grad():
        m.P.fill_(7.0)
        m.weight.fill_(1.0)
    torch.testing.assert_close(m.kernel()[0, 0], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))


def test_dcls_init_follows_official():
    torch.manual_seed(0)
    m = DclsConv(64, 64, 20, (9, 9), groups=64, padding=(4, 4), interp="gauss")
    assert m.P.abs().max() <= 4 and 0.35 < m.P.std() < 0.55  # N(0, 0.5) clamped to the extent
    assert torch.all(m.SIG == 0.23)  # sigma = |SIG| + 0.27 = 0.5
    assert m.weight.shape == (64, 1, 20) and m.P.shape == (2, 64, 1, 20) == m.SIG.shape


@pytest.mark.parametrize("interp", ["bilinear", "gauss"])
def test_dcls_gradients_reach_positions(interp):
    spec, a, m = build("dcls", {"k": 7, "count": 3, "interp": interp}, (3, 9, 8))
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    (m(x) ** 2).sum().backward()
    assert m.P.grad is not None and m.P.grad.abs().sum() > 0
    assert m.weight.grad.abs().sum() > 0
    if interp == "gauss":
        assert m.SIG.grad is not None and m.SIG.grad.abs().sum() > 0


@pytest.mark.parametrize("interp,k,shape", [("bilinear", (5,), (2, 7)), ("gauss", (5,), (2, 7)),
                                            ("bilinear", (3, 4), (2, 5, 5)), ("gauss", (3, 3), (2, 4, 5))])
def test_dcls_gradcheck(interp, k, shape):
    torch.manual_seed(1)
    m = DclsConv(2, 2, 2, k, groups=2, padding=tuple(kk // 2 for kk in k), interp=interp).double()
    with torch.no_grad():  # fractional parts away from the tent's kinks, strictly inside the extent
        frac = torch.rand_like(m.P) * 0.6 + 0.2
        for d, kk in enumerate(k):
            lo = -(kk // 2)
            m.P[d].copy_(lo + torch.randint(0, kk - 1, m.P[d].shape).double() + frac[d])
    x = torch.randn(1, *shape, dtype=torch.float64)
    names = ["weight", "P"] + (["SIG"] if interp == "gauss" else [])
    params = {n: getattr(m, n).detach().clone().requires_grad_(True) for n in names}

    def f(*vals):
        return torch.func.functional_call(m, dict(zip(names, vals)), (x,))

    assert torch.autograd.gradcheck(f, tuple(params[n] for n in names), eps=1e-6, atol=1e-5)


def test_dcls_params_macs_and_sharing_by_hand():
    spec = get_op("dcls")
    # depthwise 2-D, C=4, count=5, k=9, gauss: W 4*1*5=20, P 2*20, SIG 2*20, bias 4 -> 104
    a = spec.bind([9, 5], {"interp": "gauss"}, [(4, 10, 12)])
    assert spec.params(a, [(4, 10, 12)]) == 20 + 40 + 40 + 4
    assert spec.macs(a, [(4, 10, 12)], (4, 10, 12)) == 4 * 10 * 12 * 81  # dense 9x9 dw conv
    assert dcls_shareable_params(a, [(4, 10, 12)]) == 40
    # full 1-D conv, in 6 -> out 4, count 3, bilinear: W 4*6*3=72 + P 72 + bias 4
    a = spec.bind([], {"k": 7, "count": 3, "out": 4}, [(6, 20)])
    assert spec.params(a, [(6, 20)]) == 148 and dcls_shareable_params(a, [(6, 20)]) == 72
    _, a, m = build("dcls", {"k": 5, "count": 2, "share": "stage1"}, (3, 6))
    assert m.share == "stage1" and DclsConv._shareable == ("P",)
    assert dict(m.named_parameters())["P"].numel() == dcls_shareable_params(a, [(3, 6)])


def test_dcls_shared_positions_tie():
    _, _, m1 = build("dcls", {"k": 5, "count": 2, "share": "s"}, (3, 8, 8), seed=0)
    _, _, m2 = build("dcls", {"k": 5, "count": 2, "share": "s"}, (3, 8, 8), seed=1)
    m2.P = m1.P  # what the IR does for one share group
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    (m1(x).sum() + m2(x).sum()).backward()
    assert m1.P.grad is m2.P.grad and len(list(nn.ModuleList([m1, m2]).parameters())) == 5  # W, P, b + W, b


def test_dcls_shape_errors():
    spec = get_op("dcls")
    with pytest.raises(ArchError, match=r"input shape \[6, 8, 8\]"):
        a = spec.bind([5, 3], {"out": 4, "groups": 4}, [(6, 8, 8)])
        spec.shape(a, [(6, 8, 8)])
    with pytest.raises(ArchError, match="larger than its padded input"):
        a = spec.bind([9, 3], {"padding": 0}, [(2, 5)])
        spec.shape(a, [(2, 5)])
    with pytest.raises(ArchError):
        spec.bind([5, 3], {"interp": "cubic"}, [(2, 5)])


# ----------------------------------------------------------------------------------------------- wconv


def test_wconv_density_buffer_and_half_profile():
    spec, a, m = build("wconv", {"out": 3, "k": 5, "density": [0.2, 0.8]}, (2, 9, 9))
    assert "Phi" in dict(m.named_buffers()) and "Phi" not in dict(m.named_parameters())
    prof = torch.tensor([0.2, 0.8, 1.0, 0.8, 0.2], dtype=torch.float64)  # official [den, 1, flip(den)]
    torch.testing.assert_close(m.Phi, torch.outer(prof, prof))
    assert n_params(m) == spec.params(a, [(2, 9, 9)]) == 3 * 2 * 25  # same as a plain conv (no bias)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    w = m.weight.detach().clone()
    for i, j in itertools.product(range(5), range(5)):
        w[:, :, i, j] *= prof[i] * prof[j]
    torch.testing.assert_close(m(x), F.conv2d(x, w, padding=2))


def test_wconv_default_is_a_plain_conv_and_full_profile_1d():
    _, _, m = build("wconv", {"out": 4, "k": 3, "bias": True}, (2, 11))
    x = torch.randn(2, 2, 11, dtype=torch.float64)
    torch.testing.assert_close(m(x), F.conv1d(x, m.weight, m.bias, padding=1))
    _, _, m = build("wconv", {"out": 2, "k": 3, "density": [0.5, 2.0, 0.25]}, (2, 11))
    torch.testing.assert_close(m(x), F.conv1d(x, m.weight * torch.tensor([0.5, 2.0, 0.25]).double(), padding=1))


def test_wconv_errors():
    spec = get_op("wconv")
    with pytest.raises(ArchError, match=r"density has 2 values .*input shape \[3, 8, 8\]"):
        spec.shape(spec.bind([4, 3, [0.1, 0.2]], {}, [(3, 8, 8)]), [(3, 8, 8)])
    with pytest.raises(ArchError, match="groups=2"):
        spec.shape(spec.bind([4, 3], {"groups": 2}, [(3, 8, 8)]), [(3, 8, 8)])


# ----------------------------------------------------------------------------------------------- replk


@pytest.mark.parametrize("training", [True, False])
def test_replk_is_the_sum_of_two_conv_bn_branches(training):
    spec, a, m = build("replk", {"k": 7, "small": 3, "stride": 2}, (3, 11, 9))
    randomize_bn(m)
    m.train(training)
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    lk = F.conv2d(x, m.lkb_origin.conv.weight, None, 2, 3, 1, 3)
    sm = F.conv2d(x, m.small_conv.conv.weight, None, 2, 1, 1, 3)
    expect = bn_by_hand(m.lkb_origin.bn, lk, training) + bn_by_hand(m.small_conv.bn, sm, training)
    torch.testing.assert_close(m(x), expect)
    assert m.lkb_origin.conv.bias is None and m.small_conv.conv.bias is None
    # params: C*k^2 + C*small^2 + 2 * 2C
    assert spec.params(a, [(3, 11, 9)]) == n_params(m) == 3 * 49 + 3 * 9 + 2 * 2 * 3
    if not training:  # the official reparam fold (fuse BNs, pad small kernel to the centre) reproduces it
        def fuse(conv, bn):
            t = bn.weight / (bn.running_var + bn.eps).sqrt()
            return conv.weight * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t
        k1, b1 = fuse(m.lkb_origin.conv, m.lkb_origin.bn)
        k2, b2 = fuse(m.small_conv.conv, m.small_conv.bn)
        torch.testing.assert_close(m(x), F.conv2d(x, k1 + F.pad(k2, [2] * 4), b1 + b2, 2, 3, 1, 3))


def test_replk_1d_without_small_and_errors():
    spec, a, m = build("replk", {"k": 31, "small": 0}, (2, 40))
    assert not hasattr(m, "small_conv") and n_params(m) == spec.params(a, [(2, 40)]) == 2 * 31 + 4
    with pytest.raises(ArchError, match="odd"):
        spec.shape(spec.bind([8], {}, [(2, 9, 9)]), [(2, 9, 9)])
    with pytest.raises(ArchError, match="must not exceed"):
        spec.shape(spec.bind([5, 7], {}, [(2, 9, 9)]), [(2, 9, 9)])


# ------------------------------------------------------------------------------------------ dilreparam


def undilate(w, r):
    """A dilated depthwise kernel written as a dense one: w[..., i, j] lands on (r*i, r*j)."""
    k = w.shape[-1]
    n = r * (k - 1) + 1
    dense = torch.zeros(*w.shape[:2], *([n] * (w.dim() - 2)), dtype=w.dtype)
    for cell in itertools.product(range(k), repeat=w.dim() - 2):
        dense[(slice(None), slice(None), *(r * c for c in cell))] = w[(slice(None), slice(None), *cell)]
    return dense


def test_dilreparam_equals_hand_built_dense_branches():
    spec, a, m = build("dilreparam", {"k": 13}, (3, 15, 14))
    assert (m.kernel_sizes, m.dilates) == ([5, 7, 3, 3, 3], [1, 2, 3, 4, 5])  # official table for k=13
    randomize_bn(m)
    m.eval()
    x = torch.randn(2, 3, 15, 14, dtype=torch.float64)
    expect = bn_by_hand(m.origin_bn, F.conv2d(x, m.lk_origin.weight, None, 1, 6, 1, 3), False)
    for k, r in zip(m.kernel_sizes, m.dilates):
        dense = undilate(getattr(m, f"dil_conv_k{k}_{r}").weight, r)
        n = dense.shape[-1]
        expect = expect + bn_by_hand(getattr(m, f"dil_bn_k{k}_{r}"), F.conv2d(x, dense, None, 1, n // 2, 1, 3), False)
    torch.testing.assert_close(m(x), expect)
    # params: C*13^2 + 2C + sum(C*k_i^2 + 2C)
    c = 3
    assert spec.params(a, [(3, 15, 14)]) == n_params(m) == c * 169 + 2 * c + sum(c * k * k + 2 * c for k in (5, 7, 3, 3, 3))


def test_dilreparam_train_mode_1d_and_tables():
    _, _, m = build("dilreparam", {"k": 7}, (2, 13))
    x = torch.randn(3, 2, 13, dtype=torch.float64)
    expect = bn_by_hand(m.origin_bn, F.conv1d(x, m.lk_origin.weight, None, 1, 3, 1, 2), True)
    for k, r in zip([5, 3, 3], [1, 2, 3]):
        dense = undilate(getattr(m, f"dil_conv_k{k}_{r}").weight, r)
        expect = expect + bn_by_hand(getattr(m, f"dil_bn_k{k}_{r}"),
                                     F.conv1d(x, dense, None, 1, dense.shape[-1] // 2, 1, 2), True)
    torch.testing.assert_close(m(x), expect)
    table = {17: ([5, 9, 3, 3, 3], [1, 2, 4, 5, 7]), 15: ([5, 7, 3, 3, 3], [1, 2, 3, 5, 7]),
             11: ([5, 5, 3, 3, 3], [1, 2, 3, 4, 5]), 9: ([5, 5, 3, 3], [1, 2, 3, 4]), 5: ([3, 3], [1, 2])}
    for k, (ks, rs) in table.items():
        _, _, m = build("dilreparam", {"k": k}, (1, 20))
        assert (m.kernel_sizes, m.dilates) == (ks, rs)


def test_dilreparam_errors():
    spec = get_op("dilreparam")
    with pytest.raises(ArchError, match="no default branches for k=19"):
        spec.shape(spec.bind([19], {}, [(2, 9, 9)]), [(2, 9, 9)])
    with pytest.raises(ArchError, match="spans 9 > k=7"):
        spec.shape(spec.bind([7, [3], [4]], {}, [(2, 9, 9)]), [(2, 9, 9)])
    with pytest.raises(ArchError, match="distinct"):
        spec.shape(spec.bind([7, [3, 3], [2, 2]], {}, [(2, 9, 9)]), [(2, 9, 9)])


# ----------------------------------------------------------------------------------------- inceptiondw


def test_inceptiondw_channel_split_2d():
    spec, a, m = build("inceptiondw", {}, (17, 9, 13))
    assert m.split_indexes == (11, 2, 2, 2)  # gc = int(17 * 0.125) = 2; identity keeps the rest
    assert m.dwconv_hw.weight.shape == (2, 1, 3, 3)
    assert m.dwconv_w.weight.shape == (2, 1, 1, 11) and m.dwconv_h.weight.shape == (2, 1, 11, 1)
    x = torch.randn(2, 17, 9, 13, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y[:, :11], x[:, :11])
    torch.testing.assert_close(y[:, 11:13], F.conv2d(x[:, 11:13], m.dwconv_hw.weight, m.dwconv_hw.bias, 1, 1, 1, 2))
    torch.testing.assert_close(y[:, 13:15], F.conv2d(x[:, 13:15], m.dwconv_w.weight, m.dwconv_w.bias, 1, (0, 5), 1, 2))
    torch.testing.assert_close(y[:, 15:17], F.conv2d(x[:, 15:17], m.dwconv_h.weight, m.dwconv_h.bias, 1, (5, 0), 1, 2))
    x2 = x.clone()
    x2[:, 14] += 1.0  # touching one channel of the horizontal band changes only that output channel
    changed = (m(x2) - y).abs().flatten(2).amax(-1).amax(0) > 0
    assert changed.nonzero().flatten().tolist() == [14]
    # params: gc*(3^2 + 1) + 2*gc*(11 + 1); MACs: H*W*gc*(9 + 22)
    assert spec.params(a, [(17, 9, 13)]) == n_params(m) == 2 * 10 + 2 * 2 * 12
    assert spec.macs(a, [(17, 9, 13)], (17, 9, 13)) == 9 * 13 * 2 * (9 + 22)


def test_inceptiondw_1d_and_errors():
    spec, a, m = build("inceptiondw", {"k_sq": 3, "band_k": 9, "branch_ratio": 0.25}, (8, 15))
    assert m.split_indexes == (4, 2, 2)
    x = torch.randn(2, 8, 15, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y[:, :4], x[:, :4])
    torch.testing.assert_close(y[:, 4:6], F.conv1d(x[:, 4:6], m.dwconv_sq.weight, m.dwconv_sq.bias, 1, 1, 1, 2))
    torch.testing.assert_close(y[:, 6:], F.conv1d(x[:, 6:], m.dwconv_band.weight, m.dwconv_band.bias, 1, 4, 1, 2))
    assert spec.params(a, [(8, 15)]) == n_params(m) == 2 * 4 + 2 * 10
    with pytest.raises(ArchError, match=r"input shape \[7, 5, 5\]"):
        spec.shape(spec.bind([], {}, [(7, 5, 5)]), [(7, 5, 5)])  # int(7 * 0.125) = 0 channels per branch
    with pytest.raises(ArchError, match="odd"):
        spec.shape(spec.bind([4], {}, [(16, 5, 5)]), [(16, 5, 5)])


# ---------------------------------------------------------------------------------------------- gnconv


def gnconv_params_by_hand(c, order, k, nd):
    dims = [c // 2 ** i for i in range(order)][::-1]
    s = sum(dims)
    return (c * 2 * c + 2 * c) + (s * k ** nd + s) + sum(dims[i] * dims[i + 1] + dims[i + 1]
                                                           for i in range(order - 1)) + (c * c + c)


def test_gnconv_params_by_hand():
    spec = get_op("gnconv")
    # order 3, C=8, k=7, 2-D: dims [2, 4, 8], S=14 -> 144 + 700 + (12 + 40) + 72
    _, a, m = build("gnconv", {"order": 3, "k": 7}, (8, 9, 9))
    assert m.dims == [2, 4, 8]
    assert spec.params(a, [(8, 9, 9)]) == n_params(m) == 144 + 700 + 52 + 72 == gnconv_params_by_hand(8, 3, 7, 2)
    # order 2, C=6, k=5, 1-D: dims [3, 6], S=9 -> 84 + 54 + 24 + 42
    _, a, m = build("gnconv", {"order": 2, "k": 5}, (6, 11))
    assert spec.params(a, [(6, 11)]) == n_params(m) == 84 + 54 + 24 + 42 == gnconv_params_by_hand(6, 2, 5, 1)
    # MACs per position: 2C^2 + S*k + sum d_i d_{i+1} + C^2 = 72 + 45 + 18 + 36
    assert spec.macs(a, [(6, 11)], (6, 11)) == 11 * (72 + 45 + 18 + 36)


def test_gnconv_matches_recursion_by_hand():
    _, _, m = build("gnconv", {"order": 3, "k": 5, "s": 1 / 3}, (8, 7, 6))
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    f = F.conv2d(x, m.proj_in.weight, m.proj_in.bias)
    pwa, abc = f[:, :2], f[:, 2:]
    dw = F.conv2d(abc, m.dwconv.weight, m.dwconv.bias, padding=2, groups=14) / 3
    y = pwa * dw[:, :2]
    y = F.conv2d(y, m.pws[0].weight, m.pws[0].bias) * dw[:, 2:6]
    y = F.conv2d(y, m.pws[1].weight, m.pws[1].bias) * dw[:, 6:14]
    torch.testing.assert_close(m(x), F.conv2d(y, m.proj_out.weight, m.proj_out.bias))


def test_gnconv_errors():
    spec = get_op("gnconv")
    with pytest.raises(ArchError, match=r"divisible by 4 \(input shape \[6, 5, 5\]"):
        spec.shape(spec.bind([3], {}, [(6, 5, 5)]), [(6, 5, 5)])
    with pytest.raises(ArchError, match="odd"):
        spec.shape(spec.bind([2, 4], {}, [(8, 5, 5)]), [(8, 5, 5)])
