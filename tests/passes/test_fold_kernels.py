"""fold_kernels alone: dcls (bilinear, Gaussian, shared positions, even kernels) and wconv -> conv."""
from __future__ import annotations

import pytest
import torch
from deploy_testing import check_deploy, compile_text, ops, randomize, result, train_steps

CASES = {
    "dcls-2d": "dcls(7, count = 3)",
    "dcls-gauss-groups": "dcls(5, count = 2, out = 6, groups = 2, interp = \"gauss\")",
    "dcls-even-same": "dcls(4, count = 2, padding = \"same\")",
    "dcls-stride": "dcls([5, 3], count = 3, stride = 2, out = 4)",
    "wconv": "wconv(6, k = 5, density = [0.2, 0.8], bias = true)",
    "wconv-dilated": "wconv(4, k = 3, density = [0.5], dilation = 2)",
    "wconv-even-same": "wconv(4, k = 4, padding = \"same\", groups = 2)",
}


@pytest.mark.parametrize("mixer", CASES.values(), ids=CASES.keys())
def test_fold_kernels_2d(mixer):
    m = randomize(compile_text(f"model t() {{ input image[4, 11, 9]\n {mixer} >> relu }}"))
    d = check_deploy(m, select=["fold_kernels"])
    assert ops(d) == ["conv", "relu"]
    assert len(result(d, "fold_kernels").changed) == 1
    assert not any(k.endswith((".P", ".SIG", ".Phi")) for k in d.state_dict())


def test_fold_kernels_1d_and_shared_positions_after_training():
    # Two DCLS convs tie their positions P (one tensor); SGD moves them; each becomes its own dense conv.
    src = """model t() { input seq[4, 30]
      block: repeat 2 { dcls(9, count = 3, share = "s", interp = "gauss") >> gelu }
      wconv(5, k = 5, density = [0.3, 0.9]) }"""
    m = compile_text(src, dtype=torch.float32)
    p0 = m.get_submodule("block0.dcls").P.detach().clone()
    train_steps(m)
    assert m.get_submodule("block0.dcls").P is m.get_submodule("block1.dcls").P
    assert not torch.equal(p0, m.get_submodule("block0.dcls").P)
    d = check_deploy(m, select=["fold_kernels"], tol=1e-5)
    assert ops(d).count("conv") == 3
    assert not any(d_.get("share") for _, d_ in d.archdsl_ir.nodes(data=True))


def test_fold_kernels_ignores_plain_convs():
    m = compile_text("model t() { input image[3, 8, 8]\n conv(4, k = 3) >> dwconv(5) }")
    d = check_deploy(m, select=["fold_kernels"])
    assert result(d, "fold_kernels").changed == []
