"""Whole groups through lower_group against the op registry: each member's torch module is built from its
registration, and the expected output is the chain of the registry's own float64 references (explicit sums
over kernel offsets, textbook norm and activation formulas), written independently of the kernels."""
from __future__ import annotations

import copy

import pytest
import torch

from codegen.triton.lower import triton_available

OK, WHY = triton_available()
if not OK:
    pytest.skip(WHY, allow_module_level=True)

from archdsl.ir.graph import add_op, inputs, new_graph  # noqa: E402
from archdsl.ops.registry import get_op  # noqa: E402
from codegen.triton.common import channels_last, close, poisoned  # noqa: E402
from codegen.triton.lower import (NotLowerable, TritonGroup, group_from_nodes, lower_fused_node,  # noqa: E402
                                  lower_group, member_modules)
from codegen.triton.plan import as_member  # noqa: E402

PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def build_members(members, shapes, dtype, seed=0):
    return member_modules(members, shapes, dtype, seed)


def registry_reference(members, modules, inputs):
    y = inputs[0].double()
    for i, m in enumerate(members):
        m = as_member(m, i)
        module = copy.deepcopy(modules[m.name]).double()
        y = get_op(m.op).reference(module, y, *[inputs[j].double() for j in m.inputs])
    return y


def run_group(members, shapes, inputs, dtype, device, n_kernels=None, out_like=None):
    lowered = lower_group(members, shapes, precision=PRECISION[dtype])
    if n_kernels is not None:
        assert len(lowered.stages) == n_kernels, lowered.describe()
    modules = build_members(members, shapes, dtype)
    inputs = [t.to(device=device, dtype=dtype) for t in inputs]
    want = registry_reference(members, modules, [t.cpu() for t in inputs])
    module = TritonGroup(lowered, modules).to(device)
    if any(True for _ in module.parameters()):
        with pytest.raises(RuntimeError, match="inference only"):
            module(*inputs)  # parameters require grad: no silent loss of gradients
    with torch.no_grad():
        got_plain = module(*inputs)
        weights = {n: {**dict(m.named_parameters()), **dict(m.named_buffers())} for n, m in modules.items()}
        weights = {n: {k: v.to(device) for k, v in st.items()} for n, st in weights.items()}
        out = poisoned(out_like if out_like is not None else got_plain, want.shape, dtype)
        got = lowered(*inputs, weights=weights, out=out)
    for g in (got, got_plain):
        ok, worst = close(g, want, dtype)
        assert ok, f"{lowered.describe()}\nworst error {worst:.3g} x tolerance; NaN: {torch.isnan(g).sum().item()}"
    return lowered, got


CONVNEXT = [("dwconv", {"k": 7}), ("ln", {"eps": 1e-6}), ("linear", {"out": 20}), ("gelu",),
            ("linear", {"out": 5}), ("layerscale", {"init": 1e-6}), ("add", {}, (0,))]


@pytest.mark.parametrize("dtype, lay", [(torch.float32, "cf"), (torch.bfloat16, "cl"), (torch.float16, "cf")])
def test_convnext_block(device, dtype, lay):
    x = torch.randn(2, 5, 7, 9)
    x = channels_last(x) if lay == "cl" else x
    _, got = run_group(CONVNEXT, [(5, 7, 9)], [x], dtype, device, n_kernels=2)
    assert (got.stride(1) == 1) == (lay == "cl")


