"""The fused epilogue every kernel ends with: up to MAX_STEPS steps on the fp32 tile, before the one store.

A step is ``(op, operand)``: ``("add", t)`` / ``("mul", t)`` with a tensor that broadcasts to the output
(a bias or layer scale of shape (C,), a residual, a gate, a scalar), or an activation with no operand. The
steps are tl.constexpr strings, so Triton compiles one specialised kernel per step list and the untaken
branches cost nothing: the list is the generated code. Step k reads operand slot k: a pointer and its (n, c, p)
strides, so broadcasting is a stride of 0.

    conv / linear / norm tile (fp32) -> add bias -> gelu -> mul gamma -> add residual -> store
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from codegen.triton.common import ncp, scalar

MAX_STEPS = 6
ACTIVATIONS = ("relu", "relu2", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish")
BINARY = ("add", "mul")


# ---- kernel side ------------------------------------------------------------------------------------------

# The kernels call only triton.language builtins and these helpers, not the @jit functions of triton's standard
# library (tl.sigmoid, tl.sum, tl.zeros): those are decorated when triton is imported, so in a process that
# imported triton before setting TRITON_INTERPRET=1 (a test suite where torch.utils.flop_counter came first)
# they would not run in the interpreter. On the GPU both compile to the same code.

@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def row_sum(x):
    """Sum over axis 1 of a 2-D tile."""
    return tl.reduce(x, 1, _add)


@triton.jit
def _tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0  # tanh(x) = 2 sigmoid(2x) - 1 (tl has no portable tanh)


@triton.jit
def _step(acc, OP: tl.constexpr, q, qn, qc, qp, n, c, p, mask):
    """One epilogue step on the fp32 tile `acc` whose elements sit at (n, c, p) (broadcastable index tensors).
    q: operand pointer; qn, qc, qp: its strides (0 where it broadcasts)."""
    if OP == "add":
        acc = acc + tl.load(q + n * qn + c * qc + p * qp, mask=mask, other=0.0).to(tl.float32)
    elif OP == "mul":
        acc = acc * tl.load(q + n * qn + c * qc + p * qp, mask=mask, other=0.0).to(tl.float32)
    elif OP == "relu":
        acc = tl.maximum(acc, 0.0)
    elif OP == "relu2":
        acc = tl.maximum(acc, 0.0)
        acc = acc * acc
    elif OP == "gelu":
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))  # x Phi(x), Phi by erf(x / sqrt 2)
    elif OP == "gelu_tanh":
        acc = 0.5 * acc * (1.0 + _tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)))  # sqrt(2/pi)
    elif OP == "silu":
        acc = acc * sigmoid(acc)
    elif OP == "sigmoid":
        acc = sigmoid(acc)
    elif OP == "tanh":
        acc = _tanh(acc)
    elif OP == "hardswish":
        acc = acc * tl.minimum(tl.maximum(acc + 3.0, 0.0), 6.0) / 6.0
    return acc


@triton.jit
def epilogue(acc, n, c, p, mask,
             q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,
             q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p,
             E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr,
             E3: tl.constexpr, E4: tl.constexpr, E5: tl.constexpr):
    """Steps E0..E5 ("none" = skip) with operand slots q0..q5, in order."""
    acc = _step(acc, E0, q0, q0n, q0c, q0p, n, c, p, mask)
    acc = _step(acc, E1, q1, q1n, q1c, q1p, n, c, p, mask)
    acc = _step(acc, E2, q2, q2n, q2c, q2p, n, c, p, mask)
    acc = _step(acc, E3, q3, q3n, q3c, q3p, n, c, p, mask)
    acc = _step(acc, E4, q4, q4n, q4c, q4p, n, c, p, mask)
    acc = _step(acc, E5, q5, q5n, q5c, q5p, n, c, p, mask)
    return acc


# ---- host side: steps -> kernel arguments -----------------------------------------------------------------

class Epilogue:
    """Kernel arguments for a step list: ``args`` (4 per slot: pointer, n/c/p strides) and ``codes`` (E0..E5)."""

    def __init__(self, steps, out_shape, dummy: torch.Tensor, fold: bool = False):
        steps = list(steps)
        if len(steps) > MAX_STEPS:
            raise ValueError(f"{len(steps)} epilogue steps; at most {MAX_STEPS} fit one kernel")
        self.args, self.codes = [], {}
        for k in range(MAX_STEPS):
            op, t = steps[k] if k < len(steps) else ("none", None)
            if op in BINARY:
                t, (sn, sc, sp) = ncp(as_operand(t, dummy.device), out_shape)
                if fold:  # an (N, C) output runs as (1, C, N): see common.fold_batch
                    sn, sp = 0, sn
                self.args += [t, sn, sc, sp]
            elif op in ACTIVATIONS or op == "none":
                self.args += [dummy, 0, 0, 0]
            else:
                raise ValueError(f"unknown epilogue step {op!r}; known: {BINARY + ACTIVATIONS}")
            self.codes[f"E{k}"] = op


def as_operand(t, device) -> torch.Tensor:
    if isinstance(t, (int, float)):
        return scalar(float(t), str(device))
    if t.device.type != torch.device(device).type:
        raise ValueError(f"epilogue operand on {t.device}, output on {device}")
    return t


# ---- reference (float64, torch ops) ------------------------------------------------------------------------

def reference(y: torch.Tensor, steps) -> torch.Tensor:
    """The steps applied in float64 with the textbook formulas."""
    y = y.double()
    for op, t in steps:
        if op in BINARY:
            t = torch.as_tensor(t, dtype=torch.float64).to(y.device) if isinstance(t, (int, float)) else t.double()
            if t.dim() == 1 and y.dim() > 1 and t.numel() == y.shape[1] and t.numel() > 1:
                t = t.reshape(1, -1, *([1] * (y.dim() - 2)))
            y = y + t if op == "add" else y * t
        else:
            y = activation_reference(op, y)
    return y


def activation_reference(op: str, x: torch.Tensor) -> torch.Tensor:
    sig = lambda v: 1.0 / (1.0 + torch.exp(-v))  # noqa: E731
    if op == "relu":
        return x.clamp(min=0)
    if op == "relu2":
        return x.clamp(min=0) ** 2
    if op == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if op == "gelu_tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if op == "silu":
        return x * sig(x)
    if op == "sigmoid":
        return sig(x)
    if op == "tanh":
        return torch.tanh(x)
    if op == "hardswish":
        return x * (x + 3.0).clamp(0.0, 6.0) / 6.0
    raise ValueError(op)
