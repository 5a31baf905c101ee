"""fdconv: the frequency bands partition the spectrum, the disjoint weights add up to the kernel they came from,
the per-sample kernel is the mixture times the three modulations; exact gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archdsl.ops.fdconv import _ref_bands, frequency_bands
from tests.ops.op_testing import build, check_examples, gradcheck_module, shape_error


@pytest.mark.parametrize("rows,cols,bands", [(4, 27, 4), (5, 9, 3), (8, 72, 2)])
def test_bands_partition_the_grid_lowest_first(rows, cols, bands):
    masks = frequency_bands(rows, cols, bands)
    assert torch.equal(masks.sum(0), torch.ones(rows, cols // 2 + 1))
    torch.testing.assert_close(masks.double(), _ref_bands(rows, cols, bands))
    assert masks[0, 0, 0] == 1  # the zero frequency is in the first band
    sizes = masks.flatten(1).sum(1)
    assert sizes.max() - sizes.min() <= 1


def test_disjoint_weights_add_up_to_the_initial_kernel():
    torch.manual_seed(0)
    _, _, m = build("fdconv", {"out": 4, "k": 3, "kernels": 3}, (3, 6, 6), perturb=0.0)
    m = m.double()
    whole = torch.fft.irfft2(torch.view_as_complex(m.spectrum), s=(4, 27)).reshape(4, 3, 3, 3)
    torch.testing.assert_close(m.disjoint_weights().sum(0), whole)
    assert all(w.abs().sum() > 0 for w in m.disjoint_weights())


def test_unit_modulations_leave_the_mixture():
    _, _, m = build("fdconv", {"out": 4, "k": 3, "kernels": 2, "fbm": False}, (3, 6, 7))
    m = m.double()
    with torch.no_grad():
        for head in (m.channel_fc, m.filter_fc, m.spatial_fc):
            head.weight.zero_()
            head.bias.zero_()  # sigmoid(0) * 2 = 1
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    h = F.relu(m.fc(x.flatten(2).mean(2)))
    mix = torch.sigmoid(m.kernel_fc(h)) * 2 / 2
    w = m.disjoint_weights()
    for b in range(2):
        kern = mix[b, 0] * w[0] + mix[b, 1] * w[1]
        torch.testing.assert_close(m(x)[b:b + 1], F.conv2d(x[b:b + 1], kern, m.bias, padding=1))


def test_band_modulation_is_the_identity_at_init_and_splits_the_spectrum():
    _, _, m = build("fdconv", {"out": 2, "k": 3}, (3, 16, 12), perturb=0.0)
    m = m.double()
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    torch.testing.assert_close(m.band_modulation(x), x, atol=1e-4, rtol=0)  # maps of sigmoid(~0) * 2 = 1
    with torch.no_grad():
        m.fbm[0].bias.fill_(-50.0)  # the top band's map -> 0: the result is x low-passed below 1/4 cycle
    low = m.band_modulation(x)
    spec = torch.fft.rfft2(low)
    fy = torch.fft.fftfreq(16, dtype=torch.float64)[:, None].abs()
    fx = torch.fft.rfftfreq(12, dtype=torch.float64)[None, :]
    assert spec[..., torch.maximum(fy, fx) > 0.25 + 1e-6].abs().max() < 1e-4  # the band edge 0.25 is kept
    assert spec[..., torch.maximum(fy, fx) <= 0.25].abs().max() > 1


def test_gradcheck():
    _, _, m = build("fdconv", {"out": 2, "k": 3, "kernels": 2}, (2, 9, 10))
    m = m.double()
    x = torch.randn(1, 2, 9, 10, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_examples_agree_with_modules():
    check_examples("fdconv")


def test_too_many_groups_for_the_kernel_are_refused():
    err = shape_error("fdconv", {"out": 1, "k": 1, "kernels": 4}, (2, 5, 5))
    assert "fewer kernels" in err.hint and "[2, 5, 5]" in err.message