def test_metaformer_mlp_with_starrelu(device):
    members = [("ln", {"bias": False}), ("linear", {"out": 20}), ("starrelu",), ("linear", {"out": 5}),
               ("resscale",), ("add", {}, (1,))]
    run_group(members, [(5, 7, 9), (5, 7, 9)], [torch.randn(2, 5, 7, 9), torch.randn(2, 5, 7, 9)], torch.float32,
              device, n_kernels=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_dilated_dwconv_group(device, dtype):
    members = [("dwconv", {"k": 5, "stride": 2, "dilation": 2}), ("gelu", {"approximate": "tanh"}),
               ("layerscale",)]
    run_group(members, [(5, 11, 9)], [channels_last(torch.randn(2, 5, 11, 9))], dtype, device, n_kernels=1)


def test_1d_dwconv_with_rmsnorm(device):
    members = [("dwconv", {"k": 5, "dilation": 2}), ("rmsnorm",), ("silu",)]
    run_group(members, [(5, 17)], [torch.randn(2, 5, 17)], torch.float32, device, n_kernels=1)


def test_dwconv_channel_multiplier_and_conv_forms(device):
    run_group([("dwconv", {"k": 3, "mult": 2, "bias": False}), ("relu",)], [(3, 7, 9)], [torch.randn(2, 3, 7, 9)],
              torch.float32, device, n_kernels=1)
    run_group([("conv", {"out": 7, "k": 1}), ("hardswish",)], [(5, 7, 9)], [torch.randn(2, 5, 7, 9)],
              torch.float32, device, n_kernels=1)
    run_group([("pwconv", {"out": 7}), ("scale", {"value": -0.5})], [(5, 9)], [torch.randn(2, 5, 9)],
              torch.float16, device, n_kernels=1)


def test_norm_gate_residual(device):
    members = [("ln",), ("mul", {}, (1,)), ("add", {}, (2,)), ("tanh",)]
    shapes = [(5, 7, 9), (5, 1, 1), (5, 7, 9)]
    inputs = [torch.randn(2, 5, 7, 9), torch.randn(2, 5, 1, 1), torch.randn(2, 5, 7, 9)]
    run_group(members, shapes, inputs, torch.bfloat16, device, n_kernels=1)


def test_sigmoid_gate_broadcasting_up(device):
    members = [("sigmoid",), ("mul", {}, (1,))]
    inputs = [torch.randn(2, 5, 1, 1), torch.randn(2, 5, 7, 9)]
    run_group(members, [(5, 1, 1), (5, 7, 9)], inputs, torch.float32, device, n_kernels=1, out_like=inputs[1])


def test_linear_head_on_vectors(device):
    members = [("ln",), ("linear", {"out": 9}), ("relu2",), ("dropout", {"p": 0.1})]
    run_group(members, [(6,)], [torch.randn(5, 6)], torch.float32, device, n_kernels=2)


def test_lowering_a_chain_of_the_ir(device):
    G = new_graph("block")
    add_op(G, "x", "input", [], shape=(5, 7, 9))
    add_op(G, "dw", "dwconv", ["x"], attrs={"k": (3, 3), "stride": (1, 1), "padding": None, "dilation": (1, 1),
                                             "bias": True, "mult": 1}, shape=(5, 7, 9))
    add_op(G, "act", "gelu", ["dw"], attrs={"approximate": "none"}, shape=(5, 7, 9))
    add_op(G, "res", "add", ["act", "x"], shape=(5, 7, 9))
    add_op(G, "out", "output", ["res"])
    g = group_from_nodes(G, ["dw", "act", "res"])
    run_group(g["members"], g["shapes"], [torch.randn(2, 5, 7, 9)], torch.float32, device, n_kernels=1)


TINY = """
block convnext_block(dim, k = 7) {
  residual { dwconv(k) >> ln(eps = 1e-6) >> linear(4 * dim) >> gelu >> linear(dim) >> layerscale(0.5) }
}
block meta_mlp(dim) {
  residual { rmsnorm >> linear(3 * dim) >> starrelu >> linear(dim) >> resscale }
}
model tiny(dim = 5) {
  input image[3, 9, 7]
  stem: conv(dim, k = 3, padding = 1) >> bn >> relu
  b0: convnext_block(dim, k = 5)
  b1: meta_mlp(dim)
  mix: dwconv(3, stride = 2) >> silu >> scale(0.5)
  head: gap >> ln >> linear(4)
}
"""


def test_fused_nodes_of_the_deploy_pipeline(device):
    """Every fused node group_fusion makes in a small model: lowered and run against its FusedGroup module (the
    dense 3x3 stem conv stays on cuDNN, split from its ReLU, which still runs as a kernel)."""
    import archdsl

    module = archdsl.compile(TINY, mode="deploy").eval()
    G = module.archdsl_ir
    fused = [n for n, d in G.nodes(data=True) if d["op"] == "fused"]
    assert len(fused) >= 3
    lowered_any = False
    for node in fused:
        lowered = lower_fused_node(G, node)
        if G.nodes[node]["attrs"]["ops"][0] == "conv":  # the stem: conv 3x3 in torch, its ReLU in Triton
            assert list(lowered.torch_members) == [0] and "dense convs" in lowered.torch_members[0]
            assert [st.kind for st in lowered.stages] == ["elementwise"]
            with pytest.raises(NotLowerable, match=f"group '{node}': member 0 .*dense convs"):
                lower_fused_node(G, node, split=False)
        else:
            assert not lowered.torch_members
        group = module.get_submodule(node)
        with torch.no_grad():
            for p in group.parameters():
                p.copy_(0.5 * torch.randn_like(p) + 0.5)
            xs = [torch.randn(2, *G.nodes[a]["shape"]) for a in inputs(G, node)]
            want = group.double()(*[x.double() for x in xs])
            got = TritonGroup(lowered, dict(group.float().named_children())).to(device)(*[x.to(device) for x in xs])
        ok, worst = close(got, want, torch.float32)
        assert ok, f"{lowered.describe()}\nworst error {worst:.3g} x tolerance"
        lowered_any = True
    assert lowered_any
