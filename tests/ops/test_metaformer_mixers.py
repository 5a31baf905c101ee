"""MetaFormer mixers and attention variants (archdsl/ops/metaformer_mixers.py, archdsl/ops/attention.py) against independent computations.

The registry tests (tests/test_ops_registry.py) already run every example through shape / params / float64
reference / MACs / gradients; these tests check the ops' defining facts another way: hand-derived parameter
formulas, the relative-bias indexing against a loop, window attention with one window against global
attention, the CvT key/value downsampling, and the shape errors.
"""
from __future__ import annotations

import math

import pytest
import torch

from archdsl.errors import ArchError
from archdsl.ops.registry import get_op
from op_testing import build, check_examples, flops_macs, nparams, shape_error



# ------------------------------------------------------------------------------------------------ poolmix


def test_poolmix_border_averages_only_inside_positions():
    _, _, m = build("poolmix", {}, (1, 4, 5))
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    y = m(x)
    # top-left corner: mean of the 2x2 block in bounds (count_include_pad=False) minus the value itself
    assert y[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 5 + 6) / 4 - 0)
    # interior: mean of the full 3x3 block
    assert y[0, 0, 1, 1].item() == pytest.approx(sum([0, 1, 2, 5, 6, 7, 10, 11, 12]) / 9 - 6)
    # a constant map is a fixed point of the pool, so poolmix gives zero everywhere (the borders included)
    assert torch.allclose(m(torch.full((2, 3, 4, 5), 7.0)), torch.zeros(2, 3, 4, 5))


def test_poolmix_1d_matches_loop():
    spec, _, m = build("poolmix", {"k": 5}, (2, 9))
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    expected = torch.empty_like(x)
    for i in range(9):
        lo, hi = max(0, i - 2), min(9, i + 3)
        expected[..., i] = x[..., lo:hi].mean(-1) - x[..., i]
    torch.testing.assert_close(m.double()(x), expected)
    assert nparams(m) == 0 and spec.macs(None, [(2, 9)], (2, 9)) == 0


def test_poolmix_rejects_even_pool():
    with pytest.raises(ArchError, match="odd"):
        get_op("poolmix").bind([], {"k": 4}, [(3, 5, 5)])


# ------------------------------------------------------------------------------------------------ randmix


def test_randmix_is_a_frozen_row_stochastic_buffer():
    spec, a, m = build("randmix", {"seed": 5}, (3, 4, 5))
    r = m.random_matrix
    assert r.shape == (20, 20) and nparams(m) == 0 == spec.params(a, [(3, 4, 5)])
    assert "random_matrix" in m.state_dict()
    torch.testing.assert_close(r.sum(-1), torch.ones(20))
    assert (r > 0).all()
    # the seed makes it reproducible; softmax of uniform [0, 1) keeps entries within a factor e of each other
    _, _, m2 = build("randmix", {"seed": 5}, (3, 4, 5), seed=9)
    assert torch.equal(r, m2.random_matrix)
    assert (r.amax(-1) / r.amin(-1) < math.e).all()


def test_randmix_mixes_tokens_not_channels():
    _, _, m = build("randmix", {"seed": 1}, (3, 2, 3))
    x = torch.randn(2, 3, 2, 3)
    y = m(x)
    expected = torch.einsum("mn,bcn->bcm", m.random_matrix, x.reshape(2, 3, 6)).reshape(2, 3, 2, 3)
    torch.testing.assert_close(y, expected)
    assert flops_macs(m, x[:1]) == 6 * 6 * 3 == get_op("randmix").macs(None, [(3, 2, 3)], (3, 2, 3))


# ------------------------------------------------------------------------------------------------ sepconv


def test_sepconv_structure_and_params():
    spec, a, m = build("sepconv", {}, (6, 9, 8))
    c, mid = 6, 12
    # pwconv1 C*2C + dwconv 2C*49 + pwconv2 2C*C + StarReLU scale and bias; no conv biases
    assert nparams(m) == c * mid + mid * 49 + mid * c + 2 == spec.params(a, [(6, 9, 8)])
    assert m.dwconv.groups == mid and m.dwconv.padding == (3, 3) and m.pwconv1.bias is None
    x = torch.randn(1, 6, 9, 8)
    assert flops_macs(m, x) == 72 * (c * mid + mid * 49 + mid * c) == spec.macs(a, [(6, 9, 8)], (6, 9, 8))


