"""Elementwise chains with broadcasting in one kernel: out = steps(x), e.g. x * s + r -> gelu -> * sigmoid(g).

The chain input x and every operand broadcast to the output shape (N, C, *S) through their strides (0 along
broadcast dims), so a per-channel scale, a (N, C, 1, 1) gate or a full residual cost one read each and the
intermediate values never touch memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from codegen.triton import epilogue as epi
from codegen.triton.common import check_out, config, fold_batch, ncp, ncp_strides, tuned


# ---- kernel -----------------------------------------------------------------------------------------------

@tuned([config(BLOCK=1024, num_warps=4), config(BLOCK=2048, num_warps=8), config(BLOCK=4096, num_warps=8)],
       config(BLOCK=256), key=["total", "C", "P", "soc"])
@triton.jit
def elementwise_kernel(
    x_ptr, out_ptr,  # chain input (broadcast to the output), output
    total, C, P,  # output elements N*C*P, channels, spatial positions
    sxn, sxc, sxp,  # x strides in (n, c, p), 0 where x broadcasts
    son, soc, sop,  # output strides
    q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,  # epilogue operand slots (see epilogue.py)
    q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p,
    E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr, E3: tl.constexpr, E4: tl.constexpr, E5: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # walk the output in NHWC order (c fastest) instead of NCHW (p fastest)
    BLOCK: tl.constexpr,  # elements per program
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    if CHANNELS_LAST:
        c = i % C
        p = (i // C) % P
    else:
        p = i % P
        c = (i // P) % C
    n = i // (C * P)
    acc = tl.load(x_ptr + n * sxn + c * sxc + p * sxp, mask=mask, other=0.0).to(tl.float32)
    acc = epi.epilogue(acc, n, c, p, mask,
                       q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,
                       q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p, E0, E1, E2, E3, E4, E5)
    tl.store(out_ptr + n * son + c * soc + p * sop, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---- wrapper ----------------------------------------------------------------------------------------------

def out_shape_of(x: torch.Tensor, steps) -> tuple:
    """The broadcast of x with every tensor operand (a per-channel (C,) vector counts as (1, C, 1, ...))."""
    shapes = [tuple(x.shape)]
    for op, t in steps:
        if op in epi.BINARY and isinstance(t, torch.Tensor) and t.dim() == x.dim():
            shapes.append(tuple(t.shape))
    return tuple(torch.broadcast_shapes(*shapes))


def elementwise(x: torch.Tensor, steps, out: torch.Tensor | None = None, like: torch.Tensor | None = None):
    """Apply the step list to x (see epilogue.py) in one kernel. The output takes the memory format of the
    largest of x and the operands (`like` overrides), and x's dtype."""
    shape = out_shape_of(x, steps)
    like = like if like is not None else _largest(x, steps, shape)
    out = check_out(out, like, shape, x.dtype)
    x, xs = ncp(x, shape)
    n, p, ((sxn, sxc, sxp), (son, soc, sop)) = fold_batch(shape, xs, ncp_strides(out, shape))
    e = epi.Epilogue(steps, shape, out, fold=n != shape[0])
    c = shape[1]
    cl = bool(soc == 1 and c > 1 and p > 1)
    total = n * c * p
    grid = lambda meta: (triton.cdiv(total, meta["BLOCK"]),)  # noqa: E731
    elementwise_kernel[grid](x, out, total, c, p, sxn, sxc, sxp, son, soc, sop, *e.args, **e.codes,
                             CHANNELS_LAST=cl)
    return out


def _largest(x, steps, shape):
    for t in [x] + [t for op, t in steps if op in epi.BINARY and isinstance(t, torch.Tensor)]:
        if tuple(t.shape) == tuple(shape):
            return t
    return x


# ---- reference --------------------------------------------------------------------------------------------

def reference(x: torch.Tensor, steps) -> torch.Tensor:
    return epi.reference(x, steps)


# ---- test on an odd shape ---------------------------------------------------------------------------------

def self_test(device="cuda", dtype=torch.float32, check: bool = True) -> float:
    """x * gamma + residual -> gelu -> * sigmoid-gated g on (2, 5, 7, 9); returns the worst error / tolerance."""
    from codegen.triton.common import close, poisoned

    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, gamma, res, gate = mk(2, 5, 7, 9), mk(5), mk(2, 5, 7, 9), mk(2, 5, 1, 1)
    steps = [("mul", gamma), ("add", res), ("gelu", None), ("mul", gate)]
    out = elementwise(x, steps, out=poisoned(x, x.shape))
    ok, worst = close(out, reference(x, steps), dtype)
    assert ok or not check, f"elementwise self-test failed: worst error {worst:.3g} x tolerance"
    return worst


# ---- benchmark cases --------------------------------------------------------------------------------------

def benchmark_cases(device="cuda", dtype=torch.bfloat16, n=64, size=56):
    """(name, ours, eager, bytes moved) for a layer-scale + residual + GELU chain at ConvNeXt-T stage-1 size."""
    x = torch.randn(n, 96, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    res, gamma = torch.randn_like(x), torch.randn(96, device=device, dtype=dtype)
    steps = [("mul", gamma), ("add", res), ("gelu", None)]
    eager = lambda: torch.nn.functional.gelu(x * gamma.reshape(1, -1, 1, 1) + res)  # noqa: E731
    return [("elementwise mul+add+gelu", lambda: elementwise(x, steps), eager, 3 * x.numel() * x.element_size())]
