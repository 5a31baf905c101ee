"""arconv: kernel rotation (quarter turns exact, interpolation against a scalar loop), the per-sample mixture,
the routing's range of angles, exact gradients through angles and weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archdsl.ops.rotated_conv import rotate_kernel_reference, rotation_matrices
from tests.ops.op_testing import build, gradcheck_module, shape_error


@pytest.mark.parametrize("k", [3, 5])
def test_quarter_turns_are_exact_and_clockwise_in_image_layout(k):
    w = torch.randn(k, k, dtype=torch.float64)
    for turns in (1, 2, 3):
        m = rotation_matrices(torch.tensor(turns * math.pi / 2, dtype=torch.float64), k)
        torch.testing.assert_close((m @ w.flatten()).reshape(k, k), torch.rot90(w, -turns, (0, 1)))


def test_interpolated_rotation_matches_a_scalar_loop():
    w = torch.randn(2, 5, 5, dtype=torch.float64)
    for theta in (0.3, -0.6, 1.1):
        m = rotation_matrices(torch.tensor(theta, dtype=torch.float64), 5)
        got = torch.einsum("qp,cp->cq", m, w.flatten(1)).reshape(2, 5, 5)
        torch.testing.assert_close(got, rotate_kernel_reference(w, theta))


def test_zero_angles_mix_the_kernels_by_alpha():
    _, _, m = build("arconv", {"k": 3, "out": 4, "kernels": 3}, (3, 6, 7))
    m = m.double()
    with torch.no_grad():
        m.fc_theta.weight.zero_()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    alpha, theta = m.route(x)
    assert torch.equal(theta, torch.zeros_like(theta))
    for b in range(2):
        kern = torch.einsum("n,nocij->ocij", alpha[b], m.weight)
        torch.testing.assert_close(m(x)[b:b + 1], F.conv2d(x[b:b + 1], kern, padding=1))


def test_angles_stay_within_the_maximum():
    _, _, m = build("arconv", {"k": 3, "max_angle": 30.0}, (4, 5, 5), perturb=5.0)
    _, theta = m.route(torch.randn(8, 4, 5, 5) * 10)
    assert theta.abs().max() < math.radians(30.0) and theta.abs().max() > math.radians(5.0)


def test_gradcheck_through_angles_and_kernels():
    _, _, m = build("arconv", {"k": 3, "out": 2, "kernels": 2}, (2, 5, 4), perturb=1.0)
    m = m.double()
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_examples_agree_with_modules():
    from archdsl.ops.registry import get_op

    for attrs, ins in get_op("arconv").examples:
        assert len(ins[0]) == 3  # 2-D only: a rotation needs a plane
        spec, a, m = build("arconv", attrs, ins[0])
        assert sum(p.numel() for p in m.parameters()) == spec.params(a, [tuple(ins[0])])
        with torch.no_grad():
            assert m(torch.randn(2, *ins[0])).shape == (2, *spec.shape(a, [tuple(ins[0])]))


def test_kernel_larger_than_input_is_refused():
    err = shape_error("arconv", {"k": 9, "padding": 0}, (4, 5, 5))
    assert "larger than its padded input" in err.message and "[4, 5, 5]" in err.message


def test_sequence_input_is_refused_with_the_shape():
    from archdsl.errors import ArchError
    from archdsl.ops.registry import get_op

    spec = get_op("arconv")
    a = spec.bind([], {"k": 3}, [(4, 9)])
    with pytest.raises(ArchError, match=r"2-D"):
        spec.shape(a, [(4, 9)])
