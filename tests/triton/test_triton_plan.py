"""Planning fused groups into kernels (no kernel runs; no triton needed): which stages, which fusions, and
NotLowerable with the member and the reason."""
from __future__ import annotations

import pytest

from archdsl.ir.graph import add_op, new_graph
from codegen.triton.lower import group_from_nodes, lower_group
from codegen.triton.plan import MAX_STEPS, NotLowerable, plan

CONVNEXT = [("dwconv", {"k": 7}), ("ln", {"eps": 1e-6}), ("linear", {"out": 20}), ("gelu",),
            ("linear", {"out": 5}), ("layerscale", {"init": 1e-6}), ("add", {}, (0,))]


def kinds(members, shapes, **kw):
    return [s.kind for s in plan(members, shapes, **kw)[1]]


def test_convnext_block_is_two_kernels():
    members, stages = plan(CONVNEXT, [(5, 7, 9)])
    assert [s.kind for s in stages] == ["dwconv", "mlp"]
    dw, mlp = stages
    assert dw.consts["norm"] == "ln" and dw.consts["k"] == (7, 7) and dw.consts["padding"] == ((3, 3), (3, 3))
    assert set(dw.params) == {"weight", "bias", "norm_weight", "norm_bias"}
    assert mlp.consts["act"] == "gelu" and set(mlp.params) == {"w1", "b1", "w2", "b2"}
    assert [op for op, _ in mlp.steps] == ["mul", "add"] and str(mlp.steps[1][1]) == "input0"
    assert dw.members + mlp.members == list(range(len(CONVNEXT)))


def test_fusions_decline_when_they_do_not_fit():
    # an activation between dwconv and norm: the norm runs apart (its own kernel)
    assert kinds([("dwconv", {"k": 3}), ("gelu",), ("ln",)], [(5, 7, 9)]) == ["dwconv", "norm"]
    # too many channels for a (positions x channels) tile with the conv: separate norm kernel
    assert kinds([("dwconv", {"k": 3}), ("ln",)], [(2048, 5, 5)]) == ["dwconv", "norm"]
    # MLP wider than registers hold: two linear kernels, the norm alone
    assert kinds([("ln",), ("linear", {"out": 1536}), ("gelu",), ("linear", {"out": 384})], [(384, 7, 7)]) == \
        ["norm", "linear", "linear"]
    # StarReLU is three steps (relu2, * s, + b), not one activation: no MLP fusion
    assert kinds([("linear", {"out": 20}), ("starrelu",), ("linear", {"out": 5})], [(5, 7)]) == ["linear", "linear"]


def test_norm_prologue_and_vectors():
    assert kinds([("rmsnorm",), ("linear", {"out": 16}), ("silu",), ("linear", {"out": 4})], [(8,)]) == ["mlp"]
    assert kinds([("ln",), ("relu",)], [(8,)]) == ["norm"]


def test_conv_forms():
    assert kinds([("conv", {"out": 6, "k": 1})], [(3, 5, 5)]) == ["linear"]
    assert kinds([("conv", {"out": 6, "k": 5, "groups": 6})], [(6, 9, 9)]) == ["dwconv"]
    assert kinds([("pwconv", {"out": 6})], [(3, 5, 5)]) == ["linear"]
    assert kinds([("dwconv", {"k": 3, "mult": 2})], [(3, 5, 5)]) == ["dwconv"]


def test_elementwise_chains_and_overflow():
    assert kinds([("mul", {}, (1,)), ("add", {}, (2,)), ("gelu",)], [(5, 7), (5, 1), (5, 7)]) == ["elementwise"]
    # a gate that broadcasts up: the chain input is (C, 1, 1), the result (C, H, W)
    members, stages = plan([("sigmoid",), ("mul", {}, (1,))], [(5, 1, 1), (5, 7, 9)])
    assert stages[0].shape == (5, 7, 9)
    # a broadcast step after a producer cannot ride its tile: new elementwise stage
    assert kinds([("linear", {"out": 5}), ("mul", {}, (1,))], [(5, 1, 1), (5, 7, 9)]) == ["linear", "elementwise"]
    long = [("relu",)] * (MAX_STEPS + 2)
    assert kinds(long, [(5,)]) == ["elementwise", "elementwise"]
    # a linear's bias takes one of the slots
    assert kinds([("linear", {"out": 5})] + [("relu",)] * MAX_STEPS, [(5,)]) == ["linear", "elementwise"]
    assert kinds([("identity",), ("dropout", {"p": 0.1})], [(5, 3)]) == ["elementwise"]


