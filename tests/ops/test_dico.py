"""DiCo's compact channel attention: parameter and MAC formulas against counts done by hand from the official
block's layer list, the module against its float64 reference in 1-D and 2-D, and gradients."""
from __future__ import annotations

import pytest
import torch
from op_testing import build, check_examples, check_reference_and_gradients, flops_macs, nparams

from archdsl.ops.registry import get_op


def test_examples_agree_with_modules():
    check_examples("dico")


@pytest.mark.parametrize("shape,k,params,macs", [
    # C = 6 on 5 x 7: pw1, ca, pw3 each 6*6 + 6 = 42; depthwise 3x3: 6*9 + 6 = 60.
    # MACs: 35 positions * (36 + 54 + 36) + 36 for the attention's conv on the pooled vector.
    ((6, 5, 7), 3, 3 * 42 + 60, 35 * (36 + 54 + 36) + 36),
    # C = 5 on length 11, k = 5: three 5*5 + 5 = 30; depthwise 5*5 + 5 = 30; 11 * (25 + 25 + 25) + 25.
    ((5, 11), 5, 3 * 30 + 30, 11 * (25 + 25 + 25) + 25),
], ids=["2d", "1d"])
def test_counts_by_hand(shape, k, params, macs):
    spec, a, m = build("dico", {"k": k}, shape)
    assert spec.params(a, [shape]) == params == nparams(m)
    assert spec.macs(a, [shape], shape) == macs == flops_macs(m.eval(), torch.randn(1, *shape))


@pytest.mark.parametrize("shape", [(4, 9), (3, 5, 6)], ids=["1d", "2d"])
def test_reference_and_gradients(shape):
    check_reference_and_gradients("dico", {}, shape)


def test_the_gate_depends_on_the_whole_input():
    """Channel attention pools every position: changing one far position changes the output everywhere."""
    _, _, m = build("dico", {}, (4, 9, 9))
    m = m.double().eval()
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 8, 8] += 3.0
    with torch.no_grad():
        diff = (m(x) - m(x2))[..., 0, 0].abs().max()  # (0, 0) is outside the 3x3 reach of (8, 8)
    assert diff > 1e-6


def test_even_kernel_refused():
    spec = get_op("dico")
    with pytest.raises(Exception, match="odd"):
        spec.bind([], {"k": 4}, [(4, 5, 5)])
