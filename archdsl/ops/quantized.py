"""Deploy-time int8 ops on PyTorch's quantized kernels (x86 / oneDNN / fbgemm backends): what `lower_precision`
turns int8 regions into where the backend has a kernel.

Between these ops tensors are quantized (``torch.quint8``: per-tensor affine uint8, the scale and zero point
the trained observers settled on); weights are per-output-channel symmetric int8, as QAT trained them
(archdsl/quant.py). Each conv / linear / add requantizes its result to the output scale and zero point the
pass chose (the observer of the input the next int8 node trained with), with the ReLU fused where one follows.

    qconv    1-D / 2-D conv (any groups: dense, grouped, depthwise)   torch.ops.quantized.conv{1,2}d[_relu]
    qlinear  linear over the channel axis                              torch.ops.quantized.linear[_relu]
             requantize=False: a float32 result on (N, C)              F.linear on the dequantized operands;
                                                                       from INT8_RESULT_MACS per call
                                                                       torch.ops.onednn.qlinear_pointwise
    qadd     residual add of two quantized tensors                     torch.ops.quantized.add[_relu]

A float input is quantized on entry with the node's input scale and zero point (a region's first node); a
quantized input whose grid reaches past that range (a wider reader chose it) is requantized onto it, as QAT
clipped there. ``dequantize=True`` returns a float result in the input's dtype (registry examples; quantized
inputs give float32). Where a quantized tensor leaves a region a `cast` dequantizes it.

Exactness comes first: on a CPU whose quantized conv / linear kernels saturate (fbgemm without AVX-512 VNNI
sums uint8 x int8 pairs in int16; `_QuantizedOp.kernels_exact` probes it once per process) qconv and qlinear
compute QAT's float32 arithmetic on the dequantized operands instead and requantize the result: the same
numbers at fp32 speed, rather than outputs off by tens of levels. A model whose activations were trained or
calibrated on 7 bits (``levels=127``: archdsl.quant.set_activation_bits) never reaches the saturation
(127 * 127 * 2 < 32767), so there the int8 kernels run: each input is clamped to level 127 of its grid, as
QAT clipped it.

Weights are held as int8 buffers plus scales, so the state_dict loads like any other; the prepacked kernel
weights are built on first use and after load_state_dict / .to() (edit the buffers before the first call).
The classes depend on torch alone: `archdsl compile -o` copies their source.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.precision_ops import LEVELS
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import numel

# torch 2.13 announces that quantized tensor creation is deprecated (pytorch/pytorch#184982) while its x86
# quantized kernels remain the fastest int8 path on CPU; said once here rather than at every deploy.
warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")


def _quantize(x, scale, zero):
    """A float tensor as quint8; a 4-D one channels-last, the layout the x86 quantized kernels run fast in.
    Quantized first, then reordered: the layout copy moves 1-byte levels instead of 4-byte floats (a region's
    entry at 8 x 128 x 28 x 28: 0.48 ms instead of 0.79 ms, one thread)."""
    q = torch.quantize_per_tensor(x.float(), scale, zero, torch.quint8)
    return q.contiguous(memory_format=torch.channels_last) if q.dim() == 4 else q


def _clip(q, top):
    """A quantized tensor's levels above `top` (127 on 7-bit activations) set to `top`, as QAT clipped them."""
    return q if top == 255 else torch.clamp(q, max=(top - q.q_zero_point()) * q.q_scale())


