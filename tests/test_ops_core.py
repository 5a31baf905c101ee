"""Hand-derived checks of the core ops: counts computed by hand, outputs of small known tensors, errors."""
from __future__ import annotations

import pytest
import torch

from archdsl.errors import ArchError
from archdsl.ops.registry import get_op


def build(name, attrs, shape):
    """(spec, attrs, output shape, module) for one op applied to an input of `shape` (no batch)."""
    spec = get_op(name)
    a = spec.bind([], attrs, [shape])
    out = spec.shape(a, [shape])
    cls, kwargs = spec.torch(a, [shape])
    return spec, a, out, cls(**kwargs)


def nparams(module):
    return sum(p.numel() for p in module.parameters())


# ---- parameter counts --------------------------------------------------------------------------------

def test_bn_params():
    spec, a, _, m = build("bn", {}, (7, 5, 3))
    assert spec.params(a, [(7, 5, 3)]) == nparams(m) == 14  # weight 7 + bias 7
    spec, a, _, m = build("bn", {"affine": False}, (7, 9))
    assert spec.params(a, [(7, 9)]) == nparams(m) == 0
    assert isinstance(m, torch.nn.BatchNorm1d)


def test_ln_params_and_bias_free():
    spec, a, _, m = build("ln", {}, (5, 4, 3))
    assert spec.params(a, [(5, 4, 3)]) == nparams(m) == 10  # weight 5 + bias 5
    spec, a, _, m = build("ln2d", {"bias": False}, (5, 4, 3))
    assert spec.params(a, [(5, 4, 3)]) == nparams(m) == 5
    assert m.bias is None and [n for n, _ in m.named_parameters()] == ["weight"]
    spec, a, _, m = build("lnchw", {"bias": False}, (5, 4, 3))
    assert nparams(m) == 5 and [n for n, _ in m.named_parameters()] == ["weight"]


def test_mhsa_params_and_macs():
    shape = (6, 2, 3)  # C = 6 channels, N = 6 tokens
    spec, a, out, m = build("mhsa", {"heads": 2}, shape)
    # qkv 6x18 weight (no bias by default) + proj 6x6 weight + 6 bias
    assert spec.params(a, [shape]) == nparams(m) == 108 + 36 + 6
    spec, a, out, m = build("mhsa", {"heads": 3, "qkv_bias": True}, shape)
    assert spec.params(a, [shape]) == nparams(m) == 108 + 18 + 36 + 6
    assert sorted(n for n, _ in m.named_parameters()) == ["proj.bias", "proj.weight", "qkv.bias", "qkv.weight"]
    # qkv 3*6*36 = 648, scores 6*6*6 = 216, weighted sum 216, proj 6*36 = 216
    assert spec.macs(a, [shape], out) == 648 + 216 + 216 + 216


def test_mhsa_head_dim_sets_heads():
    _, _, _, m = build("mhsa", {"head_dim": 4}, (12, 5))
    assert m.heads == 3


def test_starrelu_params():
    spec, a, _, m = build("starrelu", {}, (4, 3))
    assert spec.params(a, [(4, 3)]) == nparams(m) == 2
    assert m.scale.shape == (1,) and m.bias.shape == (1,)
    spec, a, _, m = build("starrelu", {"learnable": False}, (4, 3))
    assert spec.params(a, [(4, 3)]) == nparams(m) == 0
    assert sorted(n for n, _ in m.named_buffers()) == ["bias", "scale"]


def test_layerscale_init():
    spec, a, _, m = build("layerscale", {}, (3, 4))
    assert nparams(m) == 3 and torch.all(m.gamma == 1e-5)
    _, _, _, m = build("resscale", {}, (3, 4))
    assert torch.all(m.gamma == 1.0)


# ---- known outputs -----------------------------------------------------------------------------------

def test_gap_gmp_known_tensor():
    x = torch.arange(12.0).reshape(1, 2, 2, 3)  # channel 0 holds 0..5, channel 1 holds 6..11
    _, _, out, m = build("gap", {}, (2, 2, 3))
    assert out == (2,)
    assert m(x).tolist() == [[2.5, 8.5]]
    _, _, _, m = build("gmp", {}, (2, 2, 3))
    assert m(x).tolist() == [[5.0, 11.0]]


