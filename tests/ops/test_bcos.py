"""bcos: the module's dynamic linear map W(x) reproduces its output (W(x) x = out) and is what the explanation
mode's input gradient sees; alignment facts of the B-cos transform; exact gradients."""
from __future__ import annotations

import pytest
import torch

from archdsl.ops.bcos import bcos_reference
from tests.ops.op_testing import build, check_examples, gradcheck_module, shape_error

CASES = [
    ({"out": 4, "k": 3}, (3, 7, 6)),
    ({"out": 5, "k": 3, "b": 2.5, "max_out": 2}, (2, 9)),
    ({"out": 4, "k": [3, 1], "groups": 2, "stride": 2, "b": 1.5}, (4, 7, 5)),
    ({"out": 3, "b": 3.0, "max_out": 3}, (6,)),
]


@pytest.mark.parametrize("attrs,shape", CASES)
def test_dynamic_linear_map_reproduces_the_output(attrs, shape):
    _, _, m = build("bcos", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    w = m.dynamic_linear_map(x)
    y = m(x)
    assert w.shape == (2, y[0].numel(), x[0].numel())
    torch.testing.assert_close((w @ x.flatten(1).unsqueeze(-1)).squeeze(-1), y.flatten(1))
    torch.testing.assert_close(y, bcos_reference(m, x))


@pytest.mark.parametrize("attrs,shape", CASES[:3])
def test_explanation_mode_gradient_is_the_dynamic_map(attrs, shape):
    _, _, m = build("bcos", attrs, shape)
    m = m.double()
    x = torch.randn(1, *shape, dtype=torch.float64)
    m.explain = True
    jac = torch.autograd.functional.jacobian(lambda t: m(t).flatten(), x).reshape(-1, x.numel())
    torch.testing.assert_close(jac, m.dynamic_linear_map(x)[0])
    m.explain = False  # the training form's gradient also flows through the scaling: it differs
    jac_train = torch.autograd.functional.jacobian(lambda t: m(t).flatten(), x).reshape(-1, x.numel())
    assert not torch.allclose(jac_train, jac)


def test_an_aligned_input_passes_its_norm_and_a_misaligned_one_is_damped():
    _, _, m = build("bcos", {"out": 3, "b": 2.0}, (5,))
    m = m.double()
    w = m.weight.detach().double()[..., 0]  # (out, in): the k = 1 kernel
    for o in range(3):
        x = 2.5 * w[o] / w[o].norm()  # cos = 1 for unit o
        y = m(x[None])[0]
        torch.testing.assert_close(y[o], torch.tensor(2.5, dtype=torch.float64), rtol=1e-6, atol=0)
    x = torch.randn(50, 5, dtype=torch.float64)
    y, lin = m(x), x @ (w / w.norm(dim=1, keepdim=True)).T
    cos = lin / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(y, cos.abs() * lin, rtol=1e-5, atol=1e-8)
    assert (y.abs() <= x.norm(dim=1, keepdim=True) + 1e-9).all()


@pytest.mark.parametrize("attrs,shape", [({"out": 3, "k": 3, "b": 2.0}, (2, 5, 4)), ({"out": 2, "k": 3, "b": 2.5,
                                                                                      "max_out": 2}, (2, 7))])
def test_gradcheck(attrs, shape):
    _, _, m = build("bcos", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_examples_agree_with_modules():
    check_examples("bcos")


def test_vector_input_needs_a_linear_form():
    err = shape_error("bcos", {"out": 3, "k": 3}, (6,))
    assert "B-cos linear" in err.message and "[6]" in err.message
