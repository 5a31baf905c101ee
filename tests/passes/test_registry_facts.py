"""Every op's back-end facts (its OpSpec) against what the op and the passes really do, for every registered op
and every one of its examples: a new op's declared facts are tested by being registered.

- fusable: placed in a chain of fusable ops, group_fusion puts it in the fused group, and the deploy module
  computes what the train module computes (the fused group can run it);
- exact in any dtype: on bf16-representable inputs its bf16 result equals its fp32 result bit for bit;
- fold: the conv its rule builds, with the kernel its rule computes from the trained module, computes the
  op's own float64 reference.
"""
from __future__ import annotations

import pytest
import torch
from deploy_testing import check_deploy, compile_text, randomize

from archdsl.ops.registry import all_ops, get_op
from archdsl.passes import PASSES

OPS = all_ops()
MERGES = {"add": "sum", "mul": "mul", "concat": "concat"}  # op -> the parallel(...) that produces it


def _examples(pred):
    return [pytest.param(spec, i, id=f"{spec.name}-{i}") for spec in OPS if pred(spec)
            for i in range(len(spec.examples))]


def _literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return repr(v)


def _call(spec, attrs) -> str:
    args = ", ".join(f"{k} = {_literal(v)}" for k, v in attrs.items())
    return f"{spec.name}({args})" if args else spec.name


def _chain_source(spec, attrs, ins) -> str | None:
    """scale >> op >> scale on the example's input, or None when the example does not fit one chain."""
    shape = ", ".join(map(str, ins[0]))
    if spec.arity == -1 and len(ins) > 1:
        if any(tuple(s) != tuple(ins[0]) for s in ins):
            return None  # a broadcasting operand: no chain of the one input makes it
        branches = " ".join("{ scale(%s) }" % (0.5 + j) for j in range(len(ins)))
        body = f"parallel({MERGES[spec.name]}) {branches}"
    else:
        body = f"scale(0.5) >> {_call(spec, attrs)}"
    return f"model t() {{ input x[{shape}]\n {body} >> scale(2.0) }}"


@pytest.mark.parametrize("spec,i", _examples(lambda s: s.fusable))
def test_a_fusable_op_fuses_with_its_neighbours_and_computes_the_same(spec, i):
    attrs, ins = spec.examples[i]
    src = _chain_source(spec, attrs, ins)
    if src is None:
        pytest.skip("an operand of another shape: not a chain of one input")
    m = randomize(compile_text(src))
    d = check_deploy(m, select=["group_fusion"], tol=1e-12)
    fused = [a for _, a in ((n, d.archdsl_ir.nodes[n]) for n in d.archdsl_ir) if a["op"] == "fused"]
    assert len(fused) == 1 and spec.name in fused[0]["attrs"].ops, [a["op"] for a in fused] or "no fused group"
    assert fused[0]["attrs"].ops[-1] == "scale"  # the whole chain: nothing after the op was cut off


@pytest.mark.parametrize("spec", [s for s in OPS if not s.fusable and s.arity == 1 and "fp32" in s.precisions
                                  and not s.internal], ids=lambda s: s.name)  # internal ops: no .arch calls them
def test_an_op_not_declared_fusable_ends_the_group(spec):
    attrs, ins = spec.examples[0]
    m = compile_text(_chain_source(spec, attrs, ins))
    d = m.deploy(select=["group_fusion"])
    ops = [d.archdsl_ir.nodes[n]["op"] for n in d.archdsl_ir]
    assert spec.name in ops, ops  # it stays a node of its own


def _bf16_inputs(ins, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, *s, generator=g).bfloat16().float() for s in ins]  # exactly representable in bf16


@pytest.mark.parametrize("spec,i", _examples(lambda s: s.exact_in_any_dtype))
def test_an_op_exact_in_any_dtype_gives_the_fp32_result_in_bf16(spec, i):
    attrs, ins = spec.examples[i]
    ins = [tuple(s) for s in ins]
    a = spec.bind([], dict(attrs), ins)
    cls, kwargs = spec.torch(a, ins)
    module = cls(**kwargs).eval()
    xs = _bf16_inputs(ins)
    with torch.no_grad():
        want = module(*xs)
        got = module.bfloat16()(*[x.bfloat16() for x in xs])
    assert got.dtype == torch.bfloat16 and torch.equal(got.float(), want)


def test_exactness_is_not_claimed_for_a_rounding_op():  # the check above can fail: gelu rounds in bf16
    module, (x,) = torch.nn.GELU(), _bf16_inputs([(64,)])
    assert not get_op("gelu").exact_in_any_dtype
    assert not torch.equal(module(x.bfloat16()).float(), module(x))


@pytest.mark.parametrize("spec,i", _examples(lambda s: s.fold is not None))
def test_a_fold_rule_gives_a_conv_computing_the_op(spec, i):
    assert spec.fold.by in PASSES
    attrs, ins = spec.examples[i]
    ins = [tuple(s) for s in ins]
    a = spec.bind([], dict(attrs), ins)
    cls, kwargs = spec.torch(a, ins)
    torch.manual_seed(i)
    module = randomize(cls(**kwargs)).double().eval()
    conv = get_op("conv")
    ca = conv.bind([], {k: v for k, v in spec.fold.conv(a, ins).items() if v is not None}, ins)
    assert tuple(conv.shape(ca, ins)) == tuple(spec.shape(a, ins))
    ccls, ckw = conv.torch(ca, ins)
    folded = ccls(**ckw).double()
    with torch.no_grad():
        kernel, bias = spec.fold.kernel(module)
        wkey = next(k for k in folded.state_dict() if k.endswith("weight"))
        folded.load_state_dict({wkey: kernel, **({wkey[:-6] + "bias": bias} if bias is not None else {})})
        x = torch.randn(2, *ins[0], dtype=torch.float64)
        want = spec.reference(module, x)
        got = folded(x)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-10), (got - want).abs().max()
