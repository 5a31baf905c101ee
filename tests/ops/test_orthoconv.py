"""orthoconv: the operator is orthogonal (every singular value 1), measured on the layer's impulse responses in
the Fourier domain; the module agrees with a dense float64 construction; exact gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archdsl.ops.orthogonal_conv import circular_operator, orthoconv_reference
from tests.ops.op_testing import build, check_examples, gradcheck_module


def operator_singular_values(layer, channels, sizes):
    """Singular values of a linear, shift-equivariant layer on periodic signals of `sizes`: its responses to an
    impulse at the origin in each input channel give its transfer matrix T(f) (out x in) at each frequency
    by an FFT; the operator's singular values are those of all the T(f)."""
    impulses = torch.zeros(channels, channels, *sizes, dtype=torch.float64)
    for c in range(channels):
        impulses[(c, c, *([0] * len(sizes)))] = 1.0
    with torch.no_grad():
        y = layer(impulses)  # (in, out, *sizes): column c of the operator at every shift
    dims = list(range(2, 2 + len(sizes)))
    t = torch.fft.fftn(y, dim=dims).permute(*dims, 1, 0)  # (freqs..., out, in)
    return torch.linalg.svdvals(t).flatten()


@pytest.mark.parametrize("attrs,shape", [
    ({"k": 3, "bias": False}, (4, 8, 8)),
    ({"k": [3, 5], "bias": False}, (3, 7, 9)),
    ({"k": 5, "bias": False}, (5, 16)),
    ({"k": 3, "out": 6, "bias": False}, (4, 6, 5)),  # tall: semi-orthogonal, 4 singular values per frequency
    ({"k": 3, "out": 2, "bias": False}, (5, 11)),  # wide
])
def test_operator_is_orthogonal(attrs, shape):
    _, _, m = build("orthoconv", attrs, shape, perturb=1.0)
    sv = operator_singular_values(m.double(), shape[0], shape[1:])
    assert sv.numel() > 0
    torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-5)
    # and float32 keeps the norm of a random signal to float32 accuracy
    x = torch.randn(3, *shape)
    y = m.float()(x)
    if attrs.get("out", shape[0]) >= shape[0]:
        torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-5, atol=0)


def test_the_measure_sees_a_plain_conv_is_not_orthogonal():
    w = torch.randn(3, 3, 3, 3, dtype=torch.float64)

    def conv(x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)

    sv = operator_singular_values(conv, 3, (6, 6))
    assert (sv - 1).abs().max() > 0.1
    # the FFT measure agrees with the dense operator's SVD
    dense = circular_operator(w, (6, 6))
    torch.testing.assert_close(torch.sort(sv).values, torch.sort(torch.linalg.svdvals(dense)).values)


def test_dense_operator_matches_the_circular_conv():
    w = torch.randn(2, 3, 3, 2, dtype=torch.float64)
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    # k = (3, 2): centre offsets (1, 0), so pad 1 before / 1 after in H and 0 / 1 in W
    direct = F.conv2d(F.pad(x, (0, 1, 1, 1), mode="circular"), w)
    torch.testing.assert_close((circular_operator(w, (5, 4)) @ x.flatten()).reshape(1, 2, 5, 4), direct)


@pytest.mark.parametrize("attrs,shape", [({"k": 3}, (2, 5, 4)), ({"k": 3, "out": 3}, (2, 7))])
def test_gradcheck(attrs, shape):
    _, _, m = build("orthoconv", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)
    torch.testing.assert_close(m(x), orthoconv_reference(m, x))


def test_examples_agree_with_modules():
    check_examples("orthoconv")


def test_kernel_larger_than_input_is_refused():
    from tests.ops.op_testing import shape_error

    err = shape_error("orthoconv", {"k": 7}, (3, 5, 9))
    assert "smaller kernel" in err.hint and "[3, 5, 9]" in err.message


def test_inference_reuses_the_spectrum_until_the_parameters_change():
    _, _, m = build("orthoconv", {"k": 3}, (3, 6, 6))
    x = torch.randn(2, 3, 6, 6)
    m.eval()
    with torch.no_grad():
        y0 = m(x)
        cached = m._cached[1]
        assert torch.equal(m(x), y0) and m._cached[1] is cached  # reused
        m.weight.mul_(1.5)  # an in-place update, as an optimiser step
        m.alpha.add_(0.3)
        y1 = m(x)
    assert m._cached[1] is not cached
    torch.testing.assert_close(y1, m.train()(x).detach())  # the uncached computation
    m.eval()
    with torch.no_grad():
        m.load_state_dict({k: v * 0.5 if k == "alpha" else v for k, v in m.state_dict().items()})
        y2 = m(x)
    torch.testing.assert_close(y2, orthoconv_reference(m, x).float(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(y2, y1)