class _QuantizedOp(nn.Module):
    """Buffers and caching shared by the quantized kernels: the input and output (scale, zero point), and the
    packed weights built from ``qweight`` / ``wscale`` / ``bias`` when they change."""

    _frozen_weights = ("qweight", "bias")  # trained weights held as buffers: counted as parameters
    _exact: dict = {}  # (quantized engine, top level) -> whether its int8 conv / linear are exact (probed once)
    _emit_deps = (_quantize, _clip)

    @staticmethod
    def kernels_exact(levels: int = 255) -> bool:
        """Whether the backend's quantized conv and linear sum uint8 x int8 products exactly for activation
        levels up to `levels`. fbgemm without AVX-512 VNNI multiplies adjacent pairs into a saturating int16
        (vpmaddubsw), and 255 * 127 * 2 > 32767: full-range uint8 activations come out wrong by up to tens of
        levels, 7-bit ones fit (torch.ao's x86 recipe, `reduce_range`). Probed with the worst case: every
        level `levels`, every weight 127, 64 channels; exact 2,072,640 -> level 207 on a 10,000 grid (255),
        1,032,256 -> 103 (127); saturated 105."""
        engine = torch.backends.quantized.engine
        if (engine, levels) not in _QuantizedOp._exact:
            ones = torch.ones(1, dtype=torch.double)
            w = torch.quantize_per_channel(torch.full((1, 64), 127.0), ones, torch.zeros(1, dtype=torch.long), 0,
                                           torch.qint8)
            x = torch.quantize_per_tensor(torch.full((1, 64), float(levels)), 1.0, 0, torch.quint8)
            try:
                conv = torch.ops.quantized.conv2d_prepack(w.reshape(1, 64, 1, 1), None, [1, 1], [0, 0], [1, 1], 1)
                lin = torch.ops.quantized.linear_prepack(w, None)
                y = (torch.ops.quantized.conv2d(x.reshape(1, 64, 1, 1), conv, 1e4, 0),
                     torch.ops.quantized.linear(x, lin, 1e4, 0))
                expect = round(64 * levels * 127 / 1e4)
                exact = all(int(t.int_repr().flatten()[0]) == expect for t in y)
            except RuntimeError:  # an engine without per-channel conv / linear: the float path runs anywhere
                exact = False
            _QuantizedOp._exact[(engine, levels)] = exact
        return _QuantizedOp._exact[(engine, levels)]

    def __init__(self, weight_shape, bias, relu, dequantize, levels=255):
        super().__init__()
        self.relu, self.dequantize, self.levels = relu, dequantize, levels
        if weight_shape is not None:
            self.register_buffer("qweight", torch.randint(-127, 128, weight_shape, dtype=torch.int8))
            # placeholders until a state_dict loads (not round numbers: no value lands exactly between levels)
            self.register_buffer("wscale", torch.full((weight_shape[0],), 0.0123))
            self.register_buffer("bias", torch.zeros(weight_shape[0]) if bias else None)
        self.register_buffer("x_scale", torch.tensor(0.0371))
        self.register_buffer("x_zero", torch.tensor(131.0))
        self.register_buffer("y_scale", torch.tensor(0.0529))
        self.register_buffer("y_zero", torch.tensor(117.0))
        self._cache = None

    def _prepared(self):
        """(packed weights or None, x_scale, x_zero, y_scale, y_zero) as Python values, built on first use and
        again after load_state_dict or .to() (a per-call check of the buffers costs more than a small conv)."""
        if self._cache is None:
            packed = self._pack() if "qweight" in self._buffers else None
            self._cache = (packed, float(self.x_scale), int(self.x_zero), float(self.y_scale), int(self.y_zero))
        return self._cache

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _qweight(self):
        """The int8 weight as a per-channel quantized tensor (qweight * wscale is exactly on its own grid)."""
        scale = self.wscale.double()
        view = (-1, *([1] * (self.qweight.dim() - 1)))
        w = self.qweight.double() * scale.view(view)
        zeros = torch.zeros(len(scale), dtype=torch.long)
        return torch.quantize_per_channel(w.float(), scale, zeros, 0, torch.qint8)

    def _bias(self):
        return self.bias.float() if self.bias is not None else None

    def _input(self, x, xs, xz):
        """x as this node reads it: a float tensor quantized with the node's observer (xs, xz); a quantized one
        as it comes, unless its grid reaches past that observer's range (a wider reader chose the grid), where
        QAT clipped: then requantized onto the node's grid (a classifier whose observer stopped at 3.5 read a
        flatten grid up to 5.4: logits off by 10 without it). On 7-bit activations, clamped to level 127."""
        top = self.levels
        if not x.is_quantized:
            q = _quantize(x, xs, xz)
        else:
            s, z, tol = x.q_scale(), x.q_zero_point(), 1e-4 * xs
            past = z * s > xz * xs + tol or (top - z) * s > (top - xz) * xs + tol
            q = _quantize(x.dequantize(), xs, xz) if past else x
        return _clip(q, top)

    def _float_weight(self):
        """The float32 weight QAT multiplied with: int8 level x channel scale."""
        return self.qweight.float() * self.wscale.float().view(-1, *([1] * (self.qweight.dim() - 1)))

    def _requantized(self, y, ys, yz):
        """A float result (QAT's arithmetic, where the kernels are not exact) onto the output grid."""
        return _quantize(torch.relu(y) if self.relu else y, ys, yz)

    def _result(self, y, x):
        return y.dequantize().to(x.dtype if not x.is_quantized else torch.float32) if self.dequantize else y


