"""Each kernel's wrapper against a float64 reference (torch ops in float64, in the kernel file), on small odd
shapes, into output buffers poisoned with NaN: both layouts, 1-D and 2-D, strides, dilations, every epilogue
step, fp32 / bf16 / fp16 with tolerances by precision (common.TOLERANCE)."""
from __future__ import annotations

import pytest
import torch

from codegen.triton.lower import triton_available

OK, WHY = triton_available()
if not OK:
    pytest.skip(WHY, allow_module_level=True)

from codegen.triton import dwconv, elementwise, matmul, mlp, norm  # noqa: E402
from codegen.triton.common import channels_last, close, poisoned  # noqa: E402
from codegen.triton.epilogue import ACTIVATIONS  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


class Rand:
    def __init__(self, device, dtype, seed=0):
        self.g, self.device, self.dtype = torch.Generator().manual_seed(seed), device, dtype

    def __call__(self, *shape, scale=1.0):
        return (torch.randn(*shape, generator=self.g) * scale).to(device=self.device, dtype=self.dtype)


def layout(x, name):
    return channels_last(x) if name == "cl" else x


def check(got, want, dtype, what):
    ok, worst = close(got, want, dtype)
    assert ok, f"{what}: worst error {worst:.3g} x tolerance ({dtype}); NaN left: {torch.isnan(got).sum().item()}"


def epilogue_variant(name, r, out_shape):
    """Named epilogue step lists over an output of shape out_shape (N, C, ...)."""
    c = out_shape[1]
    return {
        "none": [],
        "gelu": [("gelu", None)],
        "relu+ls": [("relu", None), ("mul", r(c))],
        "silu+res": [("silu", None), ("add", r(*out_shape))],
        "starrelu+ls+res": [("relu2", None), ("mul", r(1)), ("add", r(1)), ("mul", r(c)), ("add", r(*out_shape))],
        "gelu_tanh+gate": [("gelu_tanh", None), ("mul", r(out_shape[0], c, *[1] * (len(out_shape) - 2)))],
    }[name]


# ---- depthwise conv -----------------------------------------------------------------------------------------

DW_2D = [  # (k, stride, dilation, layout, epilogue)
    (3, 1, 1, "cf", "none"), (3, 2, 2, "cl", "gelu"), (5, 2, 1, "cf", "relu+ls"), (5, 1, 2, "cl", "silu+res"),
    (7, 1, 1, "cl", "starrelu+ls+res"), (7, 2, 2, "cf", "gelu_tanh+gate"), (13, 1, 1, "cf", "gelu"),
]


@pytest.mark.parametrize("k, stride, dil, lay, epi", DW_2D, ids=[f"k{c[0]}s{c[1]}d{c[2]}-{c[3]}-{c[4]}" for c in DW_2D])
def test_dwconv_2d(device, k, stride, dil, lay, epi):
    r = Rand(device, torch.float32)
    x = layout(r(2, 5, 7, 9), lay)
    w, b = r(5, 1, k, k, scale=0.3), r(5)
    shape = dwconv.reference(x, w, b, stride=stride, dilation=dil).shape
    steps = epilogue_variant(epi, r, shape)
    want = dwconv.reference(x, w, b, stride=stride, dilation=dil, steps=steps)
    got = dwconv.dwconv(x, w, b, stride=stride, dilation=dil, steps=steps, out=poisoned(x, shape))
    assert got.stride(1) == (1 if lay == "cl" else shape[2] * shape[3])
    check(got, want, torch.float32, f"dwconv k={k} s={stride} d={dil} {lay} {epi}")


@pytest.mark.parametrize("k, stride, dil, lay", [(3, 1, 1, "cf"), (7, 2, 2, "cl"), (5, 2, 1, "cf")])
def test_dwconv_1d(device, k, stride, dil, lay):
    r = Rand(device, torch.float32, seed=1)
    x = layout(r(2, 5, 23), lay)
    w, b = r(5, 1, k, scale=0.3), r(5)
    shape = dwconv.reference(x, w, b, stride=stride, dilation=dil).shape
    steps = [("gelu", None), ("add", r(*shape))]
    want = dwconv.reference(x, w, b, stride=stride, dilation=dil, steps=steps)
    got = dwconv.dwconv(x, w, b, stride=stride, dilation=dil, steps=steps, out=poisoned(x, shape))
    check(got, want, torch.float32, f"dwconv1d k={k} s={stride} d={dil} {lay}")


