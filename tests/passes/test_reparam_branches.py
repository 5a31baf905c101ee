"""reparam_branches alone: replk / dilreparam mixers and generic sums of conv(+bn) branches -> one conv,
and the sums it must leave alone (with the reason)."""
from __future__ import annotations

import math

import pytest
import torch
from deploy_testing import check_deploy, compile_text, ops, randomize, result, train_steps

from archdsl.ir.graph import totals


def model(body, shape="[4, 12, 10]"):
    return f"model t() {{ input x{shape}\n {body} }}"


MIXERS = {
    "replk": ("replk(9, 3) >> relu", "[4, 12, 10]"),
    "replk-no-small-stride": ("replk(7, 0, stride = 2)", "[4, 12, 10]"),
    "replk-1d": ("replk(9, 5)", "[3, 20]"),
    "replk-rect": ("replk([7, 5], 3, stride = [2, 1])", "[2, 9, 6]"),
    "dilreparam": ("dilreparam(7) >> gelu", "[4, 12, 10]"),
    "dilreparam-1d-13": ("dilreparam(13)", "[2, 17]"),
    "dilreparam-custom": ("dilreparam(9, kernels = [3, 5], dilations = [4, 1])", "[2, 7, 11]"),
}


@pytest.mark.parametrize("body,shape", MIXERS.values(), ids=MIXERS.keys())
def test_mixers_become_one_depthwise_conv(body, shape):
    m = randomize(compile_text(model(body, shape)))
    d = check_deploy(m, select=["reparam_branches"])
    conv = next(n for n, a in d.archdsl_ir.nodes(data=True) if a["op"] == "conv")
    a = d.archdsl_ir.nodes[conv]["attrs"]
    assert a.groups == d.archdsl_ir.nodes[conv]["shape"][0] and a.bias and a.dilation == (1,) * len(a.k)
    assert not any(op in ops(d) for op in ("replk", "dilreparam", "bn"))


def test_replk_params_drop_like_the_official_reparam():
    # C*k^2 + 2C + C*s^2 + 2C  ->  C*k^2 + C (RepLKNet's merge_kernel): 28C fewer for s = 5
    m = compile_text(model("replk(13, 5)", "[8, 16, 16]"))
    d = m.deploy(select=["reparam_branches"])
    assert totals(m.archdsl_ir)["params"] - totals(d.archdsl_ir)["params"] == 28 * 8


REPVGG = """parallel(sum) { conv(8, k = 3, bias = false) >> bn } { conv(8, k = 1, bias = false) >> bn } { bn }
            >> relu"""
GENERIC = {
    "repvgg": REPVGG,
    "residual-conv-bn": "residual { conv(8, k = 3) >> bn }",
    "acnet": "parallel(sum) { conv(6, k = 3) >> bn } { conv(6, k = [1, 3]) >> bn } { conv(6, k = [3, 1]) >> bn }",
    "dilated-in-large": "parallel(sum) { dwconv(7, bias = false) >> bn } { dwconv(3, dilation = 2) >> bn }",
    "grouped-with-identity": "parallel(sum) { conv(8, k = 3, groups = 2) } { conv(8, k = 1, groups = 2) } { bn }",
    "pwconv-and-conv": "parallel(sum) { pwconv(6) >> bn } { conv(6, k = 3, stride = 1) }",
    "strided": "parallel(sum) { conv(6, k = 3, stride = 2, padding = 1) >> bn } { conv(6, k = 1, stride = 2) }",
}


@pytest.mark.parametrize("body", GENERIC.values(), ids=GENERIC.keys())
def test_generic_sum_of_branches_becomes_one_conv(body):
    m = randomize(compile_text(model(body, "[8, 12, 10]")))
    d = check_deploy(m, select=["reparam_branches"])
    res = result(d, "reparam_branches")
    assert len(res.changed) == 1 and res.declined == []
    assert [op for op in ops(d) if op != "relu"] == ["conv"]