def test_avgpool_count_include_pad():
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    _, _, _, m = build("avgpool", {"k": 3, "stride": 1, "padding": 1, "count_include_pad": False}, (1, 3))
    torch.testing.assert_close(m(x), torch.tensor([[[1.5, 2.0, 2.5]]]))
    _, _, _, m = build("avgpool", {"k": 3, "stride": 1, "padding": 1}, (1, 3))
    torch.testing.assert_close(m(x), torch.tensor([[[1.0, 2.0, 5.0 / 3.0]]]))


def test_avgpool_ceil_mode_is_tf_same_pooling():
    # TF AveragePooling(2, 2, 'same') on 5 values: pairs, then the lone last value (padding never averaged)
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    _, _, out, m = build("avgpool", {"k": 2, "ceil_mode": True, "count_include_pad": False}, (1, 5))
    assert out == (1, 3)
    torch.testing.assert_close(m(x), torch.tensor([[[1.5, 3.5, 5.0]]]))
    assert build("avgpool", {"k": 2, "ceil_mode": True}, (1, 6))[2] == (1, 3)  # even sizes: as floor mode
    # k 3, stride 2, padding 1 on 4 values: windows [pad 1 2] [2 3 4] [4 pad -]; the padding counts, the part
    # past the padded end does not (torch's divisor)
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    _, _, out, m = build("avgpool", {"k": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (1, 4))
    assert out == (1, 3)
    torch.testing.assert_close(m(x), torch.tensor([[[1.0, 3.0, 2.0]]]))
    # a window would start in the right padding: dropped
    assert build("avgpool", {"k": 2, "stride": 2, "padding": 1, "ceil_mode": True}, (1, 4))[2] == (1, 3)


def test_pool_stride_defaults_to_kernel():
    _, _, out, _ = build("maxpool", {"k": 2}, (3, 8, 7))
    assert out == (3, 4, 3)


def test_starrelu_and_relu2_values():
    x = torch.tensor([[-1.0, 2.0]])
    _, _, _, m = build("starrelu", {"scale": 0.5, "bias": -1.0}, (2,))
    torch.testing.assert_close(m(x), torch.tensor([[-1.0, 1.0]]))  # 0.5 * [0, 4] - 1
    _, _, _, m = build("squared_relu", {}, (2,))
    torch.testing.assert_close(m(x), torch.tensor([[0.0, 4.0]]))


def test_upsample_values():
    x = torch.tensor([[[0.0, 1.0]]])
    _, _, out, m = build("upsample", {}, (1, 2))
    assert out == (1, 4)
    assert m(x).tolist() == [[[0.0, 0.0, 1.0, 1.0]]]
    _, _, _, m = build("upsample", {"mode": "linear"}, (1, 2))
    # sources (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the end: the last value)
    torch.testing.assert_close(m(x), torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_ln_normalizes_each_position_over_channels():
    _, _, _, m = build("ln", {}, (4, 3, 5))
    y = m(torch.randn(2, 4, 3, 5) * 3 + 1)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 3, 5), atol=1e-3, rtol=0)


