"""deform (DCNv2): zero offsets give the plain conv, integer offsets a shifted one (zeros outside), modulation
scales the samples, limited range clips, the loop reference agrees, exact gradients through the sampling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archdsl.ops.deformable import deform_reference
from tests.ops.op_testing import build, check_examples, gradcheck_module, shape_error


def _fresh(attrs, shape):
    """The module at its init (offset conv zero), the main weights random."""
    _, _, m = build("deform", attrs, shape, perturb=0.0)
    with torch.no_grad():
        m.weight.normal_()
    return m.double()


@pytest.mark.parametrize("shape,conv", [((3, 7, 6), F.conv2d), ((3, 11), F.conv1d)])
def test_zero_offsets_are_the_plain_conv(shape, conv):
    x = torch.randn(2, *shape, dtype=torch.float64)
    m = _fresh({"out": 4, "k": 3, "modulation": False}, shape)
    torch.testing.assert_close(m(x), conv(x, m.weight, m.bias, padding=1))
    m = _fresh({"out": 4, "k": 3, "stride": 2, "dilation": 2, "bias": False}, shape)  # modulation at init: 0.5
    torch.testing.assert_close(m(x), 0.5 * conv(x, m.weight, None, stride=2, padding=2, dilation=2))


def test_integer_offsets_shift_the_samples():
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    m = _fresh({"out": 3, "k": 3, "modulation": False, "bias": False}, (2, 6, 7))
    with torch.no_grad():
        m.offset.bias.view(9, 2)[:, 0] = 1.0  # every tap looks one row down
    # padded row r (r = -1 .. H) of the sampled signal holds input row r + 1: rows 0 .. H-1, then two outside
    shifted = F.pad(x, (1, 1, 0, 2))
    torch.testing.assert_close(m(x), F.conv2d(shifted, m.weight))


def test_fractional_offsets_interpolate_linearly():
    x = torch.randn(1, 2, 9, dtype=torch.float64)
    m = _fresh({"out": 2, "k": 1, "modulation": False, "bias": False}, (2, 9))
    with torch.no_grad():
        m.offset.bias.fill_(0.25)
    inside = 0.75 * x[..., :-1] + 0.25 * x[..., 1:]
    expected = torch.cat([inside, 0.75 * x[..., -1:]], -1)  # the last sample's upper neighbour is outside
    torch.testing.assert_close(m(x), F.conv1d(expected, m.weight))


def test_limited_range_clips_the_offsets():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    far = _fresh({"out": 2, "k": 3, "max_offset": 1.0}, (3, 8, 8))
    near = _fresh({"out": 2, "k": 3}, (3, 8, 8))
    near.load_state_dict(far.state_dict())
    with torch.no_grad():
        far.offset.bias[:18] = torch.linspace(-5, 5, 18, dtype=torch.float64)
        near.offset.bias[:18] = torch.linspace(-5, 5, 18, dtype=torch.float64).clamp(-1, 1)
    torch.testing.assert_close(far(x), near(x))
    unclipped = _fresh({"out": 2, "k": 3}, (3, 8, 8))
    unclipped.load_state_dict(far.state_dict())
    assert not torch.allclose(unclipped(x), far(x))


@pytest.mark.parametrize("attrs,shape", [({"out": 2, "k": 3}, (2, 5, 4)), ({"out": 2, "k": 3, "groups": 2,
                                                                            "offset_groups": 2}, (2, 7))])
def test_gradcheck_through_the_sampling(attrs, shape):
    _, _, m = build("deform", attrs, shape, perturb=0.3)
    m = m.double()
    x = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
    # random offsets are almost surely off the integer grid, where bilinear sampling is differentiable
    assert gradcheck_module(m, x)
    torch.testing.assert_close(m(x), deform_reference(m, x))


def test_examples_agree_with_modules():
    check_examples("deform")


def test_offset_groups_must_divide_the_channels():
    err = shape_error("deform", {"out": 4, "offset_groups": 2}, (3, 5, 5))
    assert "offset_groups=2" in err.message and "[3, 5, 5]" in err.message
