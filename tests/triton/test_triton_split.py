"""Split groups: a member without a Triton kernel (a dense conv, a BatchNorm, GroupNorm) runs as its own torch
module and the runs of members around it run as kernels. Checked against the op registry's float64 references
(and the torch backend for a whole model), counting the kernel launches and the torch members' calls, so the
Triton part is known to run. Small odd shapes, 1-D and 2-D, both layouts (the interpreter is slow)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from codegen.triton.lower import triton_available

OK, WHY = triton_available()
if not OK:
    pytest.skip(WHY, allow_module_level=True)

import archdsl  # noqa: E402
import codegen.triton.lower as lower  # noqa: E402
from archdsl.ops.registry import get_op  # noqa: E402
from codegen.triton.common import channels_last, close, poisoned  # noqa: E402
from codegen.triton.lower import TritonGroup, lower_group, member_modules  # noqa: E402
from codegen.triton.plan import as_member  # noqa: E402

PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch of a lowered group, by stage kind, in order."""
    seen = []
    for kind, run in list(lower.RUNNERS.items()):
        def counted(stage, x, env, out, run=run, kind=kind):
            seen.append(kind)
            return run(stage, x, env, out)
        monkeypatch.setitem(lower.RUNNERS, kind, counted)
    return seen


def reference(members, modules, inputs):
    """The members' own registry references in float64, in order."""
    y = inputs[0].double()
    for i, m in enumerate(members):
        m = as_member(m, i)
        y = get_op(m.op).reference(copy.deepcopy(modules[m.name]).double(), y, *[inputs[j].double() for j in m.inputs])
    return y


def run_split(members, shapes, inputs, dtype, device, launches, kernels, in_torch):
    group = lower_group(members, shapes, precision=PRECISION[dtype], split=True)
    assert [st.kind for st in group.stages] == kernels, group.describe()
    assert list(group.torch_members) == in_torch, group.describe()
    modules = member_modules(members, shapes, dtype)
    want = reference(members, modules, inputs)
    inputs = [t.to(device=device, dtype=dtype) for t in inputs]
    calls = []
    for i in in_torch:
        modules[as_member(members[i], i).name].register_forward_hook(lambda *_, i=i: calls.append(i))
    module = TritonGroup(group, modules).to(device)
    with torch.no_grad():
        got = module(*inputs)
        assert launches == kernels and calls == in_torch  # the kernels ran, and the torch members once each
        weights = {n: {**dict(m.named_parameters()), **dict(m.named_buffers())} for n, m in modules.items()}
        out = poisoned(got, want.shape, dtype)
        assert group(*inputs, weights=weights, modules=modules, out=out) is out
    for g in (got, out):
        ok, worst = close(g, want, dtype)
        assert ok, f"{group.describe()}\nworst error {worst:.3g} x tolerance; NaN: {torch.isnan(g).sum().item()}"
    return group, got


@pytest.mark.parametrize("dtype, lay", [(torch.float32, "cf"), (torch.bfloat16, "cl")])
def test_dense_conv_at_the_head_then_its_epilogue_in_one_kernel(device, launches, dtype, lay):
    """conv 3x3 stride 2 (torch, with its bias) -> GELU -> layer scale -> residual add: one elementwise kernel."""
    members = [("conv", {"out": 6, "k": 3, "stride": 2}), ("gelu",), ("layerscale",), ("add", {}, (1,))]
    x, res = torch.randn(2, 3, 9, 7), torch.randn(2, 6, 5, 4)
    if lay == "cl":
        x, res = channels_last(x), channels_last(res)
    _, got = run_split(members, [(3, 9, 7), (6, 5, 4)], [x, res], dtype, device, launches, ["elementwise"], [0])
    assert got.shape == (2, 6, 5, 4)


