"""group_fusion alone: which groups form, why each ends, how they run (torch and emitted Python)."""
from __future__ import annotations

import importlib.util
import re

import torch
from deploy_testing import check_deploy, compile_text, example_input, randomize, result

import archdsl
from archdsl.ops.fused import chain

from codegen.python_source import emit

CONVNEXT_BLOCK = """model t() { input x[8, 7, 6]
  stem: conv(8, k = 2, stride = 1, padding = 0) >> ln(eps = 1e-6)
  block: repeat 2 { residual { dwconv(7) >> ln(eps = 1e-6) >> linear(32) >> gelu >> linear(8) >> layerscale(0.1) } }
  head: gap >> linear(3)
}"""

RESNET_BLOCK = """model t() { input x[8, 6, 6]
  residual { conv(8, k = 3) >> bn >> relu >> conv(8, k = 3) >> bn } >> relu
  parallel(sum) { conv(4, k = 1) >> bn } { conv(4, k = 3) >> relu >> conv(4, k = 1) } >> relu >> gap
}"""


def fused_nodes(d):
    G = d.archdsl_ir
    return {n: G.nodes[n]["attrs"] for n in G if G.nodes[n]["op"] == "fused"}


def test_convnext_block_is_one_group():
    m = randomize(compile_text(CONVNEXT_BLOCK))
    d = check_deploy(m, select=["fold_affine", "group_fusion"])
    groups = {n: a.ops for n, a in fused_nodes(d).items()}
    block = ("dwconv", "ln", "linear", "gelu", "linear", "add")
    assert groups == {"stem.fused": ("conv", "ln"), "block0.fused": block, "block1.fused": block}
    a = fused_nodes(d)["block0.fused"]
    assert a.names == ("dwconv", "ln", "linear", "gelu", "linear_1", "add")
    assert a.args == (("in0",), ("dwconv",), ("ln",), ("linear",), ("gelu",), ("in0", "linear_1"))
    assert a.boundary == "its result is read 2 times ('block1.dwconv', 'block1.add')"
    assert fused_nodes(d)["block1.fused"].boundary == "its reader 'head.gap' (gap) is not fusable"
    assert chain(a)[-1] == ("add", {}, (0,), "add")  # the form kernel backends take
    assert set(d.state_dict()) >= {"block0.fused.linear.weight", "block0.fused.linear_1.bias", "block1.fused.ln.weight"}


def test_resnet_blocks_and_the_chain_rule():
    m = randomize(compile_text(RESNET_BLOCK))
    d = check_deploy(m, select=["fold_bn", "group_fusion"])
    assert sorted(a.ops for a in fused_nodes(d).values()) == [("conv", "relu", "conv", "add", "relu")] * 2
    # add(projection conv, conv >> relu >> conv): the longer chain continues, the 1x1 projection stays alone
    (node, why), = result(d, "group_fusion").declined
    assert node == "conv_2" and why == ("not fused: its reader 'add_1' (add) continues the chain of 'conv_4' "
                                        "(a group is a chain)")


def test_elementwise_chain_and_output_boundary():
    m = randomize(compile_text("model t() { input x[4, 5, 3]\n gap >> relu >> scale(2) >> sigmoid }"))
    d = check_deploy(m, select=["group_fusion"])
    (a,) = fused_nodes(d).values()
    assert a.ops == ("relu", "scale", "sigmoid") and a.boundary == "its result is the graph output"


def test_precision_change_ends_a_group():
    # structure only (no weights): deploying lowered-precision weights is refused until the cast passes exist
    from archdsl.passes.pipeline import run_pipeline

    G = archdsl.build("model t() { input x[4, 6]\n conv(4, k = 3) >> @precision(bf16) { relu >> sigmoid } >> tanh }")
    D, _, results = run_pipeline(G, None, select=["group_fusion"])
    (a,) = [D.nodes[n]["attrs"] for n in D if D.nodes[n]["op"] == "fused"]
    assert a.ops == ("relu", "sigmoid") and "precision" in a.boundary
    (fusion,) = [r for r in results if r.name == "group_fusion"]
    assert any("precision" in why for _, why in fusion.declined)


def test_emitted_deploy_source_runs_and_matches(tmp_path):
    m = randomize(compile_text(RESNET_BLOCK, dtype=torch.float32))
    d = m.deploy()
    path = tmp_path / "net.py"
    path.write_text(emit(d.archdsl_ir))
    spec = importlib.util.spec_from_file_location("net_deploy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Model()
    net.load_state_dict(d.state_dict())
    x = example_input(d)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), d(x))
    text = path.read_text()  # readable fused helpers: a class with named members and a forward, no steps tuple
    assert "FusedGroup" not in text and re.search(r"class Fused\w+\(nn\.Module\)", text)
    assert re.search(r"def forward\(self, x, y\):", text)  # the group that merges the shortcut reads two inputs


def test_a_group_is_not_named_after_a_scope_that_holds_other_nodes():
    # the group spans the scopes `fused` and `back`, so it sits at the top and would be named `fused`: the
    # scope of the label `fused`, whose transpose stays outside the group and would be looked up inside it
    m = randomize(compile_text("""model t() { input x[6, 5]
  fused: transpose >> linear(4) >> relu
  back: linear(5)
  transpose
}"""))
    d = check_deploy(m, select=["group_fusion"])
    assert set(fused_nodes(d)) == {"fused_1"} and "fused.transpose" in d.archdsl_ir
