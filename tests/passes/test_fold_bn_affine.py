"""fold_bn and fold_affine alone: BN / layer scale / constant scale folded into the neighbouring conv or
linear, and the cases they must leave alone."""
from __future__ import annotations

import pytest
import torch
from deploy_testing import check_deploy, compile_text, ops, randomize, result, train_steps


def model(body, shape="[4, 9, 8]"):
    return f"model t() {{ input x{shape}\n {body} }}"


AFTER = {
    "conv": ("conv(6, k = 3, bias = false) >> bn >> relu", "[4, 9, 8]"),
    "conv-bias-strided-groups": ("conv(6, k = 3, stride = 2, groups = 2) >> bn", "[4, 9, 8]"),
    "conv-uneven-padding": ("conv(5, k = 4, padding = \"same\", bias = false) >> bn", "[4, 9, 8]"),
    "dwconv": ("dwconv(5, bias = false) >> bn", "[4, 9, 8]"),
    "pwconv-1d": ("pwconv(6) >> bn", "[4, 11]"),
    "linear-vector": ("linear(6) >> bn", "[5]"),
    "linear-channels": ("linear(6, bias = false) >> bn", "[4, 5, 3]"),
}


@pytest.mark.parametrize("body,shape", AFTER.values(), ids=AFTER.keys())
def test_bn_after_conv_or_linear_folds(body, shape):
    m = randomize(compile_text(model(body, shape)))
    d = check_deploy(m, select=["fold_bn"])
    assert "bn" not in ops(d) and len(result(d, "fold_bn").changed) == 1


BEFORE = {
    "pointwise": "relu >> bn >> conv(6, k = 1)",
    "patchify-groups": "relu >> bn >> conv(6, k = 2, stride = 2, padding = 0, groups = 2, bias = false)",
    "linear": "relu >> bn >> linear(3)",
}


@pytest.mark.parametrize("body", BEFORE.values(), ids=BEFORE.keys())
def test_bn_before_padding_free_conv_folds(body):
    m = randomize(compile_text(model(body)))
    d = check_deploy(m, select=["fold_bn"])
    assert ops(d) == ["relu", ops(m)[-1]]


def test_bn_folds_after_training_fp32():
    m = compile_text(model("conv(8, k = 3, bias = false) >> bn >> relu >> bn >> conv(8, k = 1) >> bn >> gap"
                           " >> linear(5) >> bn"), dtype=torch.float32)
    train_steps(m)
    d = check_deploy(m, select=["fold_bn"], tol=1e-5)
    assert "bn" not in ops(d)


DECLINED = {
    "conv output used twice": ("c: conv(6, k = 3)\n bn >> add($c)", "'c.conv' is also read by"),
    "after relu, before padded conv": ("relu >> bn >> conv(6, k = 3)", "zero-pads"),
    "bn before pooling": ("relu >> bn >> gap", "not a conv / linear"),
}


@pytest.mark.parametrize("body,why", DECLINED.values(), ids=DECLINED.keys())
def test_bn_fold_declines(body, why):
    m = randomize(compile_text(model(body)))
    d = check_deploy(m, select=["fold_bn"])
    assert ops(d) == ops(m)
    (node, reason), = result(d, "fold_bn").declined
    assert node.endswith("bn") and why in reason, reason


# ---- fold_affine ----------------------------------------------------------------------------------------

SCALES = {
    "layerscale-linear": ("linear(6) >> layerscale(0.5)", "[4, 5, 3]"),
    "resscale-conv": ("conv(6, k = 3) >> resscale", "[4, 9, 8]"),
    "scale-conv-no-bias": ("conv(6, k = 3, bias = false) >> scale(-2.5)", "[4, 9, 8]"),
    "layerscale-dwconv-1d": ("dwconv(3) >> layerscale(1e-3)", "[4, 11]"),
}


@pytest.mark.parametrize("body,shape", SCALES.values(), ids=SCALES.keys())
def test_scale_after_conv_or_linear_folds(body, shape):
    m = randomize(compile_text(model(body, shape)))
    d = check_deploy(m, select=["fold_affine"])
    assert len(ops(d)) == 1 and len(result(d, "fold_affine").changed) == 1
    if "bias = false" in body:
        assert not any(k.endswith("bias") for k in d.state_dict())


def test_conv_bn_layerscale_chain_folds_to_one_conv():
    m = compile_text(model("conv(6, k = 3) >> bn >> layerscale(1e-2) >> relu"), dtype=torch.float32)
    train_steps(m)
    d = check_deploy(m, select=["fold_bn", "fold_affine"], tol=1e-5)
    assert ops(d) == ["conv", "relu"]


@pytest.mark.parametrize("body,why", [
    ("relu >> layerscale", "not a conv / linear"),
    ("c: conv(4, k = 1)\n layerscale >> add($c)", "is also read by"),
], ids=["after relu", "conv output used twice"])
def test_scale_fold_declines(body, why):
    m = randomize(compile_text(model(body)))
    d = check_deploy(m, select=["fold_affine"])
    assert ops(d) == ops(m)
    assert why in result(d, "fold_affine").declined[0][1]
