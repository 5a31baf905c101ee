"""DCLS positions on the kernel border keep learning (issue 13): the clamp passes gradients straight through,
and every training-mode forward clamps the positions in place (the official per-step clamp_parameters)."""
from __future__ import annotations

import torch

from archdsl.ops.dcls import SIGMA_OFFSET, DclsConv


def _gauss_kernel_1d(w, p, sig, k):
    """The 1-D Gaussian-interpolated kernel of one weight at offset p from the centre, written out in float64."""
    cells = torch.arange(k, dtype=torch.float64)
    h = torch.exp(-0.5 * ((cells - (k // 2 + p)) / (sig.abs() + SIGMA_OFFSET)) ** 2)
    return w * h / h.sum()


def test_a_gaussian_position_on_the_border_gets_the_unclamped_gradient():
    torch.manual_seed(0)
    k = 7
    m = DclsConv(1, 1, count=1, kernel_size=(k,), interp="gauss", bias=False).double()
    target = torch.randn(k, dtype=torch.float64)
    with torch.no_grad():
        m.P.fill_(k - 1 - k // 2)  # exactly on the border, where clamp_parameters leaves it
    (m.kernel().reshape(k) * target).sum().backward()

    p = torch.tensor(float(k - 1 - k // 2), dtype=torch.float64, requires_grad=True)
    (_gauss_kernel_1d(m.weight.detach().reshape(()), p, m.SIG.detach().reshape(()), k) * target).sum().backward()
    assert p.grad.abs() > 1e-6  # the border position matters to the loss ...
    torch.testing.assert_close(m.P.grad.reshape(()), p.grad)  # ... and receives exactly that gradient


def _border_case(m, k):
    with torch.no_grad():
        m.P.fill_(9.0)  # pushed far past the border by some earlier step
        m.weight.fill_(1.0)
    m.train()(torch.randn(1, 1, 2 * k))
    assert m.P.item() == k - 1 - k // 2  # clamped in place, before use, by the training-mode forward
    target = torch.zeros(k)
    target[k - 2] = 1.0  # the loss wants the weight one cell inside the border
    ((m.kernel().reshape(k) - target) ** 2).sum().backward()
    assert m.P.grad.item() > 0  # descent moves the position inward
    torch.optim.SGD([m.P], lr=0.1).step()
    assert m.P.item() < k - 1 - k // 2


def test_a_bilinear_position_on_the_border_moves_back_inside():
    _border_case(DclsConv(1, 1, count=1, kernel_size=(5,), interp="bilinear", bias=False), 5)


def test_a_gaussian_position_on_the_border_moves_back_inside():
    _border_case(DclsConv(1, 1, count=1, kernel_size=(5,), interp="gauss", bias=False), 5)


def test_bilinear_gradient_at_an_integer_position_is_the_interpolation_slope():
    """pos = 2 exactly: the kernel is one-hot at cell 2; moving right takes weight w from cell 2 to 3."""
    m = DclsConv(1, 1, count=1, kernel_size=(7,), interp="bilinear", bias=False)
    with torch.no_grad():
        m.P.fill_(2.0 - 7 // 2)
        m.weight.fill_(1.5)
    t = torch.arange(7.0)
    (m.kernel().reshape(7) * t).sum().backward()
    torch.testing.assert_close(m.P.grad.reshape(()), 1.5 * (t[3] - t[2]))


def test_eval_forward_leaves_the_positions_alone():
    m = DclsConv(2, 2, count=3, kernel_size=(5, 5), groups=2).eval()
    with torch.no_grad():
        m.P.add_(10.0)
    before = m.P.detach().clone()
    with torch.no_grad():
        m(torch.randn(1, 2, 8, 8))
    torch.testing.assert_close(m.P.detach(), before)
