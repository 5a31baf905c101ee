"""ConvShareViT attention: the shared depthwise projections built as dense C x C convs (the channels tied),
attention against the float64 reference in 1-D and 2-D, parameter / MAC counts by hand, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_testing import build, check_reference_and_gradients, nparams
from torch.utils import flop_counter


def _macs_seen(m, x):
    """MACs as FlopCounterMode counts them, with PyTorch's own attention formula for the CPU fused attention
    kernel, which the counter does not map by itself."""
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query, key, value)

    counter = flop_counter.FlopCounterMode(display=False, custom_mapping={fused: sdpa})
    with torch.no_grad(), counter:
        m(x)
    return counter.get_total_flops() // 2


def test_projection_is_a_depthwise_conv_with_tied_channels():
    """A dense conv whose kernel is the shared kernel on the diagonal (channel c -> c) and zero elsewhere."""
    _, _, m = build("convshare", {"k": 3, "heads": 1}, (4, 5, 6))
    proj = m.q.double()
    dense = torch.zeros(4, 4, 3, 3, dtype=torch.float64)
    for c in range(4):
        dense[c, c] = proj.weight.double()[0, 0]
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    want = F.conv2d(x, dense, proj.bias.double().expand(4), padding=1)
    torch.testing.assert_close(proj(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,attrs,params,macs", [
    # 2-D, C = 6, 5 x 7 = 35 positions, k = 3: four projections of 9 + 1 parameters; each 6 * 35 * 9 MACs,
    # QK^T and AV 35 * 35 * 6 each.
    ((6, 5, 7), {}, 4 * 10, 4 * 6 * 35 * 9 + 2 * 35 * 35 * 6),
    # 1-D, C = 4, L = 11, k = 5: four of 5 + 1; 4 * 4 * 11 * 5 + 2 * 11 * 11 * 4.
    ((4, 11), {"heads": 2, "k": 5}, 4 * 6, 4 * 4 * 11 * 5 + 2 * 11 * 11 * 4),
], ids=["2d", "1d"])
def test_counts_by_hand(shape, attrs, params, macs):
    spec, a, m = build("convshare", attrs, shape)
    assert spec.params(a, [shape]) == params == nparams(m)
    assert spec.macs(a, [shape], shape) == macs == _macs_seen(m.eval(), torch.randn(1, *shape))


@pytest.mark.parametrize("shape,heads", [((4, 7), 2), ((6, 3, 5), 3)], ids=["1d", "2d"])
def test_reference_and_gradients(shape, heads):
    check_reference_and_gradients("convshare", {"heads": heads}, shape)


def test_heads_must_divide_channels():
    from archdsl.errors import ArchError
    from archdsl.ops.registry import get_op
    spec = get_op("convshare")
    a = spec.bind([], {"heads": 4}, [(6, 5, 5)])
    with pytest.raises(ArchError, match="heads"):
        spec.shape(a, [(6, 5, 5)])
