"""tdconv: the layer is the conv with its composed CP / Tucker-2 kernel; parameters and MACs counted by hand;
rank is a search dimension of an .arch file; exact gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl.ir.graph import totals
from tests.ops.op_testing import build, check_examples, gradcheck_module, shape_error


def test_cp_kernel_is_a_sum_of_one_way_filter_products():
    _, _, m = build("tdconv", {"out": 5, "k": [3, 5], "rank": 3, "stride": [1, 2]}, (4, 9, 11))
    m = m.double()
    u = m.last.weight[:, :, 0, 0]  # (out, r)
    v = m.first.weight[:, :, 0, 0]  # (r, in)
    a1 = m.mid[0].weight[:, 0, :, 0]  # (r, 3): taps along H
    a2 = m.mid[1].weight[:, 0, 0, :]  # (r, 5): taps along W
    w = torch.einsum("or,rc,ri,rj->ocij", u, v, a1, a2)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(m(x), F.conv2d(x, w, m.last.bias, stride=(1, 2), padding=(1, 2)))


def test_tucker_kernel_is_the_core_between_two_projections():
    _, _, m = build("tdconv", {"out": 3, "k": 3, "rank": 2, "form": "tucker"}, (4, 10))
    m = m.double()
    w = torch.einsum("oa,abk,bc->ock", m.last.weight[:, :, 0], m.mid[0].weight, m.first.weight[:, :, 0])
    x = torch.randn(2, 4, 10, dtype=torch.float64)
    torch.testing.assert_close(m(x), F.conv1d(x, w, m.last.bias, padding=1))


@pytest.mark.parametrize("attrs,shape,params,macs", [
    # CP: 16*4 (in->r) + 4*(3+3) (one-way filters) + 4*32 (r->out) + 32 (bias)
    ({"out": 32, "k": 3, "rank": 4}, (16, 8, 8), 16 * 4 + 4 * 6 + 4 * 32 + 32, 64 * (16 * 4 + 4 * 3 * 2 + 4 * 32)),
    # Tucker-2: 16*4 + 4*4*9 + 4*32 + 32; the core and the last 1x1 at the stride-2 output (4 x 4)
    ({"out": 32, "k": 3, "rank": 4, "form": "tucker", "stride": 2}, (16, 8, 8), 16 * 4 + 144 + 128 + 32,
     64 * 16 * 4 + 16 * 144 + 16 * 128),
    # CP with stride 2 in 2-D: the H filter runs on 8 -> 4 rows x 8 columns, the W filter on 4 x 4
    ({"out": 8, "k": 3, "rank": 2, "stride": 2, "bias": False}, (4, 8, 8), 4 * 2 + 2 * 6 + 2 * 8,
     64 * 4 * 2 + 32 * 2 * 3 + 16 * 2 * 3 + 16 * 8 * 2),
])
def test_params_and_macs_by_hand(attrs, shape, params, macs):
    spec, a, m = build("tdconv", attrs, shape)
    out = spec.shape(a, [shape])
    assert spec.params(a, [shape]) == params == sum(p.numel() for p in m.parameters())
    assert spec.macs(a, [shape], out) == macs


def test_rank_is_a_search_dimension(tmp_path):
    src = tmp_path / "net.arch"
    src.write_text("model net(r = choice(2, 4, 8)) {\n  input image[3, 8, 8]\n"
                   "  body: tdconv(16, k = 3, rank = r) >> gelu >> gap >> linear(10)\n}\n")
    program = archdsl.parse(src)
    counts = {r: totals(archdsl.build(program, "net", r=r))["params"] for r in (2, 4, 8)}
    # only the tdconv changes: 3*r + 6*r + 16*r parameters
    assert counts[4] - counts[2] == 25 * 2 and counts[8] - counts[4] == 25 * 4


@pytest.mark.parametrize("attrs,shape", [({"out": 3, "k": 3, "rank": 2}, (2, 5, 4)),
                                         ({"out": 2, "k": 3, "rank": 2, "form": "tucker"}, (3, 7))])
def test_gradcheck(attrs, shape):
    _, _, m = build("tdconv", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_examples_agree_with_modules():
    check_examples("tdconv")


def test_kernel_larger_than_input_is_refused():
    err = shape_error("tdconv", {"out": 2, "k": 9, "padding": 0}, (3, 5, 5))
    assert "larger than its padded input" in err.message and "[3, 5, 5]" in err.message