def test_1d_dense_conv_in_the_middle_then_norm_and_mlp(device, launches):
    """dwconv -> ReLU (kernel) | conv k=3 (torch) | LN -> linear -> GELU -> linear -> + group input 0 (one fused
    MLP kernel with the norm as its prologue; the residual is the group's input, not the conv's)."""
    members = [("dwconv", {"k": 5}), ("relu",), ("conv", {"out": 5, "k": 3}), ("ln",), ("linear", {"out": 12}),
               ("gelu",), ("linear", {"out": 5}), ("add", {}, (0,))]
    run_split(members, [(5, 13)], [torch.randn(2, 5, 13)], torch.float32, device, launches, ["dwconv", "mlp"], [2])


def test_bottleneck_around_a_dense_conv_and_a_batchnorm(device, launches):
    """conv 1x1 -> ReLU | conv 3x3 -> BN (torch) | ReLU -> conv 1x1 -> + residual -> ReLU, channels-last."""
    members = [("conv", {"out": 4, "k": 1}), ("relu",), ("conv", {"out": 4, "k": 3}), ("bn",), ("relu",),
               ("conv", {"out": 6, "k": 1}), ("add", {}, (1,)), ("relu",)]
    x, res = channels_last(torch.randn(2, 6, 7, 5)), torch.randn(2, 6, 7, 5)
    run_split(members, [(6, 7, 5), (6, 7, 5)], [x, res], torch.float32, device, launches,
              ["linear", "elementwise", "linear"], [2, 3])


def test_torch_member_last_fills_out(device, launches):
    """LN -> SiLU (kernel) | GroupNorm (torch, last): the result lands in the caller's `out`."""
    members = [("ln",), ("silu",), ("gn", {"groups": 2})]
    run_split(members, [(4, 3, 5)], [torch.randn(2, 4, 3, 5)], torch.float16, device, launches, ["norm"], [2])


def test_split_group_computes_inference_only(device):
    members = [("conv", {"out": 4, "k": 3}), ("relu",)]
    group = lower_group(members, [(3, 5)], split=True)
    modules = {n: m.to(device) for n, m in member_modules(members, [(3, 5)]).items()}
    with pytest.raises(RuntimeError, match="inference only"):
        TritonGroup(group, modules)(torch.randn(2, 3, 5).to(device))
    with pytest.raises(RuntimeError, match="inference only"):  # a torch member's parameters count too
        group(torch.randn(2, 3, 5).to(device), weights={}, modules=modules)
    with torch.no_grad(), pytest.raises(TypeError, match="runs in torch.*pass its module"):
        group(torch.randn(2, 3, 5).to(device), weights={})


def test_model_with_split_groups_matches_torch_backend(device, launches):
    """The MNIST-1D CNN is one fused group conv -> relu -> conv -> relu -> conv -> relu: the three dense 1-D convs
    stay in torch, the ReLUs run as kernels; the report and the log say which members stayed in torch and why."""
    path = Path("searchspaces/models/mnist1d_cnn.arch")
    G = archdsl.build(archdsl.parse(path))
    torch.manual_seed(0)
    ref = archdsl.compile(G).deploy(disable=("select_kernels",))
    heard = []
    tri = archdsl.compile(G, mode="deploy", backend="triton", log=heard.append)
    (node, outcome), = tri.lowering.items()
    assert outcome.startswith(f"split: group '{node}': 3 Triton kernel(s) for member 1 (relu), member 3 (relu)")
    for i in (0, 2, 4):
        assert f"member {i} (conv k=" in outcome
    assert heard == [f"triton backend: group '{node}' split: {tri.lowering[node][len(f'split: group {node!r}: '):]}"]
    lowered = tri.get_submodule(node)
    assert type(lowered).__name__ == "TritonGroup" and list(lowered.group.torch_members) == [0, 2, 4]
    src = dict(ref.named_modules())
    for member_name, member in zip(lowered.names, lowered.members):  # the same weights in both
        member.load_state_dict(src[f"{node}.{member_name}"].state_dict())
    for name, mod in tri.named_modules():
        if name in src and not name.startswith(node) and not list(mod.children()):
            mod.load_state_dict(src[name].state_dict())
    x = torch.randn(2, *G.nodes[G.graph["input"]]["shape"])
    with torch.no_grad():
        torch.testing.assert_close(tri(x.to(device)).cpu(), ref(x), rtol=1e-4, atol=1e-4)
    assert launches == ["elementwise"] * 3
