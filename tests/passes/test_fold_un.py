"""fold_un: Unified Normalization's deploy form (a fixed affine map) merged into the linear / conv beside it, so
the node vanishes and deploy computes what the trained module computes in eval mode."""
from __future__ import annotations

import pytest
import torch
from deploy_testing import check_deploy, compile_text, ops, result, train_steps

from archdsl.ops.unified_norm import UnifiedNorm


def _model(body, shape):
    return f"model t() {{ input x{shape}\n {body} }}"


FOLDS = {
    "pre-norm-linear-tokens": ("un(window = 2, warmup = 1) >> linear(6) >> gelu", "[5, 9]"),
    "post-norm-linear-tokens": ("linear(6, bias = false) >> un(window = 2, warmup = 0)", "[5, 9]"),
    "pre-norm-1x1-conv-image": ("un(window = 3, warmup = 0) >> conv(4, k = 1, groups = 1)", "[3, 5, 7]"),
    "patchify-groups": ("un(warmup = 0) >> conv(4, k = 2, stride = 2, padding = 0, groups = 2)", "[4, 5, 7]"),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("body,shape", FOLDS.values(), ids=FOLDS.keys())
def test_un_folds_into_its_linear(body, shape, dtype, tol):
    m = compile_text(_model(body, shape), dtype=dtype)
    train_steps(m, steps=5)
    un = next(mod for mod in m.modules() if isinstance(mod, UnifiedNorm))
    assert not torch.allclose(un.running_var, torch.ones_like(un.running_var))  # trained statistics
    d = check_deploy(m, select=["fold_un"], tol=tol)
    assert "un" not in ops(d) and len(result(d, "fold_un").changed) == 1
    assert not any(isinstance(mod, UnifiedNorm) for mod in d.modules())


def test_un_vanishes_in_the_full_deploy_pipeline():
    m = compile_text(_model("residual { un(warmup = 0) >> linear(10) >> gelu >> linear(5) }", "[5, 9]"),
                     dtype=torch.float32)
    train_steps(m, steps=4)
    d = check_deploy(m, tol=1e-5)
    assert "un" not in ops(d)


@pytest.mark.parametrize("body,why", [
    ("un >> relu", "not a linear / conv"),
    ("un >> conv(4, k = 3)", "zero-pads"),
], ids=["before relu", "before padded conv"])
def test_un_fold_declines(body, why):
    m = compile_text(_model(body, "[4, 9, 8]"))
    train_steps(m, steps=2)
    d = check_deploy(m, select=["fold_un"])
    assert ops(d) == ops(m)
    (node, reason), = result(d, "fold_un").declined
    assert why in reason, reason