def test_repvgg_after_training_fp32():
    m = compile_text(model(REPVGG + " >> conv(4, k = 3, stride = 2) >> bn", "[8, 12, 10]"), dtype=torch.float32)
    train_steps(m)
    d = check_deploy(m, tol=1e-5)
    (node,) = d.archdsl_ir.successors("x")  # conv(3x3 + 1x1 + identity, BNs folded) >> relu >> conv (bn folded)
    assert d.archdsl_ir.nodes[node]["attrs"].ops == ("conv", "relu", "conv")


def test_identity_branch_merges_after_identities_are_gone():
    m = randomize(compile_text(model("parallel(sum) { conv(8, k = 3) } { identity }", "[8, 6, 6]")))
    assert result(check_deploy(m, select=["reparam_branches"]), "reparam_branches").changed == []  # identity op
    d = check_deploy(m, select=["eliminate_identities", "reparam_branches"])
    assert ops(d) == ["conv"]


DECLINED = {
    "strides differ": ("parallel(sum) { conv(6, k = 1, stride = 2) } { conv(6, k = 3, padding = 0) }", "[6, 5, 5]"),
    "groups differ": ("parallel(sum) { conv(6, k = 3) >> bn } { dwconv(3) >> bn }", "[6, 7, 7]"),
    "not linear": ("parallel(sum) { conv(6, k = 3) >> bn } { conv(6, k = 1) >> relu } { bn }", "[6, 7, 7]"),
    "centre": ("parallel(sum) { conv(6, k = 3, stride = 3, padding = 1) } { conv(6, k = 1, stride = 3, padding = 1) }",
               "[6, 7, 7]"),  # equal shapes, but the 1x1 tap sits one cell off the 3x3's centre
    "cannot sit centred": ("parallel(sum) { conv(6, k = 3) } { conv(6, k = 2, padding = \"same\") }", "[6, 7, 7]"),
    "also used": ("s: relu\n a: conv(6, k = 3)\n c: $s >> conv(6, k = 1)\n"
                  "$s >> conv(6, k = 3) >> add($c, $a) >> mul($a)", "[6, 7, 7]"),
    "MACs": ("parallel(sum) { conv(6, k = 3) } { conv(6, k = 3, dilation = 3) }", "[6, 9, 9]"),
}


@pytest.mark.parametrize("body,shape", DECLINED.values(), ids=DECLINED.keys())
def test_declines_with_a_reason(body, shape):
    m = randomize(compile_text(model(body, shape)))
    d = check_deploy(m, select=["reparam_branches"])
    assert ops(d) == ops(m), "nothing may change"


def test_decline_reasons_name_the_problem():
    reasons = {}
    for key, (body, shape) in DECLINED.items():
        m = compile_text(model(body, shape))
        res = result(m.deploy(select=["reparam_branches"]), "reparam_branches")
        reasons[key] = " / ".join(why for _, why in res.declined)
    assert "strides differ" in reasons["strides differ"]
    assert "groups differ" in reasons["groups differ"]
    assert "not linear" in reasons["not linear"]
    assert "also used outside the sum" in reasons["also used"]
    assert "centre" in reasons["cannot sit centred"] or "centred" in reasons["cannot sit centred"]
    assert "MACs" in reasons["MACs"]
    assert "do not centre" in reasons["centre"]


def test_merged_kernel_is_centred_in_the_largest():
    # 5x5 + 3x3: the 3x3 kernel lands in the middle of the 5x5 one (its border cells are the 5x5's alone).
    m = compile_text(model("parallel(sum) { conv(2, k = 5, bias = false) } { conv(2, k = 3, bias = false) }",
                           "[2, 9, 9]"))
    d = m.deploy(select=["reparam_branches"])
    (w5,), (w3,) = [[p for n, p in m.named_parameters() if n.startswith(c)] for c in ("conv.", "conv_1.")]
    w = dict(d.named_parameters())["conv.weight"]
    torch.testing.assert_close(w[..., 1:4, 1:4], w5[..., 1:4, 1:4] + w3)
    torch.testing.assert_close(w[..., 0, :], w5[..., 0, :])
    assert math.prod(w.shape[2:]) == 25
