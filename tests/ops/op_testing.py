"""Helpers shared by the op-family tests: build an op's module from its registration, count, and catch errors."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archdsl.errors import ArchError
from archdsl.ops.registry import get_op


def build(name, attrs, shape, seed=0, perturb=0.3):
    """(spec, attrs, module) for one input shape; parameters perturbed so zero inits hide nothing."""
    spec = get_op(name)
    a = spec.bind([], dict(attrs), [tuple(shape)])
    cls, kwargs = spec.torch(a, [tuple(shape)])
    torch.manual_seed(seed)
    module = cls(**kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(perturb * torch.randn_like(p))
    return spec, a, module


def nparams(module):
    return sum(p.numel() for p in module.parameters())


def flops_macs(module, x):
    """MACs as torch's FlopCounterMode sees them (it counts conv / linear / matmul FLOPs = 2 MACs)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return counter.get_total_flops() // 2


def shape_error(name, attrs, shape):
    spec = get_op(name)
    a = spec.bind([], dict(attrs), [tuple(shape)])
    with pytest.raises(ArchError) as err:
        spec.shape(a, [tuple(shape)])
    return err.value


def check_examples(name):
    """The op's registry examples cover (C, L) and (C, H, W), and each one's output shape, parameter count and
    MACs (where FlopCounterMode sees them) agree with the module actually built."""
    spec = get_op(name)
    assert {len(ins[0]) for _, ins in spec.examples} >= {2, 3}
    for attrs, ins in spec.examples:
        s, a, m = build(name, attrs, ins[0])
        out = s.shape(a, [tuple(ins[0])])
        x = torch.randn(1, *ins[0])
        with torch.no_grad():
            assert tuple(m.eval()(x).shape) == (1, *out)
        assert nparams(m) == s.params(a, [tuple(ins[0])])
        if s.flop_counter_exact:
            assert flops_macs(m, x) == s.macs(a, [tuple(ins[0])], out)



def gradcheck_module(module, x) -> bool:
    """torch.autograd.gradcheck of a float64 module's output with respect to its input and every parameter."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    return torch.autograd.gradcheck(f, (x, *module.parameters()))


def check_reference_and_gradients(name, attrs, shape):
    """In float64 the module equals its registered reference, its input gradient passes torch's finite-difference
    check, and every parameter gets a non-zero gradient."""
    spec, _, m = build(name, attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(m(x), spec.reference(m, x), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(m, (x,))
    m(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def check_loop_reference(name, attrs, shape, loop):
    """In float64, the module and the op's registered reference both equal `loop(module, x)`, a reference the
    test writes itself (loops over positions)."""
    spec, _, m = build(name, attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected = loop(m, x)
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(spec.reference(m, x), expected, rtol=1e-10, atol=1e-12)
