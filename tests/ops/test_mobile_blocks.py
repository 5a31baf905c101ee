"""Blocks and frequency / long-convolution mixers (archdsl/ops/mobile_blocks.py, norms.py, structure.py) against independent computations.

The registry tests run every example through shape / params / float64 reference / MACs / gradients; here the
defining facts are checked another way: hand-derived parameter formulas, the global filter as a circular
convolution, SGConv as a direct causal convolution sum with its multiscale kernel, the LSNet aggregation as
the official per-element formula, sub-pixel shuffles as explicit index maps, residual rules, and shape errors.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archdsl.errors import ArchError
from archdsl.ops.registry import get_op
from op_testing import build, check_examples, flops_macs, nparams, shape_error


def grads_reach_all(module, x):
    module.train()(x).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------------- se


def test_se_gates_channels():
    spec, a, m = build("se", {}, (8, 5, 7))
    assert m.fc1.out_features == 2 and nparams(m) == 8 * 2 + 2 + 2 * 8 + 8 == spec.params(a, [(8, 5, 7)])
    m = m.double()
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    s = x.mean((2, 3))
    gate = torch.sigmoid(m.fc2(torch.relu(m.fc1(s))))
    torch.testing.assert_close(m(x), x * gate[:, :, None, None])
    assert flops_macs(m, x[:1]) == 2 * 8 * 2 == spec.macs(a, [(8, 5, 7)], None)
    assert build("se", {"rd": 3}, (8, 9))[2].fc1.out_features == 3


# ------------------------------------------------------------------------------------------------- mbconv


def test_mbconv_params_hand_formula():
    spec, a, m = build("mbconv", {"out": 6, "stride": 2}, (4, 9, 7))
    cin, cout, mid, rd = 4, 6, 16, 1  # SE reduces to int(4 * 0.25) = 1 (EfficientNet: of the block input)
    expected = (cin * mid + 2 * mid) + (mid * 9 + 2 * mid) + (mid * rd + rd + rd * mid + mid) + (mid * cout + 2 * cout)
    assert nparams(m) == expected == spec.params(a, [(4, 9, 7)])
    assert spec.shape(a, [(4, 9, 7)]) == (6, 5, 4)


@pytest.mark.parametrize("attrs,shape,skip", [({}, (4, 7, 6), True), ({"stride": 2}, (4, 7, 6), False),
                                              ({"out": 5}, (4, 9), False), ({"expand": 1, "se": 0.0}, (3, 11), True)])
def test_mbconv_residual_only_for_stride_1_and_same_width(attrs, shape, skip):
    _, _, m = build("mbconv", attrs, shape)
    with torch.no_grad():  # a zero last BN makes the branch output zero: the block returns the shortcut only
        m.bn3.weight.zero_()
        m.bn3.bias.zero_()
    x = torch.randn(2, *shape)
    y = m.eval()(x)
    if skip:
        torch.testing.assert_close(y, x)
    else:
        assert torch.equal(y, torch.zeros_like(y))


def test_mbconv_expand_1_has_no_expansion_conv():
    spec, a, m = build("mbconv", {"expand": 1, "se": 0.0, "k": 5}, (3, 11))
    assert m.conv_pw is None and m.se is None
    assert nparams(m) == (3 * 5 + 6) + (3 * 3 + 6) == spec.params(a, [(3, 11)])


# --------------------------------------------------------------------------------------------------- moat


def test_moat_is_mbconv_then_attention():
    spec, a, m = build("moat", {"out": 6, "stride": 2, "heads": 3}, (4, 7, 6))
    m = m.double().eval()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    shortcut = m.shortcut_conv(F.avg_pool2d(F.pad(x, (0, 0, 0, 1)), 2, 2) * torch.tensor(
        [1.0, 1.0, 1.0, 2.0], dtype=torch.float64)[:, None])  # the last row window holds one real row
    y = F.gelu(m.expand_norm(m.expand_conv(m.pre_norm(x))))
    y = m.shrink_conv(F.gelu(m.depthwise_norm(m.depthwise_conv(y)))) + shortcut
    t = y.flatten(2).transpose(1, 2)
    t = t + m.attention.attend(F.layer_norm(t, (6,), m.attention_norm.weight, m.attention_norm.bias, 1e-5))
    torch.testing.assert_close(m(x), t.transpose(1, 2).reshape(2, 6, 4, 3))
    assert m.attention.size == (4, 3) and m.attention.rel_table.shape == (7 * 5, 3)
    assert m.pre_norm.eps == m.expand_norm.eps == m.depthwise_norm.eps == pytest.approx(1e-3)  # Keras' BN default


def test_moat_params_hand_formula():
    spec, a, m = build("moat", {"out": 6, "stride": 2, "heads": 3}, (4, 7, 6))
    cin, cout, mid = 4, 6, 24
    shortcut = cin * cout + cout
    mbconv = 2 * cin + cin * mid + 2 * mid + mid * 9 + 2 * mid + mid * cout + cout
    attention = 2 * cout + 3 * cout * cout + 3 * cout + cout * cout + cout + 7 * 5 * 3
    assert nparams(m) == shortcut + mbconv + attention == spec.params(a, [(4, 7, 6)])


def test_moat_errors():
    assert "heads=4" in shape_error("moat", {"heads": 4}, (6, 5, 5)).message
    assert "stride 2" in shape_error("moat", {"stride": 2}, (4, 1, 5)).message


# ---------------------------------------------------------------------------------------------------- grn


def test_grn_formula_and_zero_init_identity():
    spec, a, m = build("grn", {}, (3, 4, 5), perturb=0.0)
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(m(x), x)  # gamma = beta = 0 at init (ConvNeXt-V2)
    assert nparams(m) == 6 == spec.params(a, [(3, 4, 5)]) and spec.macs(a, [(3, 4, 5)], None) == 0
    with torch.no_grad():
        m.gamma.copy_(torch.tensor([0.5, -1.0, 2.0]))
        m.beta.copy_(torch.tensor([0.1, 0.2, 0.3]))
    gx = x.pow(2).sum((2, 3)).sqrt()  # (N, C)
    nx = gx / (gx.mean(1, keepdim=True) + 1e-6)
    expected = m.gamma[:, None, None] * x * nx[:, :, None, None] + m.beta[:, None, None] + x
    torch.testing.assert_close(m(x), expected)


# ------------------------------------------------------------------------------------------------- lsconv


def test_lsconv_aggregation_matches_official_formula():
    """SKA (THU-MIG/lsnet ska.py), element by element:
    out[n, c, h, w] = sum_{kh, kw} x[n, c, h-1+kh, w-1+kw] * w[n, c % wc, kh*3+kw, h, w]."""
    _, _, m = build("lsconv", {"groups": 4}, (8, 5, 6))
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    w = torch.randn(2, 2, 9, 5, 6, dtype=torch.float64)
    out = torch.zeros_like(x)
    for c in range(8):
        for h in range(5):
            for col in range(6):
                for kh in range(3):
                    for kw in range(3):
                        hh, ww = h - 1 + kh, col - 1 + kw
                        if 0 <= hh < 5 and 0 <= ww < 6:
                            out[:, c, h, col] += x[:, c, hh, ww] * w[:, c % 2, kh * 3 + kw, h, col]
    torch.testing.assert_close(m.double().ska(x, w), out)


def test_lsconv_params_hand_formula_and_residual():
    spec, a, m = build("lsconv", {}, (16, 7, 9))
    c, half, wc, taps = 16, 8, 2, 9
    lkp = (c * half + 2 * half) + (half * 49 + 2 * half) + (half * half + 2 * half) + (half * taps * wc + taps * wc)
    assert nparams(m) == lkp + 2 * taps * wc + 2 * c == spec.params(a, [(16, 7, 9)])
    with torch.no_grad():  # a zero output BN leaves the official LSConv residual: x
        m.bn.weight.zero_()
        m.bn.bias.zero_()
    x = torch.randn(2, 16, 7, 9)
    torch.testing.assert_close(m.eval()(x), x)


def test_lsconv_channel_errors():
    err = shape_error("lsconv", {"groups": 4}, (6, 5, 5))
    assert "groups=4" in err.message and "[6, 5, 5]" in err.message
    assert "even" in shape_error("lsconv", {"groups": 1}, (3, 5)).message


# ----------------------------------------------------------------------------------------- FFT mixers


def test_aff_macs_are_the_visible_frequency_matmuls():
    spec, a, m = build("aff", {"blocks": 2}, (4, 7, 6))
    bins = 7 * 4
    assert spec.flop_counter_exact is False
    assert flops_macs(m, torch.randn(1, 4, 7, 6)) == 8 * 4 * 2 * bins == spec.macs(a, [(4, 7, 6)], None)
    assert nparams(m) == 2 * 2 * (2 * 2 + 2 + 2 * 2 + 2) == spec.params(a, [(4, 7, 6)])


def test_aff_mask_of_ones_is_identity_plus_residual():
    """With the MLP forced to output 1 + 0i at every frequency, irFFT(1 * rFFT(x)) = x, so aff(x) = 2x."""
    _, _, m = build("aff", {"blocks": 2}, (4, 5, 6), perturb=0.0)
    with torch.no_grad():
        for p in (m.w1, m.b1, m.w2):
            p.zero_()
        m.b2.zero_()
        m.b2[0] += 1.0 + m.sparsity_threshold  # softshrink(1 + lambda) = 1
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m.double()(x), 2 * x)


def test_aff_blocks_must_divide_channels():
    err = shape_error("aff", {"blocks": 3}, (4, 5, 5))
    assert "blocks=3" in err.message and "[4, 5, 5]" in err.message


def test_aff_gradients_reach_all_weights():
    _, _, m = build("aff", {"blocks": 2}, (4, 6, 5))
    grads_reach_all(m, torch.randn(2, 4, 6, 5))


def _circular_conv(x, kernel):
    """y[c, p] = sum_o kernel[c, o] * x[c, (p - o) mod size], by explicit index arithmetic (2-D)."""
    _, c, h, w = x.shape
    y = torch.zeros_like(x)
    for a in range(h):
        for b in range(w):
            rows = [(i - a) % h for i in range(h)]
            cols = [(j - b) % w for j in range(w)]
            y += kernel[:, a, b][None, :, None, None] * x[:, :, rows][:, :, :, cols]
    return y


@pytest.mark.parametrize("size", [(6, 7), (5, 4)])
def test_globalfilter_is_circular_convolution(size):
    spec, a, m = build("globalfilter", {}, (3, *size))
    m = m.double()
    kernel = torch.randn(3, *size, dtype=torch.float64)
    with torch.no_grad():  # the filter of a real spatial kernel: its unnormalized rFFT
        spectrum = torch.fft.rfft2(kernel)
        m.complex_weight.copy_(torch.view_as_real(spectrum))
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), _circular_conv(x, kernel))
    assert nparams(m) == 2 * 3 * size[0] * (size[1] // 2 + 1) == spec.params(a, [(3, *size)])


def test_globalfilter_delta_kernel_shifts_1d():
    _, _, m = build("globalfilter", {}, (2, 9))
    delta = torch.zeros(2, 9, dtype=torch.float64)
    delta[:, 2] = 1.0
    with torch.no_grad():
        m = m.double()
        m.complex_weight.copy_(torch.view_as_real(torch.fft.rfft(delta)))
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    torch.testing.assert_close(m(x), torch.roll(x, 2, dims=-1))


def test_globalfilter_gradient_and_macs():
    spec, a, m = build("globalfilter", {}, (3, 6, 7))
    grads_reach_all(m, torch.randn(2, 3, 6, 7))
    assert spec.macs(a, [(3, 6, 7)], None) == 4 * 3 * 6 * 4 and spec.flop_counter_exact is False


# ------------------------------------------------------------------------------------------------- sgconv


def test_sgconv_default_scales_follow_official_formula():
    spec = get_op("sgconv")
    for length, kd, scales in [(1024, 64, 5), (1000, 64, 5), (64, 64, 1), (65, 64, 2), (20, 64, 1), (37, 4, 5)]:
        a = spec.bind([], {"kernel_dim": kd}, [(2, length)])
        _, kwargs = spec.torch(a, [(2, length)])
        assert kwargs["num_scales"] == scales, (length, kd)
        assert spec.params(a, [(2, length)]) == scales * 2 * kd + 2


def test_sgconv_kernel_structure():
    _, _, m = build("sgconv", {"kernel_dim": 4}, (3, 37), perturb=0.0)
    k = m.full_kernel().detach()
    assert k.shape == (3, 4 * 2 ** 4)  # sub-kernels of 4, 4, 8, 16, 32 taps
    torch.testing.assert_close(k[:, :4], m.kernel_list[0].detach())
    torch.testing.assert_close(k[:, 4:8], 0.5 * m.kernel_list[1].detach())
    # scale 2 is upsampled x2 (linear, align_corners=False): the even taps interpolate 3/4, 1/4
    k2 = 0.25 * m.kernel_list[2].detach()
    torch.testing.assert_close(k[:, 8 + 2], 0.75 * k2[:, 1] + 0.25 * k2[:, 0])
    torch.testing.assert_close(k[:, 8], k2[:, 0])  # clamped at the left edge
    # normalized at init: the full kernel has unit norm per channel
    torch.testing.assert_close((k / m.kernel_norm).norm(dim=-1), torch.ones(3))


def test_sgconv_is_causal_convolution_plus_skip():
    spec, _, m = build("sgconv", {"kernel_dim": 4}, (3, 37))
    m = m.double()
    x = torch.randn(2, 3, 37, dtype=torch.float64)
    k = (m.full_kernel()[:, :37] / m.kernel_norm).detach()
    expected = x * m.D.detach()[:, None]
    for t in range(37):
        for s in range(t + 1):
            expected[..., t] += k[:, s] * x[..., t - s]
    torch.testing.assert_close(m(x), expected)
    # causality: a change at t0 moves only outputs at t >= t0
    x2 = x.clone()
    x2[..., 20] += 1.0
    diff = (m(x2) - m(x)).abs().sum((0, 1))
    assert (diff[:20] < 1e-12).all() and (diff[20:] > 1e-6).all()  # FFT round-off only before t0


def test_sgconv_2d_is_a_raster_sequence():
    _, _, m = build("sgconv", {"kernel_dim": 3}, (2, 5, 6))
    _, _, m1 = build("sgconv", {"kernel_dim": 3}, (2, 30))
    m1.load_state_dict(m.state_dict())
    x = torch.randn(2, 2, 5, 6)
    torch.testing.assert_close(m(x), m1(x.reshape(2, 2, 30)).reshape(2, 2, 5, 6))


def test_sgconv_gradients_and_errors():
    _, _, m = build("sgconv", {"kernel_dim": 4}, (3, 37))
    grads_reach_all(m, torch.randn(2, 3, 37))
    err = shape_error("sgconv", {"kernel_dim": 8, "num_scales": 4}, (2, 20))
    assert "num_scales=4" in err.message and "[2, 20]" in err.message
    with pytest.raises(ArchError, match="2-D"):
        get_op("sgconv").shape(get_op("sgconv").bind([], {}, [(2, 3, 4, 5)]), [(2, 3, 4, 5)])


# ----------------------------------------------------------------------------------------------- subpixel


def test_subpixel_2d_shuffle_map():
    spec, a, m = build("subpixel", {"out": 3}, (2, 5, 7))
    x = torch.randn(2, 2, 5, 7)
    y, conv = m(x), m.conv(x)
    assert y.shape == (2, 3, 10, 14) == (2, *spec.shape(a, [(2, 5, 7)]))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(y[:, c, i::2, j::2], conv[:, c * 4 + i * 2 + j])
    assert nparams(m) == 2 * 12 * 9 + 12 == spec.params(a, [(2, 5, 7)])  # C_in * (C_out r^2) * k^2 + bias
    assert flops_macs(m, x[:1]) == 35 * 12 * 2 * 9 == spec.macs(a, [(2, 5, 7)], None)


def test_subpixel_1d_interleaves():
    spec, a, m = build("subpixel", {"out": 2, "r": 3, "k": 5}, (3, 7))
    x = torch.randn(2, 3, 7)
    y, conv = m(x), m.conv(x)
    assert y.shape == (2, 2, 21)
    for c in range(2):
        for t in range(21):
            torch.testing.assert_close(y[:, c, t], conv[:, c * 3 + t % 3, t // 3])


# ------------------------------------------------------------------------------------------------ registry


MISC_OPS = ("se", "mbconv", "moat", "grn", "lsconv", "aff", "globalfilter", "sgconv", "subpixel")


@pytest.mark.parametrize("name", MISC_OPS)
def test_examples_cover_1d_and_2d_and_facts_hold(name):
    check_examples(name)



def test_emitted_source_runs_standalone():
    """All fifteen mixer ops in one .arch model: compiled, emitted as Python, re-executed, same outputs."""
    from archdsl import api
    from codegen.python_source import emit

    G = api.build("""
model tiny(c = 16) {
  input image[4, 9, 7]
  a: conv(c, k = 3) >> poolmix >> randmix(seed = 1) >> sepconv(k = 3) >> relattn(heads = 2)
  w: winattn(window = 4, heads = 2)
  b: cvtattn(heads = 2) >> mbconv(out = 16, stride = 2) >> moat(heads = 2) >> se >> grn >> lsconv(groups = 4)
  c: aff(blocks = 4) >> globalfilter >> sgconv(kernel_dim = 4) >> subpixel(8)
}
""")
    gm = api.compile(G).eval()
    namespace = {}
    exec(compile(emit(G), "<emitted>", "exec"), namespace)
    model = namespace["Model"]()
    model.load_state_dict(gm.state_dict())
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), gm(x))
    assert G.nodes["c.subpixel"]["shape"] == (8, 10, 8)