def test_sepconv_starrelu_is_applied():
    _, _, m = build("sepconv", {"k": 3}, (2, 5))
    x = torch.randn(2, 2, 5, dtype=torch.float64)
    m = m.double()
    h = m.pwconv1(x)
    expected = m.pwconv2(m.dwconv(m.act1.scale * torch.relu(h) ** 2 + m.act1.bias))
    torch.testing.assert_close(m(x), expected)


# ------------------------------------------------------------------------------------------------ relattn


def _bias_loop(table, size):
    positions = [(i, j) for i in range(size[0]) for j in range(size[1])] if len(size) == 2 else \
        [(i,) for i in range(size[0])]
    n = len(positions)
    out = torch.empty(table.shape[1], n, n)
    for q, pq in enumerate(positions):
        for k, pk in enumerate(positions):
            if len(size) == 2:
                row = (pq[0] - pk[0] + size[0] - 1) * (2 * size[1] - 1) + (pq[1] - pk[1] + size[1] - 1)
            else:
                row = pq[0] - pk[0] + size[0] - 1
            out[:, q, k] = table[row]
    return out


@pytest.mark.parametrize("shape", [(4, 3, 4), (4, 5)])
def test_relattn_bias_indexing_matches_loop(shape):
    _, _, m = build("relattn", {"heads": 2}, shape)
    size = shape[1:]
    assert m.rel_table.shape == (math.prod(2 * s - 1 for s in size), 2)
    bias = m.rel_table[m.rel_index].permute(2, 0, 1)
    torch.testing.assert_close(bias, _bias_loop(m.rel_table.detach(), size))
    if len(size) == 2:  # query (0, 0), key (1, 2) on a 3 x 4 grid: row (0-1+2)*7 + (0-2+3) = 8
        torch.testing.assert_close(bias[:, 0, 1 * 4 + 2], m.rel_table[8])


def test_relattn_equals_plain_attention_plus_bias():
    _, _, m = build("relattn", {"heads": 2}, (4, 2, 3))
    m = m.double()
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    t = x.reshape(2, 4, 6).transpose(1, 2)
    q, k, v = (t @ m.qkv.weight.T + m.qkv.bias).split(4, dim=-1)
    bias = _bias_loop(m.rel_table.detach(), (2, 3)).double()
    out = []
    for h in range(2):
        s = q[..., 2 * h:2 * h + 2] @ k[..., 2 * h:2 * h + 2].transpose(1, 2) / math.sqrt(2) + bias[h]
        out.append(torch.softmax(s, -1) @ v[..., 2 * h:2 * h + 2])
    y = m.proj(torch.cat(out, -1)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(m(x), y)


def test_relattn_params_macs_and_gradient():
    spec, a, m = build("relattn", {"heads": 3, "qkv_bias": False}, (6, 3, 5))
    c, n = 6, 15
    assert nparams(m) == 4 * c * c + c + 5 * 9 * 3 == spec.params(a, [(6, 3, 5)])
    assert flops_macs(m, torch.randn(1, 6, 3, 5)) == 4 * n * c * c + 2 * n * n * c == spec.macs(a, [(6, 3, 5)], None)
    m(torch.randn(2, 6, 3, 5)).square().sum().backward()
    assert m.rel_table.grad is not None and m.rel_table.grad.abs().sum() > 0
    _, a2, m2 = build("relattn", {"rel_pos": False, "heads": 1}, (6, 3, 5))
    assert m2.rel_table is None and nparams(m2) == 4 * c * c + 4 * c == get_op("relattn").params(a2, [(6, 3, 5)])


def test_attention_heads_must_divide_channels():
    for name, attrs in [("relattn", {"heads": 4}), ("winattn", {"heads": 4, "window": 2}), ("cvtattn", {"heads": 4})]:
        err = shape_error(name, attrs, (6, 4, 4))
        assert "heads=4" in err.message and "[6, 4, 4]" in err.message


def test_default_heads_use_head_size_32():
    assert build("relattn", {}, (64, 2, 2))[2].heads == 2
    assert build("relattn", {}, (48, 2, 2))[2].heads == 1


# ------------------------------------------------------------------------------------------------ winattn


@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 7)])
def test_winattn_whole_image_window_equals_relattn(shape):
    _, _, w = build("winattn", {"window": list(shape[1:]), "heads": 2}, shape)
    _, _, g = build("relattn", {"heads": 2}, shape, seed=1)
    g.load_state_dict(w.attn.state_dict())
    x = torch.randn(2, *shape, dtype=torch.float64)
    torch.testing.assert_close(w.double()(x), g.double()(x))