def test_lnchw_normalizes_each_sample_jointly():
    _, _, _, m = build("lnchw", {}, (4, 3, 5))
    y = m(torch.randn(2, 4, 3, 5) * 3 + 1)
    torch.testing.assert_close(y.mean((1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    assert y.mean(1).abs().max() > 1e-3  # not per position


def test_bn_train_mode_uses_batch_statistics():
    _, _, _, m = build("bn", {}, (3, 7))
    y = m.train()(torch.randn(4, 3, 7) * 2 - 1)
    torch.testing.assert_close(y.mean((0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((0, 2), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_rmsnorm_constant_channels():
    _, _, _, m = build("rmsnorm", {}, (4, 3))
    x = torch.full((1, 4, 3), -2.0)
    torch.testing.assert_close(m(x), torch.full((1, 4, 3), -2.0 / (4.0 + 1e-6) ** 0.5))


def test_mhsa_single_token_is_projected_value():
    # With one token the attention weights are exactly 1, so the output is proj(v) = Wp (Wv x) + bp.
    _, _, _, m = build("mhsa", {"heads": 2, "qkv_bias": True}, (4,))
    x = torch.randn(3, 4)
    wv, bv = m.qkv.weight[8:12], m.qkv.bias[8:12]
    expected = (x @ wv.T + bv) @ m.proj.weight.T + m.proj.bias
    torch.testing.assert_close(m(x), expected)


def test_droppath_drops_whole_samples():
    _, _, _, m = build("droppath", {"p": 0.5}, (3, 4))
    torch.manual_seed(0)
    x = torch.rand(64, 3, 4) + 1.0
    y = m.train()(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = torch.isclose(y, 2 * x).flatten(1).all(1)
    assert torch.all(dropped | kept) and dropped.any() and kept.any()
    assert torch.equal(m.eval()(x), x)


def test_permute_and_reshape_shapes():
    _, _, out, m = build("permute", {"dims": [1, 2, 0]}, (3, 5, 7))
    assert out == (5, 7, 3)
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(m(x)[1, 4, 6], x[1, :, 4, 6])
    _, _, out, _ = build("reshape", {"shape": [-1, 5]}, (3, 5, 2))
    assert out == (6, 5)


# ---- errors ------------------------------------------------------------------------------------------

def test_gn_groups_must_divide_channels():
    with pytest.raises(ArchError) as err:
        build("gn", {"groups": 4}, (6, 5, 5))
    assert "groups=4" in err.value.message and "6" in err.value.message


def test_mhsa_heads_must_divide_channels():
    with pytest.raises(ArchError, match="heads=8 does not divide the 12 channels"):
        build("mhsa", {}, (12, 5))
    with pytest.raises(ArchError, match="head_dim=5"):
        build("mhsa", {"head_dim": 5}, (12, 5))


def test_pool_kernel_larger_than_input():
    with pytest.raises(ArchError, match="larger than its padded input"):
        build("maxpool", {"k": 5}, (3, 4, 4))
    with pytest.raises(ArchError, match="larger than its padded input"):
        build("avgpool", {"k": [3, 9]}, (2, 5, 7))
    build("avgpool", {"k": [3, 9], "padding": [0, 1]}, (2, 5, 7))  # padding makes it fit (7 + 2 = 9)
    with pytest.raises(ArchError, match="more than half the kernel"):
        build("avgpool", {"k": 3, "padding": 2}, (2, 9))


def test_pool_needs_spatial_dims():
    with pytest.raises(ArchError, match="needs a 1-D or 2-D or 3-D input"):
        build("avgpool", {"k": 2}, (8,))
    with pytest.raises(ArchError):
        build("gap", {}, (8,))


def test_reshape_must_keep_numel():
    with pytest.raises(ArchError) as err:
        build("reshape", {"shape": [4, 4]}, (3, 5))
    assert "[3, 5]" in err.value.message and "[4, 4]" in err.value.message
    with pytest.raises(ArchError):
        build("reshape", {"shape": [-1, -1]}, (3, 5))
    with pytest.raises(ArchError):
        build("reshape", {"shape": [7, -1]}, (3, 5))


def test_permute_must_be_permutation():
    with pytest.raises(ArchError, match="permutation"):
        build("permute", {"dims": [0, 0, 1]}, (3, 5, 7))
    with pytest.raises(ArchError, match="permutation"):
        build("permute", {"dims": [1, 0]}, (3, 5, 7))


def test_bad_choice_and_probability():
    with pytest.raises(ArchError) as err:
        build("gelu", {"approximate": "tahn"}, (3, 4))
    assert "tanh" in err.value.hint
    with pytest.raises(ArchError, match="must be in"):
        build("dropout", {"p": 1.0}, (3, 4))
    with pytest.raises(ArchError, match="missing required attribute 'p'"):
        build("droppath", {}, (3, 4))


# ---- the taps path of small dilated / grouped 1-D convolutions (TapConv1d) ----------------------------

TAP_CASES = [  # (op, attrs, input shape without batch): dilated, depthwise, multiplier, grouped, strided
    ("conv", {"out": 7, "k": 3, "dilation": 2}, (5, 13)),
    ("conv", {"out": 3, "k": 4, "dilation": 3, "stride": 2, "padding": 2}, (4, 23)),
    ("conv", {"out": 6, "k": 5, "groups": 3, "dilation": 2, "bias": False}, (9, 11)),
    ("dwconv", {"k": 7}, (5, 9)),
    ("dwconv", {"k": 5, "dilation": 3, "stride": 3}, (3, 31)),
    ("dwconv", {"k": 3, "mult": 2, "padding": 0}, (3, 8)),
    ("dwconv", {"k": 9, "dilation": 2}, (64, 20)),  # the MNIST-1D search's size
]


@pytest.mark.parametrize("name, attrs, shape", TAP_CASES, ids=lambda v: str(v))
def test_tapconv1d_matches_conv1d_in_float64_with_gradients(name, attrs, shape):
    from archdsl.ops.conv import TapConv1d

    *_, m = build(name, attrs, shape)
    assert type(m) is TapConv1d
    m = m.double()
    torch.manual_seed(0)
    with torch.no_grad():
        m.bias is None or m.bias.normal_()
    batches = [b for b in (1, 3) if b * shape[0] * shape[1] <= m.max_elements]  # the taps path, not nn.Conv1d's
    assert batches
    for batch in batches:
        x = torch.randn(batch, *shape, dtype=torch.float64, requires_grad=True)
        y = m(x)
        ref = torch.nn.functional.conv1d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        dy = torch.randn_like(y)
        params = [x, m.weight] + ([m.bias] if m.bias is not None else [])
        got = torch.autograd.grad(y, params, dy)
        want = torch.autograd.grad(ref, params, dy)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_tapconv1d_large_inputs_take_the_conv1d_kernels(monkeypatch):
    from archdsl.ops.conv import TapConv1d

    *_, m = build("dwconv", {"k": 5, "dilation": 2}, (8, 40))
    x = torch.randn(2, 8, 40)
    small = m(x)
    monkeypatch.setattr(TapConv1d, "max_elements", x.numel() - 1)
    calls = []
    real = torch.nn.functional.conv1d
    monkeypatch.setattr(torch.nn.functional, "conv1d", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.testing.assert_close(m(x), small, rtol=1e-5, atol=1e-6)
    assert calls  # nn.Conv1d.forward ran


def test_only_dilated_or_grouped_1d_convs_take_the_taps_path():
    from archdsl.ops.conv import TapConv1d

    assert type(build("conv", {"out": 4, "k": 3}, (3, 20))[3]) is torch.nn.Conv1d
    assert type(build("conv", {"out": 4, "k": 3, "dilation": 2}, (3, 9, 9))[3]) is torch.nn.Conv2d
    assert type(build("dwconv", {"k": 3}, (3, 9, 9))[3]) is torch.nn.Conv2d
    assert type(build("conv", {"out": 4, "k": 3, "dilation": 2}, (3, 20))[3]) is TapConv1d
    assert type(build("dwconv", {"k": 3}, (3, 20))[3]) is TapConv1d


def test_padding_rules_by_hand():
    from archdsl.ops.shapes import half_kernel, resolve_padding, same_padding

    # same: the dilated extent d*(k-1) split in two, the odd one out at the end
    assert same_padding((3, 4), (1, 1)) == ((1, 1), (1, 2))
    assert same_padding((5,), (3,)) == ((6, 6),)
    # the default: symmetric and size-keeping for odd k, none for even k (patchify stems)
    assert resolve_padding("conv", None, (7, 4), (1, 4), (2, 1)) == ((6, 6), (0, 0))
    assert resolve_padding("conv", "same", (4,), (1,), (1,)) == ((1, 2),)
    assert half_kernel((5, 4)) == (2, 2)  # DCLS / RepLKNet: k // 2 on both sides, also for even k
