"""eliminate_identities and cse alone."""
from __future__ import annotations

import networkx as nx
import pytest
from deploy_testing import check_deploy, compile_text, ops, randomize, result

from archdsl.ir.graph import add_op
from archdsl.ir.verify import verify
from archdsl.passes import run_pipeline


def model(body, shape="[4, 9, 8]"):
    return f"model t() {{ input x{shape}\n {body} }}"


def test_inference_identities_go():
    m = randomize(compile_text(model("conv(6, k = 3) >> dropout(0.5) >> bn >> droppath(0.2) >> identity >> scale(1)"
                                     " >> relu >> scale(2) >> dropout(0.1)")))
    d = check_deploy(m, select=["eliminate_identities"])
    assert ops(d) == ["conv", "bn", "relu", "scale"]
    assert len(result(d, "eliminate_identities").changed) == 5


def test_identity_unblocks_bn_folding():
    m = randomize(compile_text(model("conv(6, k = 3) >> dropout(0.5) >> bn")))
    assert "bn" in ops(m.deploy(select=["fold_bn"]))
    assert ops(check_deploy(m, select=["eliminate_identities", "fold_bn"])) == ["conv"]


def test_graph_that_is_only_identities():
    m = compile_text(model("identity >> dropout(0.3)"))
    d = check_deploy(m, select=["eliminate_identities"])
    assert ops(d) == []


def test_dead_nodes_are_removed():
    G = compile_text(model("relu")).archdsl_ir.copy()
    add_op(G, "dead", "gelu", ["relu"], shape=G.nodes["relu"]["shape"])
    add_op(G, "dead2", "sigmoid", ["dead"], shape=G.nodes["relu"]["shape"])
    with pytest.raises(Exception, match="dead node"):
        verify(G)
    D, _, (res,) = run_pipeline(G, None, select=["eliminate_identities"])
    assert set(D) == {"x", "relu", "output"} and len(res.changed) == 2


# ---- cse ------------------------------------------------------------------------------------------------

def test_cse_merges_equal_stateless_nodes():
    m = randomize(compile_text(model("parallel(sum) { relu >> gap } { relu >> gap } { gelu >> gap }")))
    d = check_deploy(m, select=["cse"])
    assert sorted(ops(d)) == ["add", "gap", "gap", "gelu", "relu"]
    G = d.archdsl_ir
    add = next(n for n in G if G.nodes[n]["op"] == "add")
    assert len(G.in_edges(add)) == 2  # add(r, r, g): one edge carries two argument slots


@pytest.mark.parametrize("body", [
    "parallel(sum) { conv(4, k = 1) } { conv(4, k = 1) }",               # parameters: different convs
    "parallel(sum) { gelu } { gelu(approximate = \"tanh\") }",            # different attrs
    "parallel(sum) { starrelu(learnable = false) } { starrelu(learnable = false) }",  # buffers: state
], ids=["params", "attrs", "buffers"])
def test_cse_leaves_distinct_nodes(body):
    m = randomize(compile_text(model(body)))
    d = check_deploy(m, select=["cse"])
    assert result(d, "cse").changed == [] and ops(d) == ops(m)


def test_cse_commutes_two_operand_add():
    G = compile_text(model("s: sigmoid\n a: relu\n b: $s >> gelu\n add($a)")).archdsl_ir.copy()
    shape = G.nodes["a.relu"]["shape"]
    out = next(iter(G.predecessors("output")))  # add(b, a)
    add_op(G, "swapped", "add", ["a.relu", "b.gelu"], shape=shape)
    add_op(G, "both", "mul", [out, "swapped"], shape=shape)
    G.remove_edge(out, "output")
    G.add_edge("both", "output", args=(0,))
    D, _, (res,) = run_pipeline(G, None, select=["cse"])
    assert len(res.changed) == 1 and nx.is_directed_acyclic_graph(D)