def test_winattn_windows_are_independent_and_padded():
    _, _, m = build("winattn", {"window": [2, 3], "heads": 1}, (3, 5, 7))
    m = m.double()
    x = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    y = m(x)
    assert y.shape == x.shape
    # changing a pixel changes only its own window (rows 2-3, cols 3-5 for pixel (3, 4))
    x2 = x.clone()
    x2[0, :, 3, 4] += 1.0
    changed = (m(x2) - y).abs().sum(1)[0] > 0
    expected = torch.zeros(5, 7, dtype=torch.bool)
    expected[2:4, 3:6] = True
    assert torch.equal(changed, expected)
    # the bottom-right window holds 1 x 1 real pixel plus zero padding, which it attends to (Swin, no mask)
    xp = torch.nn.functional.pad(x, (0, 2, 0, 1))
    t = xp[:, :, 4:6, 6:9].reshape(1, 3, 6).transpose(1, 2)
    torch.testing.assert_close(y[0, :, 4, 6], m.attn.attend(t)[0, 0])


def test_winattn_params_macs():
    spec, a, m = build("winattn", {"window": 3, "heads": 2}, (4, 6, 7))
    c = 4
    assert nparams(m) == 4 * c * c + 4 * c + 25 * 2 == spec.params(a, [(4, 6, 7)])
    n_pad = 6 * 9  # 7 is padded to 9
    assert flops_macs(m, torch.randn(1, 4, 6, 7)) == 4 * n_pad * c * c + 2 * n_pad * 9 * c
    assert spec.macs(a, [(4, 6, 7)], (4, 6, 7)) == 4 * n_pad * c * c + 2 * n_pad * 9 * c


def test_winattn_window_larger_than_input_is_an_error():
    err = shape_error("winattn", {"window": 7, "heads": 1}, (4, 5, 9))
    assert "[7, 7]" in err.message and "[5, 9]" in err.message and "relattn" in err.hint
    err = shape_error("winattn", {"window": 8, "heads": 1}, (4, 5))
    assert "[8]" in err.message


# ------------------------------------------------------------------------------------------------ cvtattn


def test_cvtattn_kv_are_downsampled():
    _, _, m = build("cvtattn", {"heads": 2}, (4, 7, 6))
    seen = {}
    def hook(name):
        def record(module, inputs, output):
            seen[name] = output.shape
        return record

    for name in ("q", "k", "v"):
        getattr(m, f"proj_{name}").register_forward_hook(hook(name))
    m.eval()(torch.randn(2, 4, 7, 6))
    assert seen["q"] == (2, 42, 4) and seen["k"] == seen["v"] == (2, 4 * 3, 4)  # 7x6 -> 4x3 with stride 2
    assert m.conv_proj_k.conv.stride == (2, 2) and m.conv_proj_q.conv.stride == (1, 1)


def test_cvtattn_train_mode_matches_reference_with_batch_statistics():
    spec, _, m = build("cvtattn", {"heads": 2, "kv_stride": [2, 3]}, (4, 5, 7))
    m = m.double().train()
    x = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), spec.reference(m, x))


def test_cvtattn_params_macs():
    spec, a, m = build("cvtattn", {"heads": 2}, (4, 11))
    c, nq, nkv = 4, 11, 6
    assert nparams(m) == 3 * (c * 3 + 2 * c + c * c + c) + c * c + c == spec.params(a, [(4, 11)])
    macs = (nq + 2 * nkv) * c * 3 + nq * c * c + 2 * nkv * c * c + 2 * nq * nkv * c + nq * c * c
    assert flops_macs(m.eval(), torch.randn(1, 4, 11)) == macs == spec.macs(a, [(4, 11)], (4, 11))


# ------------------------------------------------------------------------------------------------ registry


META_OPS = ("poolmix", "randmix", "sepconv", "relattn", "winattn", "cvtattn")


@pytest.mark.parametrize("name", META_OPS)
def test_examples_cover_1d_and_2d_and_facts_hold(name):
    check_examples(name)