@pytest.mark.parametrize("members, shapes, kw, words", [
    ([("bn",)], [(5, 7, 7)], {}, ["member 0 (bn)", "folded"]),
    ([("gn", {"groups": 1})], [(5, 7, 7)], {}, ["GroupNorm"]),
    ([("conv", {"out": 6, "k": 3})], [(3, 7, 7)], {}, ["member 0", "dense convs stay on cuDNN"]),
    ([("pwconv", {"out": 6, "groups": 3})], [(3, 7, 7)], {}, ["grouped"]),
    ([("dwconv", {"k": 3})], [(3, 5, 5, 5)], {}, ["1-D or 2-D"]),
    ([("relu",), ("mhsa", {"heads": 1})], [(4, 5, 5)], {}, ["member 1 (mhsa)", "no Triton lowering"]),
    ([("nosuchop",)], [(4,)], {}, ["member 0", "unknown op"]),
    ([("dwconv", {"k": 3, "strid": 2})], [(4, 5, 5)], {}, ["member 0", "strid"]),
    ([("add", {}, (3,))], [(4,)], {}, ["group input 3"]),
    ([("relu",)], [(4,)], {"precision": "fp8"}, ["precision fp8"]),
])
def test_not_lowerable_says_which_member_and_why(members, shapes, kw, words):
    with pytest.raises(NotLowerable) as e:
        plan(members, shapes, **kw)
    for w in words:
        assert w in e.value.reason


def _block_ir():
    G = new_graph("block")
    add_op(G, "x", "input", [], shape=(5, 7, 9))
    add_op(G, "dw", "dwconv", ["x"], attrs={"k": (7, 7), "stride": (1, 1), "padding": None, "dilation": (1, 1),
                                             "bias": True, "mult": 1}, shape=(5, 7, 9))
    add_op(G, "act", "gelu", ["dw"], attrs={"approximate": "none"}, shape=(5, 7, 9))
    add_op(G, "res", "add", ["act", "x"], shape=(5, 7, 9), precision="bf16")
    add_op(G, "out", "output", ["res"])
    G.graph.update(input="x", output="out")
    return G


def test_group_from_nodes_reads_a_chain_of_the_ir():
    G = _block_ir()
    g = group_from_nodes(G, ["dw", "act", "res"])
    assert g["inputs"] == ["x"] and g["shapes"] == [(5, 7, 9)] and g["precision"] == "bf16"
    assert [(m.op, m.inputs, m.name) for m in g["members"]] == [("dwconv", (), "dw"), ("gelu", (), "act"),
                                                                 ("add", (0,), "res")]
    lowered = lower_group(**{k: v for k, v in g.items() if k != "inputs"}, name="block")
    assert "dwconv" in lowered.describe() and "add(input0)" in lowered.describe()


def test_group_from_nodes_refuses_what_is_not_a_chain():
    G = _block_ir()
    with pytest.raises(NotLowerable, match="used outside the group"):
        group_from_nodes(G, ["dw", "act"][:1] + ["res"])  # 'dw' -> 'res' skips 'act', which reads dw
    G2 = _block_ir()
    add_op(G2, "tap", "relu", ["act"], shape=(5, 7, 9))
    with pytest.raises(NotLowerable, match="used outside"):
        group_from_nodes(G2, ["dw", "act", "res"])


# ---- splitting: members without a kernel run in torch, the runs around them become kernels ------------------

from codegen.triton.plan import plan_split  # noqa: E402

DENSE = ("conv", {"out": 6, "k": 3, "stride": 2})  # (3, 9, 7) -> (6, 5, 4): no Triton kernel


def layout_of(segments):
    """[("torch", members) | (kernel kinds, members)] of a split plan."""
    return [("torch" if s.torch else tuple(st.kind for st in s.stages), s.members) for s in segments]


