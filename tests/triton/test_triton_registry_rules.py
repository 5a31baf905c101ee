"""Every op's Triton fact (OpSpec.triton / triton_declined) against the planner and the kernels, for every
registered op: a rule the planner knows, an activation the epilogue computes, and, run alone as a group in the
kernels, the op's own float64 reference reproduced; an op without a rule is refused with its stated reason."""
from __future__ import annotations

import pytest
import torch

from archdsl.ops.registry import all_ops
from codegen.triton.lower import triton_available
from codegen.triton.plan import RULES, NotLowerable, plan

OPS = all_ops()
RULED = [s for s in OPS if s.triton is not None]


def _member(spec, attrs, ins):
    # add / mul read group input 0 again as their other operand (x + x, x * x)
    return (spec.name, dict(attrs), (0,) * (len(ins) - 1)) if spec.arity == -1 else (spec.name, dict(attrs))


def _chains(spec):
    """The examples a one-member group can take: one input, or operands of the input's shape."""
    return [(attrs, ins) for attrs, ins in spec.examples if all(tuple(s) == tuple(ins[0]) for s in ins)]


@pytest.mark.parametrize("spec", RULED, ids=lambda s: s.name)
def test_every_rule_is_the_planners(spec):
    assert spec.triton in RULES
    assert not spec.triton_declined, "an op with a rule has no reason to be declined"


def test_every_fusable_op_has_a_rule_or_says_why_not():
    assert [s.name for s in OPS if s.fusable and s.triton is None and not s.triton_declined] == []


@pytest.mark.parametrize("spec", [s for s in OPS if s.triton is None and s.triton_declined], ids=lambda s: s.name)
def test_an_op_without_a_rule_is_refused_with_its_reason(spec):
    attrs, ins = spec.examples[0]
    with pytest.raises(NotLowerable) as e:
        plan([(spec.name, dict(attrs), tuple(range(1, len(ins))))], [tuple(s) for s in ins])
    assert spec.triton_declined in e.value.reason


@pytest.mark.parametrize("spec", [s for s in RULED if s.triton == "activation"], ids=lambda s: s.name)
def test_every_activation_is_an_epilogue_step(spec):
    if not triton_available()[0]:
        pytest.skip(triton_available()[1])
    from codegen.triton.epilogue import ACTIVATIONS

    assert spec.name in ACTIVATIONS


@pytest.mark.parametrize("spec", [s for s in RULED if _chains(s)], ids=lambda s: s.name)
def test_every_ruled_op_runs_in_the_kernels_as_its_reference(spec, device):
    ok, why = triton_available()
    if not ok:
        pytest.skip(why)
    from test_triton_lower import run_group

    lowered = 0
    for attrs, ins in _chains(spec):
        shape = tuple(ins[0])
        try:
            plan([_member(spec, attrs, ins)], [shape])
        except NotLowerable as e:  # a rule may refuse some attrs (a dense conv): it must say which member
            assert f"({spec.name}" in e.reason
            continue
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        run_group([_member(spec, attrs, ins)], [shape], [x], torch.float32, device)
        lowered += 1
    assert lowered, f"no example of {spec.name} lowers, though it names the rule '{spec.triton}'"
