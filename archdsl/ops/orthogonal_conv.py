"""Orthogonal convolution by the Cayley transform in the Fourier domain: orthoconv.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform" (ICLR 2021); official code
locuslab/orthogonal-convolutions (``layers.py`` CayleyConv). A convolution with circular padding is diagonal in
the Fourier domain: at each frequency f it is a (out x in) complex matrix S(f), the DFT of the kernel. The
layer replaces S(f) by its Cayley transform, which is unitary (semi-unitary when out != in), so the whole
operator on periodic signals is exactly orthogonal: every singular value is 1 (Achour et al., "Existence,
Stability and Scalability of Orthogonal CNNs", show such transforms exist for circular padding).

Cayley of a tall W = [U; V] (U square, in x in): A = U - U^H + V^H V,
Q = [(I + A)^-1 (I - A); -2 V (I + A)^-1] (the official ``cayley``); a wide W goes through its conjugate
transpose (the official code uses the plain transpose; the conjugate one is the adjoint operator, so the
result is the adjoint of an orthogonal tall operator, which keeps the test of it a dense-matrix identity).

The kernel is scaled as ``alpha * w / ||w||`` (the official CayleyLinear's weight normalisation; the official
conv normalises the spectrum instead), alpha a learnable scalar initialised to ``||w||``. Stride 1; the output
is the circular convolution of the input (periodic boundary), the kernel centred at (k - 1) // 2 as officially.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial


def cayley_tall(w: torch.Tensor) -> torch.Tensor:
    """Semi-unitary Cayley transform of a batch of tall (.., out >= in) complex matrices."""
    cin = w.shape[-1]
    u, v = w[..., :cin, :], w[..., cin:, :]
    eye = torch.eye(cin, dtype=w.dtype, device=w.device)
    a = u - u.mH + v.mH @ v
    inv = torch.linalg.inv(eye + a)
    return torch.cat((inv @ (eye - a), -2 * v @ inv), dim=-2)


class CayleyConv(nn.Module):
    """Circular convolution over 1-3 spatial dims whose operator is orthogonal (Cayley transform per frequency)."""

    _emit_deps = (cayley_tall,)

    def __init__(self, in_channels, out_channels, kernel_size, bias=True):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.ConvNd's init, as the official subclass
        self.alpha = nn.Parameter(self.weight.detach().norm().reshape(()))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cached = None  # (key, spectrum) of the last inference call

    def cached_spectrum(self, sizes):
        """spectrum(sizes), computed once while the parameters stay the same: at inference (no autograd) the
        Cayley transform is input-independent (the official CayleyLinear keeps its Q outside training too).
        The key holds the parameters' version counters, which every in-place update (an optimiser step,
        load_state_dict) advances."""
        if self.training or torch.is_grad_enabled():
            return self.spectrum(sizes)
        params = (self.weight, self.alpha)
        key = (tuple(sizes), tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.spectrum(sizes))
        return self._cached[1]

    def spectrum(self, sizes):
        """The Cayley-transformed symbol Q(f), (bins..., out, in), for signals of these spatial sizes."""
        nd = len(sizes)
        w = self.alpha * self.weight / self.weight.norm()
        pads = [p for k, n in zip(reversed(self.kernel_size), reversed(sizes)) for p in (0, n - k)]
        # Put kernel tap p at offset p - (k-1)//2 (mod n): conj(DFT) is then the symbol of the cross-correlation.
        shifted = torch.roll(F.pad(w, pads), [-((k - 1) // 2) for k in self.kernel_size], list(range(2, 2 + nd)))
        s = torch.fft.rfftn(shifted, dim=list(range(2, 2 + nd))).conj()
        s = s.permute(*range(2, 2 + nd), 0, 1)
        if s.shape[-2] >= s.shape[-1]:
            return cayley_tall(s)
        return cayley_tall(s.mH).mH

    def forward(self, x):
        nd = x.dim() - 2
        sizes = tuple(x.shape[2:])
        dims = list(range(2, 2 + nd))
        xf = torch.fft.rfftn(x, dim=dims).movedim(1, -1).unsqueeze(-1)  # (N, bins..., in, 1)
        yf = (self.cached_spectrum(sizes) @ xf).squeeze(-1).movedim(-1, 1)
        y = torch.fft.irfftn(yf, s=sizes, dim=dims)
        if self.bias is not None:
            y = y + self.bias.reshape(-1, *([1] * nd))
        return y


def _shape(a, ins):
    need_spatial("orthoconv", ins[0])
    out = a.out or ins[0][0]
    if any(k > n for k, n in zip(a.k, ins[0][1:])):
        raise ArchError(f"orthoconv(): kernel {list(a.k)} is larger than the input's spatial size "
                        f"(input shape {list(ins[0])}, output shape {[out, *ins[0][1:]]})",
                        hint="a circular convolution needs k <= size in every dim: use a smaller kernel")
    return (out, *ins[0][1:])


def _bins(ins):
    sp = ins[0][1:]
    return math.prod(sp[:-1]) * (sp[-1] // 2 + 1)


def _params(a, ins):
    c = ins[0][0]
    out = a.out or c
    return out * c * math.prod(a.k) + 1 + (out if a.bias else 0)  # kernel, alpha, bias


def _macs(a, ins, out):
    # The per-sample product in the Fourier domain: an (out x in) complex matrix times a vector at each of the
    # rfft's bins, 4 real MACs per complex MAC. The FFTs and the Cayley transform (input-independent: once per
    # forward, whatever the batch) are not counted.
    return 4 * out[0] * ins[0][0] * _bins(ins)


def _torch(a, ins):
    return CayleyConv, dict(in_channels=ins[0][0], out_channels=a.out or ins[0][0], kernel_size=tuple(a.k),
                            bias=a.bias)


def circular_operator(weight, sizes) -> torch.Tensor:
    """The dense (out*prod(sizes), in*prod(sizes)) matrix of circular cross-correlation with `weight`, entry by
    entry: y[o, n] = sum_{c, p} w[o, c, p] x[c, (n + p - (k-1)//2) mod size]."""
    w = weight.double()
    cout, cin, *ks = w.shape
    npos = math.prod(sizes)
    m = torch.zeros(cout, npos, cin, npos, dtype=torch.float64)
    positions = list(kernel_offsets(sizes))
    index = {pos: i for i, pos in enumerate(positions)}
    for i, pos in enumerate(positions):
        for tap in kernel_offsets(ks):
            src = tuple((n + p - (k - 1) // 2) % s for n, p, k, s in zip(pos, tap, ks, sizes))
            m[:, i, :, index[src]] += w[(slice(None), slice(None), *tap)]
    return m.reshape(cout * npos, cin * npos)


def _dense_cayley(m, cin_rows):
    """Cayley of a tall real matrix whose first `cin_rows` rows form the square block (the same formula, dense)."""
    u, v = m[:cin_rows], m[cin_rows:]
    eye = torch.eye(cin_rows, dtype=m.dtype)
    a = u - u.T + v.T @ v
    return torch.cat((torch.linalg.solve(eye + a, eye - a), -2 * v @ torch.linalg.inv(eye + a)))


def orthoconv_operator(m, sizes) -> torch.Tensor:
    """The layer's whole linear operator on signals of `sizes` as a dense float64 matrix, built without FFTs."""
    cout, cin = m.weight.shape[:2]
    w = m.alpha.double() * m.weight.double() / m.weight.double().norm()
    dense = circular_operator(w, sizes)
    npos = math.prod(sizes)
    if cout >= cin:
        return _dense_cayley(dense, cin * npos)
    return _dense_cayley(dense.T, cout * npos).T


def orthoconv_reference(m, x):
    n, c, *sizes = x.shape
    q = orthoconv_operator(m, tuple(sizes))
    y = (x.double().reshape(n, -1) @ q.T).reshape(n, -1, *sizes)
    if m.bias is not None:
        y = y + m.bias.double().reshape(-1, *([1] * len(sizes)))
    return y


op("orthoconv",
   Attr("k", "ints", 3, check=positive, doc="kernel size of the parametrising kernel"),
   Attr("out", "int", None, check=positive, doc="output channels (default: in); out != in is semi-orthogonal"),
   Attr("bias", "bool", True),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=orthoconv_reference,
   flop_counter_exact=False, precisions=("fp32",), category="mixer",
   doc="Orthogonal circular convolution (Cayley transform of the kernel's spectrum, Trockman & Kolter 2021): "
       "every singular value of the operator is 1.",
   examples=(({"k": 3}, [(3, 7, 6)]), ({"k": 3, "out": 5, "bias": False}, [(3, 9)]),
             ({"k": [3, 2], "out": 2}, [(4, 5, 5)]), ({"k": 5}, [(2, 8)])))