def test_dwconv_31x31_on_a_tiny_map(device):
    r = Rand(device, torch.float32, seed=2)
    x, w, b = r(1, 3, 5, 6), r(3, 1, 31, 31, scale=0.1), r(3)
    want = dwconv.reference(x, w, b)
    check(dwconv.dwconv(x, w, b, out=poisoned(x, want.shape)), want, torch.float32, "dwconv 31x31")


def test_dwconv_padding_multiplier_and_no_bias(device):
    r = Rand(device, torch.float32, seed=3)
    x, w = r(2, 3, 6, 7), r(6, 1, 4, 3)  # even kernel, asymmetric padding, channel multiplier 2
    pad = ((1, 2), (0, 0))
    want = dwconv.reference(x, w, None, padding=pad)
    check(dwconv.dwconv(x, w, None, padding=pad, out=poisoned(x, want.shape)), want, torch.float32, "dw pad/mult")


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("lay", ["cf", "cl"])
def test_dwconv_half_precisions(device, dtype, lay):
    r = Rand(device, dtype, seed=4)
    x, w, b = layout(r(2, 5, 7, 9), lay), r(5, 1, 7, 7, scale=0.3), r(5)
    steps = [("gelu", None), ("mul", r(5)), ("add", r(2, 5, 7, 9))]
    want = dwconv.reference(x, w, b, steps=steps)
    check(dwconv.dwconv(x, w, b, steps=steps, out=poisoned(x, want.shape)), want, dtype, f"dwconv {dtype} {lay}")


@pytest.mark.parametrize("kind, lay, dtype", [("ln", "cl", torch.float32), ("ln", "cf", torch.bfloat16),
                                              ("rms", "cl", torch.float16), ("ln", "cl", torch.bfloat16)])
def test_dwconv_with_fused_norm(device, kind, lay, dtype):
    r = Rand(device, dtype, seed=5)
    x, w, b, nw, nb = layout(r(2, 5, 7, 9), lay), r(5, 1, 7, 7, scale=0.3), r(5), r(5), r(5)
    nb = nb if kind == "ln" else None
    steps = [("relu", None), ("add", r(2, 5, 7, 9))]
    kw = dict(norm=kind, norm_weight=nw, norm_bias=nb, eps=1e-6, steps=steps)
    want = dwconv.reference(x, w, b, **kw)
    check(dwconv.dwconv(x, w, b, out=poisoned(x, want.shape), **kw), want, dtype, f"dwconv+{kind} {lay}")


# ---- norms --------------------------------------------------------------------------------------------------

NORM_CASES = [("ln", (2, 5, 7, 9), "cf", "gelu", torch.float32), ("ln", (2, 5, 7, 9), "cl", "silu+res", torch.bfloat16),
              ("rms", (2, 5, 7, 9), "cl", "relu+ls", torch.float32), ("rms", (2, 5, 11), "cf", "none", torch.float16),
              ("ln", (7, 37), "cf", "starrelu+ls+res", torch.float32), ("ln", (3, 5, 11), "cl", "gelu", torch.float16)]


@pytest.mark.parametrize("kind, shape, lay, epi, dtype", NORM_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}-{c[3]}-{str(c[4])[6:]}" for c in NORM_CASES])
def test_norm(device, kind, shape, lay, epi, dtype):
    r = Rand(device, dtype, seed=6)
    x, w, b = layout(r(*shape), lay), r(shape[1]), (r(shape[1]) if kind == "ln" else None)
    steps = epilogue_variant(epi, r, shape)
    want = norm.reference(x, kind, w, b, 1e-5, steps)
    check(norm.norm(x, kind, w, b, 1e-5, steps, out=poisoned(x, shape)), want, dtype, f"{kind} {shape} {lay} {epi}")


def test_norm_without_affine(device):
    r = Rand(device, torch.float32, seed=7)
    x = r(2, 6, 3, 5) * 3 + 1
    want = norm.reference(x, "ln", None, None, 1e-5)
    check(norm.norm(x, "ln", out=poisoned(x, x.shape)), want, torch.float32, "ln without affine")


