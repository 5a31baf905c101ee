"""Every precision an op declares really runs (issue 13): for every op a file can call, every registry example
and every low precision the op declares, `@precision(p) op(...)` either is refused when the model is built
(the op's declared facts say torch has no kernel for it there) or deploys and runs a forward pass on CPU with
a finite result. Before, `@precision(bf16) globalfilter` and fp16 3-D `poolmix` passed `check` and crashed
in the deployed module."""
from __future__ import annotations

import warnings

import pytest
import torch

import archdsl
from archdsl.errors import ArchError
from archdsl.frontend.values import show
from archdsl.ops.registry import all_ops

LOW = ("bf16", "fp16", "int8", "fp8")
OPS = [s for s in all_ops() if not s.internal and s.arity == 1 and any(p in s.precisions for p in LOW)]


def _source(spec, attrs, shape, precision) -> str:
    args = ", ".join(f"{k} = {show(list(v) if isinstance(v, tuple) else v)}" for k, v in attrs.items())
    dims = ", ".join(map(str, shape))
    return f"model m() {{\n  input x[{dims}]\n  @precision({precision}) {spec.name}({args})\n}}\n"


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
def test_declared_precisions_deploy_and_run_or_are_refused_when_built(spec):
    torch.manual_seed(0)
    for attrs, ins in spec.examples:
        for precision in (p for p in LOW if p in spec.precisions):
            src = _source(spec, attrs, ins[0], precision)
            problem = spec.precision_problem(precision, [tuple(ins[0])])
            if problem:
                with pytest.raises(ArchError, match="cannot run at"):
                    archdsl.build(src)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = archdsl.compile(src, mode="deploy").eval()
                with torch.no_grad():
                    y = module(torch.randn(2, *ins[0]))
            assert torch.isfinite(y.float()).all(), (spec.name, precision, attrs, ins)


def test_the_refusal_names_the_line():
    with pytest.raises(ArchError) as info:
        archdsl.build("model m() {\n  input x[2, 4, 4, 4]\n  @precision(bf16) avgpool(3, stride = 1)\n}\n")
    assert (info.value.span.line, info.value.span.col) == (3, 20)
    assert info.value.message == "avgpool cannot run at bf16 on a 3-D input (torch has no such kernel)"
