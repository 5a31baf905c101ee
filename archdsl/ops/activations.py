"""Elementwise activations: relu, leakyrelu, gelu, silu, sigmoid, tanh, hardswish, starrelu, relu2 (squared_relu).

They keep the shape and count 0 MACs. References are the textbook formulas in float64 (exp / erf / tanh),
not the torch activation kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.references import ref_sigmoid
from archdsl.ops.registry import Attr, op


class StarReLU(nn.Module):
    """s * relu(x)^2 + b with a learnable scalar scale s and bias b (MetaFormer, Yu et al. 2022).

    The scalars have shape (1,) as in the MetaFormer code, so its checkpoints load; when not learnable they
    are buffers, so they are saved but not counted as parameters.
    """

    def __init__(self, scale=1.0, bias=0.0, learnable=True):
        super().__init__()
        s, b = torch.full((1,), float(scale)), torch.full((1,), float(bias))
        if learnable:
            self.scale, self.bias = nn.Parameter(s), nn.Parameter(b)
        else:
            self.register_buffer("scale", s)
            self.register_buffer("bias", b)

    def forward(self, x):
        return self.scale * F.relu(x) ** 2 + self.bias


class SquaredReLU(nn.Module):
    """relu(x)^2 (Primer, So et al. 2021)."""

    def forward(self, x):
        return F.relu(x) ** 2


# Blocks that take their activation as an attribute (`act = "silu"`) choose among these. (Their module classes
# spell the table out: emitted Python copies a class's source, which may name only torch.)
BLOCK_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def act_name(module) -> str:
    """The BLOCK_ACTS name of an activation module."""
    return next(name for name, cls in BLOCK_ACTS.items() if type(module) is cls)


def _relu(x):
    return x * (x > 0)


def _gelu_reference(m, x):
    x = x.double()
    if m.approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


_SHAPES = (({}, [(5,)]), ({}, [(3, 7)]), ({}, [(2, 5, 3)]))


def _same(a, ins):
    return tuple(ins[0])


def _simple(name, cls, formula, doc, aliases=(), **facts):
    # an elementwise activation: fusable, an epilogue step named after the op in a Triton kernel
    op(name, shape=_same, torch=lambda a, ins: (cls, {}), reference=lambda m, x: formula(x.double()),
       doc=doc, examples=_SHAPES, aliases=aliases, fusable=True, triton="activation", **facts)


_simple("relu", nn.ReLU, _relu, "max(x, 0).", exact_in_any_dtype=True)
_simple("silu", nn.SiLU, lambda x: x * ref_sigmoid(x), "x * sigmoid(x) (swish).")
_simple("sigmoid", nn.Sigmoid, ref_sigmoid, "1 / (1 + exp(-x)).")
_simple("tanh", nn.Tanh, lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)), "tanh(x).")
_simple("hardswish", nn.Hardswish, lambda x: x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0,
        "x * relu6(x + 3) / 6 (MobileNetV3).")
_simple("relu2", SquaredReLU, lambda x: _relu(x) ** 2, "Squared ReLU, relu(x)^2.", aliases=("squared_relu",))

op("leakyrelu", Attr("slope", "float", 0.01, doc="the slope below zero (MONAI's U-net blocks: 0.01)"),
   shape=_same, torch=lambda a, ins: (nn.LeakyReLU, dict(negative_slope=a.slope)),
   reference=lambda m, x: _relu(x.double()) - m.negative_slope * _relu(-x.double()),
   doc="x for x > 0, slope * x below (nn.LeakyReLU).",
   examples=(*_SHAPES, ({"slope": 0.2}, [(3, 7)])))

op("gelu", Attr("approximate", "str", "none", choices=("none", "tanh")),
   shape=_same, torch=lambda a, ins: (nn.GELU, dict(approximate=a.approximate)), reference=_gelu_reference,
   doc="GELU, exact (erf) or its tanh approximation.", fusable=True, triton="gelu",
   examples=(*_SHAPES, ({"approximate": "tanh"}, [(3, 7)])))

op("starrelu",
   Attr("scale", "float", 1.0), Attr("bias", "float", 0.0),
   Attr("learnable", "bool", True, doc="false: fixed scale and bias (buffers, not parameters)"),
   shape=_same,
   params=lambda a, ins: 2 if a.learnable else 0,
   torch=lambda a, ins: (StarReLU, dict(scale=a.scale, bias=a.bias, learnable=a.learnable)),
   reference=lambda m, x: m.scale.double() * _relu(x.double()) ** 2 + m.bias.double(),
   doc="StarReLU: s * relu(x)^2 + b with scalar s, b (MetaFormer).", fusable=True, triton="starrelu",
   examples=(({}, [(5,)]), ({"scale": 0.8944, "bias": -0.4472}, [(3, 7)]), ({"learnable": False}, [(2, 5, 3)])))