class QConv(_QuantizedOp):
    """A 1-D / 2-D convolution on quantized tensors, ReLU optionally fused, result requantized."""

    _emit_deps = (_QuantizedOp, _quantize, _clip)

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups=1, bias=True,
                 relu=False, dequantize=False, levels=255):
        super().__init__((out_channels, in_channels // groups, *kernel_size), bias, relu, dequantize, levels)
        self.stride, self.padding, self.dilation, self.groups = list(stride), list(padding), list(dilation), groups
        name = f"conv{len(kernel_size)}d"
        self._prepack = getattr(torch.ops.quantized, name + "_prepack")
        self._kernel = getattr(torch.ops.quantized, name + ("_relu" if relu else ""))

    def _pack(self):
        if not self.kernels_exact(self.levels):  # the float32 weight: a float32 conv on the dequantized input
            return self._float_weight(), self._bias()
        return self._prepack(self._qweight(), self._bias(), self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        packed, xs, xz, ys, yz = self._prepared()
        q = self._input(x, xs, xz)
        if isinstance(packed, tuple):
            conv = F.conv1d if q.dim() == 3 else F.conv2d
            y = conv(q.dequantize(), *packed, self.stride, self.padding, self.dilation, self.groups)
            return self._result(self._requantized(y, ys, yz), x)
        return self._result(self._kernel(q, packed, ys, yz), x)


class QLinear(_QuantizedOp):
    """y = x W^T + b over the channel axis (dim 1) of quantized tensors, ReLU optionally fused, result
    requantized."""

    _emit_deps = (_QuantizedOp, _quantize, _clip)
    # A float-result layer (requantize=False: a classifier) runs oneDNN's int8 kernel with a float32 result from
    # this many multiply-accumulates per call, QAT's float32 product below it. One thread, AVX-512 VNNI: 800 -> 10
    # at batch 1 0.004 ms in float32 against 0.029 ms (the kernel's fixed cost); 2048 -> 1000 at batch 1 0.138
    # against 0.064, at batch 8 0.81 against 0.16 (ResNet-50's head: a quarter of the weight bytes to read).
    # Even near 0.5M at batch 1 and at batch 8.
    INT8_RESULT_MACS = 1 << 19

    def __init__(self, in_features, out_features, bias=True, relu=False, dequantize=False, requantize=True,
                 levels=255):
        super().__init__((out_features, in_features), bias, relu, dequantize, levels)
        self.requantize = requantize
        self._kernel = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear

    @staticmethod
    def int8_result_exact(levels: int = 255) -> bool:
        """Whether oneDNN's int8 linear with a float32 result sums exactly here: the kernels_exact probe on this
        kernel (64 x level `levels` x weight 127: 2,072,640 for 255, an integer float32 holds exactly)."""
        key = ("onednn float result", levels)
        if key not in _QuantizedOp._exact:
            try:
                w = torch.ops.onednn.qlinear_prepack(torch.full((1, 64), 127, dtype=torch.int8), None)
                x = torch.full((1, 64), levels, dtype=torch.uint8)
                y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, w, torch.ones(1), torch.zeros(1, dtype=torch.long),
                                                       None, 1.0, 0, torch.float32, "none", [], "")
                _QuantizedOp._exact[key] = float(y.flatten()[0]) == 64 * levels * 127
            except (AttributeError, RuntimeError):  # no oneDNN int8 linear in this build: the float32 product
                _QuantizedOp._exact[key] = False
        return _QuantizedOp._exact[key]

    def _pack(self):
        if not self.requantize:  # a float result: the float32 weight and / or oneDNN's, each built on first use
            return {}
        if not self.kernels_exact(self.levels):  # float32 weight, float32 product
            return self._float_weight()
        return torch.ops.quantized.linear_prepack(self._qweight(), self._bias())

    def _float_result(self, q, packs):
        """A layer no quantized node reads (a classifier): no output grid. A large one computes the exact
        product (level - zero point) x int8 weight in int32, scaled to float32 (oneDNN, where exact); a small
        one QAT's own arithmetic, the input's and the weight's levels dequantized and multiplied in float32.
        The two differ by float32 rounding only."""
        if q.dim() == 2 and q.shape[0] * self.qweight.numel() >= self.INT8_RESULT_MACS and \
                self.int8_result_exact(self.levels):
            if "int8" not in packs:
                packs["int8"] = (torch.ops.onednn.qlinear_prepack(self.qweight, None), self.wscale.float(),
                                 torch.zeros(len(self.wscale), dtype=torch.long))
            w, ws, wz = packs["int8"]
            return torch.ops.onednn.qlinear_pointwise(q.int_repr(), q.q_scale(), q.q_zero_point(), w, ws, wz,
                                                      self._bias(), 1.0, 0, torch.float32,
                                                      "relu" if self.relu else "none", [], "")
        if "float" not in packs:
            packs["float"] = self._float_weight()
        y = F.linear(q.dequantize().movedim(1, -1), packs["float"], self._bias()).movedim(-1, 1)
        return torch.relu(y) if self.relu else y

    def forward(self, x):
        packed, xs, xz, ys, yz = self._prepared()
        q = self._input(x, xs, xz)
        if not self.requantize:
            return self._float_result(q, packed)
        if torch.is_tensor(packed):  # kernels not exact here: QAT's float32 product, requantized
            y = F.linear(q.dequantize().movedim(1, -1), packed, self._bias()).movedim(-1, 1)
            return self._result(self._requantized(y, ys, yz), x)
        if q.dim() == 2:
            return self._result(self._kernel(q, packed, ys, yz), x)
        # over the channel axis (dim 1) of (N, C, ...): channels innermost for the kernel, then back
        y = self._kernel(q.movedim(1, -1).contiguous(), packed, ys, yz)
        return self._result(y.movedim(-1, 1), x)


class QAdd(_QuantizedOp):
    """a + b of two quantized tensors (each with its own scale and zero point), ReLU optionally fused,
    requantized. A float argument is quantized with ``x_scale`` / ``x_zero``."""

    _frozen_weights = ()
    _emit_deps = (_QuantizedOp, _quantize, _clip)

    def __init__(self, relu=False, dequantize=False, levels=255):
        super().__init__(None, False, relu, dequantize, levels)
        self._kernel = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add

    def forward(self, a, b):
        _, xs, xz, ys, yz = self._prepared()
        qa, qb = (_clip(t if t.is_quantized else _quantize(t, xs, xz), self.levels) for t in (a, b))
        return self._result(self._kernel(qa, qb, ys, yz), a)


# ---- references, written another way: dequantize everything, compute in float64 -----------------------

def _levels(x, scale, zero, top=255):
    """float64 values of x rounded onto the uint8 grid (scale, zero point), levels 0..top."""
    s, z = float(scale), float(zero)
    return (torch.clamp(torch.round(x.double() / s) + z, 0, top) - z) * s


def _requantize(m, y):
    """The result's uint8 level, dequantized as torch does: (level - zero point) * scale in float32."""
    s, z = float(m.y_scale), float(m.y_zero)
    level = torch.clamp(torch.round((torch.relu(y) if m.relu else y) / s) + z, 0, 255) - z
    return (level.float() * torch.tensor(s, dtype=torch.float32)).double()


def _weight64(m):
    return m.qweight.double() * m.wscale.double().view(-1, *([1] * (m.qweight.dim() - 1)))


def _bias64(m):
    return m.bias.double() if m.bias is not None else None


def _conv_reference(m, x):
    conv = F.conv1d if x.dim() == 3 else F.conv2d
    y = conv(_levels(x, m.x_scale, m.x_zero, m.levels), _weight64(m), _bias64(m), m.stride, m.padding, m.dilation,
             m.groups)
    return _requantize(m, y)


def _linear_reference(m, x):
    y = torch.einsum("nc...,oc->no...", _levels(x, m.x_scale, m.x_zero, m.levels), _weight64(m))
    b = _bias64(m)
    return _requantize(m, y + b.view(-1, *([1] * (x.dim() - 2))) if b is not None else y)


def _add_reference(m, a, b):
    return _requantize(m, _levels(a, m.x_scale, m.x_zero, m.levels) + _levels(b, m.x_scale, m.x_zero, m.levels))


# ---- registrations --------------------------------------------------------------------------------------

def _qconv_shape(a, ins):
    c, *sp = ins[0]
    return (a.out, *[(n + 2 * a.padding[i] - a.dilation[i] * (a.k[i] - 1) - 1) // a.stride[i] + 1
                     for i, n in enumerate(sp)])


op("qconv", Attr("out", "int", check=positive), Attr("k", "ints", check=positive),
   Attr("stride", "ints", 1, check=positive), Attr("padding", "ints", 0, check=non_negative),
   Attr("dilation", "ints", 1, check=positive), Attr("groups", "int", 1, check=positive),
   Attr("bias", "bool", True), Attr("relu", "bool", False), Attr("dequantize", "bool", False), LEVELS,
   shape=_qconv_shape,
   params=lambda a, ins: ins[0][0] // a.groups * math.prod(a.k) * a.out + (a.out if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * ins[0][0] // a.groups * math.prod(a.k),
   torch=lambda a, ins: (QConv, dict(in_channels=ins[0][0], out_channels=a.out, kernel_size=a.k, stride=a.stride,
                                     padding=a.padding, dilation=a.dilation, groups=a.groups, bias=a.bias,
                                     relu=a.relu, dequantize=a.dequantize, levels=a.levels)),
   reference=_conv_reference, category="kernel", flop_counter_exact=False, precisions=("int8",),
   spatial_dims=(1, 2),
   doc="Conv on quantized uint8 activations and per-channel int8 weights (PyTorch's quantized kernels).",
   examples=(({"out": 4, "k": 3, "padding": 1, "dequantize": True}, [(3, 11)]),
             ({"out": 6, "k": [3, 2], "stride": 2, "padding": [1, 0], "groups": 2, "relu": True,
               "dequantize": True}, [(4, 7, 6)]),
             ({"out": 3, "k": 5, "stride": 2, "dilation": 2, "padding": 2, "bias": False, "dequantize": True},
              [(4, 17)]),
             ({"out": 5, "k": 3, "padding": 1, "relu": True, "dequantize": True, "levels": 127}, [(6, 5, 7)])))

op("qlinear", Attr("out", "int", check=positive), Attr("bias", "bool", True), Attr("relu", "bool", False),
   Attr("dequantize", "bool", False), Attr("requantize", "bool", True), LEVELS,
   shape=lambda a, ins: (a.out, *ins[0][1:]),
   params=lambda a, ins: ins[0][0] * a.out + (a.out if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * ins[0][0],
   torch=lambda a, ins: (QLinear, dict(in_features=ins[0][0], out_features=a.out, bias=a.bias, relu=a.relu,
                                       dequantize=a.dequantize, requantize=a.requantize, levels=a.levels)),
   reference=_linear_reference, category="kernel", flop_counter_exact=False, precisions=("int8",),
   spatial_dims=(0, 1, 2),
   doc="Linear over the channel axis of quantized uint8 activations, per-channel int8 weights (PyTorch's "
       "quantized kernels).",
   examples=(({"out": 5, "dequantize": True}, [(7,)]), ({"out": 3, "relu": True, "dequantize": True}, [(9, 4)]),
             ({"out": 4, "bias": False, "dequantize": True}, [(6, 3, 5)]),
             ({"out": 6, "dequantize": True, "levels": 127}, [(10, 4)])))

op("qadd", Attr("relu", "bool", False), Attr("dequantize", "bool", False), LEVELS,
   shape=lambda a, ins: tuple(ins[0]),
   torch=lambda a, ins: (QAdd, dict(relu=a.relu, dequantize=a.dequantize, levels=a.levels)),
   reference=_add_reference, arity=2, category="kernel", precisions=("int8",),
   doc="Residual add of two quantized tensors, requantized (PyTorch's quantized add).",
   examples=(({"dequantize": True}, [(3, 9), (3, 9)]), ({"relu": True, "dequantize": True}, [(4, 5, 6), (4, 5, 6)]),
             ({"dequantize": True, "levels": 127}, [(3, 8), (3, 8)])))
