"""Linear over the channel axis (a 1x1 convolution on images) with the fused epilogue: out[n, o, p] =
sum_c W[o, c] x[n, c, p], then bias / activation / layer scale / residual on the tile before the one store.

One program computes a (BLOCK_M positions x BLOCK_N output channels) tile of one sample with tl.dot (tensor
cores for bf16 / fp16, accumulated in fp32; fp32 inputs use exact IEEE products, not TF32). x is read through
its strides, so NCHW (positions contiguous) and NHWC (channels contiguous) need no transpose; a (N, C) input
runs with its rows as positions.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from codegen.triton import epilogue as epi
from codegen.triton.common import check_out, config, fold_batch, ncp, ncp_strides, tuned


# ---- kernel -----------------------------------------------------------------------------------------------

@tuned([config(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=s) for bm, bn, bk, w, s in
        ((128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (128, 32, 32, 4, 4),
         (64, 64, 32, 4, 4), (256, 64, 32, 8, 3), (64, 64, 64, 4, 3))],  # (128, 128, 64) spilled (aot.py)
       config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32), key=["P", "K", "O", "sxc"])
@triton.jit
def linear_kernel(
    x_ptr, w_ptr, out_ptr,  # input (N, K, P) any strides; weight (O, K) contiguous; output (N, O, P)
    P, K, O,  # positions, input channels (reduced), output channels
    sxn, sxc, sxp,  # input strides
    son, soc, sop,  # output strides
    q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,  # epilogue operand slots (see epilogue.py)
    q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p,
    E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr, E3: tl.constexpr, E4: tl.constexpr, E5: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 inputs: exact products (no TF32)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(2).to(tl.int64)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    mmask, omask = m < P, o < O
    a_ptrs = x_ptr + n * sxn + m[:, None] * sxp + kk[None, :] * sxc
    b_ptrs = w_ptr + o[None, :] * K + kk[:, None]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + kk) < K
        a = tl.load(a_ptrs, mask=mmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & omask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * sxc
        b_ptrs += BLOCK_K
    mask = mmask[:, None] & omask[None, :]
    acc = epi.epilogue(acc, n, o[None, :], m[:, None], mask,
                       q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,
                       q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p, E0, E1, E2, E3, E4, E5)
    tl.store(out_ptr + n * son + o[None, :] * soc + m[:, None] * sop, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---- wrapper ----------------------------------------------------------------------------------------------

def linear(x: torch.Tensor, weight: torch.Tensor, steps=(), out: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, *S) or (N, C), weight (O, C) (or (O, C, 1, ...) from a 1x1 conv) -> (N, O, *S) in x's layout,
    then the epilogue steps (a bias is the step ("add", bias))."""
    weight = weight.reshape(weight.shape[0], -1).to(x.dtype).contiguous()
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match {x.shape[1]} input channels")
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    out = check_out(out, x, shape)
    x, xs = ncp(x, tuple(x.shape))
    n, p, ((sxn, sxc, sxp), (son, soc, sop)) = fold_batch(shape, xs, ncp_strides(out, shape))
    e = epi.Epilogue(steps, shape, out, fold=n != shape[0])
    k, o = x.shape[1], weight.shape[0]
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_M"]), triton.cdiv(o, meta["BLOCK_N"]), n)  # noqa: E731
    linear_kernel[grid](x, weight, out, p, k, o, sxn, sxc, sxp, son, soc, sop, *e.args, **e.codes,
                        IEEE=x.dtype == torch.float32)
    return out


# ---- reference --------------------------------------------------------------------------------------------

def reference(x, weight, steps=()):
    y = torch.einsum("nc...,oc->no...", x.double(), weight.reshape(weight.shape[0], -1).double())
    return epi.reference(y, steps)


# ---- test on an odd shape ---------------------------------------------------------------------------------

def self_test(device="cuda", dtype=torch.float32, check: bool = True) -> float:
    """(2, 37, 7, 9) -> 19 channels + bias + gelu + layer scale + residual, both layouts; (13, 37) vectors."""
    from codegen.triton.common import channels_last, close, poisoned

    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, w, b, gamma, res = mk(2, 37, 7, 9), mk(19, 37) / 6, mk(19), mk(19), mk(2, 19, 7, 9)
    steps = [("add", b), ("gelu", None), ("mul", gamma), ("add", res)]
    worst = 0.0
    for inp, st in ((x, steps), (channels_last(x), steps), (mk(13, 37), [("add", b), ("relu2", None)])):
        want = reference(inp, w, st)
        got = linear(inp, w, st, out=poisoned(inp, want.shape))
        ok, err = close(got, want, dtype)
        assert ok or not check, f"linear self-test failed ({tuple(inp.shape)}): worst error {err:.3g} x tolerance"
        worst = max(worst, err)
    return worst


# ---- benchmark cases --------------------------------------------------------------------------------------

def benchmark_cases(device="cuda", dtype=torch.bfloat16, n=64, size=56):
    """ConvNeXt-T stage-1 MLP layers at 64 x 56 x 56, channels-last: 96 -> 384 + bias + GELU, and
    384 -> 96 + bias + layer scale + residual."""
    x = torch.randn(n, 96, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    h = torch.randn(n, 384, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(384, 96, device=device, dtype=dtype) / 10, torch.randn(384, device=device, dtype=dtype)
    w2, b2 = torch.randn(96, 384, device=device, dtype=dtype) / 20, torch.randn(96, device=device, dtype=dtype)
    gamma = torch.full((96,), 1e-6, device=device, dtype=dtype)
    f = torch.nn.functional
    eager1 = lambda: f.gelu(f.linear(x.permute(0, 2, 3, 1), w1, b1)).permute(0, 3, 1, 2)  # noqa: E731
    eager2 = lambda: (f.linear(h.permute(0, 2, 3, 1), w2, b2) * gamma).permute(0, 3, 1, 2) + x  # noqa: E731
    e = x.element_size()
    return [("linear 96->384 +bias+gelu", lambda: linear(x, w1, [("add", b1), ("gelu", None)]), eager1,
             (x.numel() + h.numel()) * e),
            ("linear 384->96 +bias+ls+res", lambda: linear(h, w2, [("add", b2), ("mul", gamma), ("add", x)]),
             eager2, (h.numel() + 2 * x.numel()) * e)]
