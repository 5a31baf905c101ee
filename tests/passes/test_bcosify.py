"""bcosify: a trained model's convs and linears become B-cos layers with their weights; at B = 1 with unit-norm
rows and no biases the model computes what it did; the B-cosified model builds, runs and explains itself."""
from __future__ import annotations

import torch
from deploy_testing import compile_text

import archdsl
from archdsl.passes.bcosify import bcosify
from archdsl.passes.weights import split_state

SRC = """model t() { input image[3, 9, 8]
  conv(8, k = 3, bias = false) >> relu >> dwconv(5, bias = false) >> pwconv(6, bias = false) >> relu
  conv(4, k = 3, dilation = 2, bias = false) >> gap >> linear(5, bias = false)
}"""


def _unit_rows(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                p.div_(p.flatten(1).norm(dim=1).reshape(-1, *([1] * (p.dim() - 1))))


def test_at_b1_with_unit_rows_the_model_is_unchanged():
    m = compile_text(SRC)
    _unit_rows(m)
    G = m.archdsl_ir
    B, weights, res = bcosify(G, split_state(G, m.state_dict()), b=1.0)
    assert [B.nodes[n]["op"] for n in ("conv", "dwconv", "pwconv", "linear")] == ["bcos"] * 4
    (node, why), = res.declined
    assert node == "conv_1" and "dilated" in why
    bm = archdsl.compile(B).double()
    bm.load_state_dict({f"{n}.{k}": v for n, s in weights.items() for k, v in s.items()})
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(bm.eval()(x), m.eval()(x))


def test_b2_model_builds_runs_and_every_layer_explains_its_output():
    m = compile_text("model t() { input image[3, 7, 7]\n conv(6, k = 3) >> linear(4) }")
    G = m.archdsl_ir
    B, weights, res = bcosify(G, split_state(G, m.state_dict()), b=2.0)
    assert len(res.changed) == 2 and "bias dropped" in res.changed[0]
    bm = archdsl.compile(B).double()
    bm.load_state_dict({f"{n}.{k}": v for n, s in weights.items() for k, v in s.items()})
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    layer = bm.get_submodule("conv")
    torch.testing.assert_close((layer.dynamic_linear_map(x) @ x.flatten()).reshape(1, 6, 7, 7), layer(x))
    assert B.nodes["conv"]["params"] == 6 * 3 * 9  # the bias is gone


def test_structure_only():
    G = archdsl.build(SRC)
    B, weights, res = bcosify(G, None)
    assert weights is None and len(res.changed) == 4
    assert G.nodes["conv"]["op"] == "conv"  # the input graph is left alone
