"""Complex ops: cconv is complex multiplication (i * z rotates the planes), modReLU keeps the phase, pooling by
modulus keeps both planes of the winner; exact gradients; an odd channel count is refused."""
from __future__ import annotations

import pytest
import torch

from tests.ops.op_testing import build, check_examples, gradcheck_module, shape_error


def test_multiplying_by_i_rotates_the_planes():
    _, _, m = build("cconv", {"out": 3, "k": 1, "bias": False}, (6, 4, 5))
    m = m.double()
    with torch.no_grad():
        m.real.zero_()
        m.imag.copy_(torch.eye(3, dtype=torch.float64).reshape(3, 3, 1, 1))  # W = i * identity
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    re, im = x.chunk(2, 1)
    torch.testing.assert_close(m(x), torch.cat([-im, re], 1))  # i (x + iy) = -y + ix


def test_modrelu_keeps_the_phase_and_shrinks_the_modulus():
    _, _, m = build("cact", {"kind": "modrelu"}, (4, 6))
    m = m.double()
    with torch.no_grad():
        m.bias.fill_(-0.5)
    x = torch.randn(3, 4, 6, dtype=torch.float64) * 2
    z = torch.complex(*x.chunk(2, 1))
    y = m(x)
    w = torch.complex(*y.chunk(2, 1))
    on = z.abs() > 0.5
    torch.testing.assert_close(w.abs()[on], z.abs()[on] - 0.5)
    torch.testing.assert_close(torch.angle(w)[on], torch.angle(z)[on])
    assert (w[~on] == 0).all()


def test_max_pool_by_modulus_takes_both_planes_of_the_winner():
    x = torch.zeros(1, 2, 2, dtype=torch.float64)  # one complex channel, two positions
    x[0, 0] = torch.tensor([3.0, 0.5])  # real parts
    x[0, 1] = torch.tensor([0.0, -4.0])  # imaginary parts: |3| < |0.5 - 4i|
    _, _, m = build("cpool", {"k": 2}, (2, 2))
    torch.testing.assert_close(m(x)[0, :, 0], torch.tensor([0.5, -4.0], dtype=torch.float64))


@pytest.mark.parametrize("name,attrs,shape", [("cconv", {"out": 2, "k": 3}, (4, 5, 4)),
                                              ("cact", {"kind": "modrelu"}, (4, 7))])
def test_gradcheck(name, attrs, shape):
    _, _, m = build(name, attrs, shape, perturb=0.5)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


@pytest.mark.parametrize("name", ["cconv", "cact", "cpool", "cmag"])
def test_examples_agree_with_modules(name):
    check_examples(name)


def test_odd_channels_are_refused():
    err = shape_error("cconv", {"out": 2}, (3, 5, 5))
    assert "even number of channels" in err.message and "[3, 5, 5]" in err.message