def test_split_dense_conv_at_the_head_keeps_its_epilogue_in_one_kernel():
    members, segs = plan_split([DENSE, ("gelu",), ("layerscale",), ("add", {}, (1,))], [(3, 9, 7), (6, 5, 4)])
    assert layout_of(segs) == [("torch", [0]), (("elementwise",), [1, 2, 3])]
    assert "member 0 (conv" in segs[0].reasons[0] and "dense convs" in segs[0].reasons[0]
    (ew,) = segs[1].stages
    assert [(op, str(ref)) for op, ref in ew.steps] == [("gelu", "None"), ("mul", "2.gamma"), ("add", "input1")]
    assert ew.members == [1, 2, 3] and ew.shape == (6, 5, 4)


def test_split_dense_conv_in_the_middle_then_norm_and_mlp():
    members = [("dwconv", {"k": 5}), ("relu",), ("conv", {"out": 3, "k": 3}), ("ln",), ("linear", {"out": 12}),
               ("gelu",), ("linear", {"out": 3}), ("add", {}, (0,))]
    _, segs = plan_split(members, [(3, 9, 7)])
    with pytest.raises(NotLowerable):  # the whole group (plan) is still refused
        plan(members, [(3, 9, 7)])
    assert layout_of(segs) == [(("dwconv",), [0, 1]), ("torch", [2]), (("mlp",), [3, 4, 5, 6, 7])]
    mlp = segs[2].stages[0]
    assert mlp.consts["norm"] == "ln" and mlp.members == [3, 4, 5, 6, 7]
    assert [(op, str(ref)) for op, ref in mlp.steps] == [("add", "input0")]  # the group's input 0, not the conv's


def test_split_1d_and_what_merges():
    # torch members and no-op runs between them are one torch segment; a lone dropout computes nothing
    members = [("conv", {"out": 4, "k": 3}), ("dropout", {"p": 0.1}), ("gn", {"groups": 2}), ("silu",),
               ("bn",), ("scale", {"value": 2.0})]
    _, segs = plan_split(members, [(3, 11)])
    assert layout_of(segs) == [("torch", [0, 1, 2]), (("elementwise",), [3]), ("torch", [4]),
                               (("elementwise",), [5])]
    assert "nothing to compute" in segs[0].reasons[1] and "GroupNorm" in segs[0].reasons[2]


def test_split_with_nothing_left_for_a_kernel_or_a_broken_group():
    with pytest.raises(NotLowerable) as e:
        plan_split([DENSE, ("dropout", {"p": 0.1}), ("bn",)], [(3, 9, 7)])
    assert "member 0 (conv" in e.value.reason and "member 2 (bn)" in e.value.reason
    for members, shapes, kw, words in [([DENSE, ("relu",)], [(3, 9, 7)], {"precision": "fp8"}, "precision fp8"),
                                       ([DENSE, ("add", {}, (2,))], [(3, 9, 7)], {}, "group input 2"),
                                       ([DENSE, ("nosuchop",)], [(3, 9, 7)], {}, "member 1")]:
        with pytest.raises(NotLowerable, match=words):
            plan_split(members, shapes, **kw)


def test_split_of_a_lowerable_group_is_its_plan():
    _, stages = plan(CONVNEXT, [(5, 7, 9)])
    _, segs = plan_split(CONVNEXT, [(5, 7, 9)])
    assert layout_of(segs) == [(("dwconv", "mlp"), list(range(len(CONVNEXT))))]
    assert [s.describe() for s in segs[0].stages] == [s.describe() for s in stages]


def test_lower_group_split_describes_what_runs_where():
    g = lower_group([DENSE, ("gelu",), ("layerscale",)], [(3, 9, 7)], split=True, name="g")
    assert list(g.torch_members) == [0] and len(g.stages) == 1
    text = g.describe()
    assert "1 kernel(s) + torch for member(s) 0" in text and "torch: member 0 (conv" in text
    assert g.split_summary().startswith("1 Triton kernel(s) for members 1-2 (gelu -> layerscale); in torch: member 0")
    with pytest.raises(NotLowerable, match="dense convs"):
        lower_group([DENSE, ("gelu",)], [(3, 9, 7)])  # split is opt-in for lower_group