# ---- elementwise --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(device, act):
    r = Rand(device, torch.float32, seed=8)
    x = r(2, 5, 7, 9, scale=3.0)
    want = elementwise.reference(x, [(act, None)])
    check(elementwise.elementwise(x, [(act, None)], out=poisoned(x, x.shape)), want, torch.float32, act)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_chain_with_broadcasting(device, dtype):
    """x * per-channel scale + residual (channels-last) -> gelu -> * per-sample gate -> * 0.5 constant."""
    r = Rand(device, dtype, seed=9)
    x, s, res, gate = r(2, 5, 7, 9), r(5), channels_last(r(2, 5, 7, 9)), r(2, 5, 1, 1)
    steps = [("mul", s), ("add", res), ("gelu", None), ("mul", gate), ("mul", 0.5)]
    want = elementwise.reference(x, steps)
    check(elementwise.elementwise(x, steps, out=poisoned(x, x.shape)), want, dtype, "chain")


def test_elementwise_input_broadcasts_up(device):
    """The sigmoid gate of a squeeze-excite: sigmoid(g) for g (N, C, 1, 1), times x (N, C, H, W)."""
    r = Rand(device, torch.float32, seed=10)
    g, x = r(2, 5, 1, 1), channels_last(r(2, 5, 7, 9))
    steps = [("sigmoid", None), ("mul", x)]
    got = elementwise.elementwise(g, steps)
    assert got.shape == x.shape and got.stride(1) == 1  # takes the layout of the full-size operand
    check(got, elementwise.reference(g, steps), torch.float32, "gate")


# ---- linear / 1x1 conv --------------------------------------------------------------------------------------

LIN_CASES = [((2, 37, 7, 9), "cf", "gelu", torch.float32), ((2, 37, 7, 9), "cl", "starrelu+ls+res", torch.float32),
             ((2, 37, 7, 9), "cl", "silu+res", torch.bfloat16), ((2, 37, 7, 9), "cf", "relu+ls", torch.float16),
             ((13, 37), "cf", "gelu", torch.float32), ((3, 37, 11), "cl", "gelu_tanh+gate", torch.bfloat16)]
LIN_IDS = [f"{'x'.join(map(str, c[0]))}-{c[1]}-{c[2]}-{str(c[3])[6:]}" for c in LIN_CASES]


@pytest.mark.parametrize("shape, lay, epi, dtype", LIN_CASES, ids=LIN_IDS)
def test_linear(device, shape, lay, epi, dtype):
    r = Rand(device, dtype, seed=11)
    x, w, b = layout(r(*shape), lay), r(40, 37, scale=0.15), r(40)
    out_shape = (shape[0], 40, *shape[2:])
    steps = [("add", b)] + epilogue_variant(epi, r, out_shape)
    want = matmul.reference(x, w, steps)
    check(matmul.linear(x, w, steps, out=poisoned(x, out_shape)), want, dtype, f"linear {shape} {lay} {epi}")


# ---- fused MLP ----------------------------------------------------------------------------------------------

MLP_CASES = [("ln", "cf", "gelu", torch.float32), ("ln", "cl", "gelu", torch.bfloat16),
             (None, "cl", "relu2", torch.float16), ("rms", "cf", "silu", torch.float32)]


@pytest.mark.parametrize("nrm, lay, act, dtype", MLP_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{str(c[3])[6:]}" for c in MLP_CASES])
def test_mlp(device, nrm, lay, act, dtype):
    r = Rand(device, dtype, seed=12)
    x, res = layout(r(2, 5, 7, 9), lay), r(2, 5, 7, 9)
    w1, b1, w2, b2 = r(37, 5, scale=0.4), r(37), r(5, 37, scale=0.15), r(5)  # hidden 37: two partial chunks
    kw = dict(norm=nrm, norm_weight=r(5) if nrm else None, norm_bias=r(5) if nrm == "ln" else None,
              steps=[("mul", r(5)), ("add", res)])
    want = mlp.reference(x, w1, b1, act, w2, b2, **kw)
    check(mlp.mlp(x, w1, b1, act, w2, b2, out=poisoned(x, want.shape), **kw), want, dtype, f"mlp {nrm} {lay} {act}")


def test_mlp_on_vectors_without_biases(device):
    r = Rand(device, torch.float32, seed=13)
    x, w1, w2 = r(11, 6), r(24, 6, scale=0.4), r(7, 24, scale=0.2)
    want = mlp.reference(x, w1, None, "gelu", w2, None)
    check(mlp.mlp(x, w1, None, "gelu", w2, None, out=poisoned(x, want.shape)), want, torch.float32, "mlp vectors")
