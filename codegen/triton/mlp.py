"""[LayerNorm ->] linear -> activation -> linear in one kernel: the MLP of ConvNeXt / MetaFormer blocks, with
the fused epilogue (bias, layer scale, residual) after the second linear.

One program owns BLOCK_M positions of one sample with all C input and all O output channels in registers. It
walks the hidden dimension in BLOCK_H chunks: h = act(x W1[chunk]^T + b1[chunk]) is computed, cast to the input
precision and immediately multiplied into the output accumulator by W2[:, chunk]^T. The 4C-wide hidden tensor
never reaches memory: per position the kernel reads C values and writes O (a two-kernel MLP also writes and
reads 4C). Optionally the input tile is normalized first (the block's LayerNorm). Fits when C, O <= 256.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from codegen.triton import epilogue as epi
from codegen.triton.common import check_out, config, fold_batch, ncp, ncp_strides, pow2, tuned
from codegen.triton.norm import normalize

MAX_CHANNELS = 256  # C and O each; the x tile and the accumulator stay in registers


# ---- kernel -----------------------------------------------------------------------------------------------

@tuned([config(BLOCK_M=bm, BLOCK_H=bh, num_warps=w, num_stages=s) for bm, bh, w, s in
        ((64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3))],
       config(BLOCK_M=32, BLOCK_H=32), key=["P", "C", "HID", "O", "sxc"])
@triton.jit
def mlp_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,  # x (N, C, P); w1 (HID, C); b1 (HID,); w2 (O, HID); b2 (O,)
    nw_ptr, nb_ptr, eps,  # prologue norm weight, bias (C,), epsilon (used when NORM != "none")
    P, C, HID, O,  # positions, input, hidden and output channels
    sxn, sxc, sxp,  # input strides
    son, soc, sop,  # output strides
    q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,  # epilogue operand slots (see epilogue.py)
    q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p,
    E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr, E3: tl.constexpr, E4: tl.constexpr, E5: tl.constexpr,
    ACT: tl.constexpr,  # activation between the linears (an epilogue activation name)
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    NORM: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr,  # "none" / "ln" / "rms" on the input
    IEEE: tl.constexpr,  # fp32 inputs: exact products (no TF32)
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,  # >= C, >= O
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,  # positions per program, hidden chunk
):
    n = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_C)
    o = tl.arange(0, BLOCK_O)
    hh = tl.arange(0, BLOCK_H)
    mmask, cmask, omask = m < P, c < C, o < O
    a = tl.load(x_ptr + n * sxn + m[:, None] * sxp + c[None, :] * sxc, mask=mmask[:, None] & cmask[None, :],
                other=0.0)
    if NORM != "none":
        a = normalize(a.to(tl.float32), c, cmask, C, eps, nw_ptr, nb_ptr, NORM, HAS_NW, HAS_NB)
        a = a.to(x_ptr.dtype.element_ty)
    acc = tl.full((BLOCK_M, BLOCK_O), 0.0, tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        h = h0 + hh
        hmask = h < HID
        w1 = tl.load(w1_ptr + h[None, :] * C + c[:, None], mask=cmask[:, None] & hmask[None, :], other=0.0)
        if IEEE:
            t = tl.dot(a, w1, input_precision="ieee")
        else:
            t = tl.dot(a, w1)
        if HAS_B1:
            t += tl.load(b1_ptr + h, mask=hmask, other=0.0).to(tl.float32)[None, :]
        t = epi._step(t, ACT, b1_ptr, 0, 0, 0, n, h[None, :], m[:, None], mmask[:, None] & hmask[None, :])
        w2 = tl.load(w2_ptr + o[None, :] * HID + h[:, None], mask=hmask[:, None] & omask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(t.to(w2.dtype), w2, acc, input_precision="ieee")
        else:
            acc = tl.dot(t.to(w2.dtype), w2, acc)
    if HAS_B2:
        acc += tl.load(b2_ptr + o, mask=omask, other=0.0).to(tl.float32)[None, :]
    mask = mmask[:, None] & omask[None, :]
    acc = epi.epilogue(acc, n, o[None, :], m[:, None], mask,
                       q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,
                       q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p, E0, E1, E2, E3, E4, E5)
    tl.store(out_ptr + n * son + o[None, :] * soc + m[:, None] * sop, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---- wrapper ----------------------------------------------------------------------------------------------

def mlp(x: torch.Tensor, w1, b1, act: str, w2, b2, *, norm: str | None = None, norm_weight=None, norm_bias=None,
        eps: float = 1e-6, steps=(), out: torch.Tensor | None = None) -> torch.Tensor:
    """[norm ->] linear(w1, b1) -> act -> linear(w2, b2) -> steps on x (N, C, *S) or (N, C); x's layout."""
    if act not in epi.ACTIVATIONS:
        raise ValueError(f"mlp activation {act!r}; known: {epi.ACTIVATIONS}")
    w1 = w1.reshape(w1.shape[0], -1).to(x.dtype).contiguous()
    w2 = w2.reshape(w2.shape[0], -1).to(x.dtype).contiguous()
    c, hid, o = x.shape[1], w1.shape[0], w2.shape[0]
    if w1.shape[1] != c or w2.shape[1] != hid:
        raise ValueError(f"weights {tuple(w1.shape)}, {tuple(w2.shape)} do not chain from {c} channels")
    if max(c, o) > MAX_CHANNELS:
        raise ValueError(f"fused MLP holds C={c} and O={o} in registers; at most {MAX_CHANNELS}")
    shape = (x.shape[0], o, *x.shape[2:])
    out = check_out(out, x, shape)
    x, xs = ncp(x, tuple(x.shape))
    n, p, ((sxn, sxc, sxp), (son, soc, sop)) = fold_batch(shape, xs, ncp_strides(out, shape))
    e = epi.Epilogue(steps, shape, out, fold=n != shape[0])
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_M"]), n)  # noqa: E731
    mlp_kernel[grid](
        x, w1, b1 if b1 is not None else w1, w2, b2 if b2 is not None else w2, out,
        norm_weight if norm_weight is not None else w1, norm_bias if norm_bias is not None else w1, float(eps),
        p, c, hid, o, sxn, sxc, sxp, son, soc, sop, *e.args, **e.codes,
        ACT=act, HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        NORM=norm or "none", HAS_NW=norm_weight is not None, HAS_NB=norm_bias is not None,
        IEEE=x.dtype == torch.float32, BLOCK_C=pow2(c, 16), BLOCK_O=pow2(o, 16))
    return out


# ---- reference --------------------------------------------------------------------------------------------

def reference(x, w1, b1, act, w2, b2, *, norm=None, norm_weight=None, norm_bias=None, eps=1e-6, steps=()):
    """float64 einsums; the hidden tensor is not rounded (the kernel rounds it to the input precision)."""
    from codegen.triton.norm import reference as norm_reference

    x = x.double()
    if norm is not None:
        x = norm_reference(x, norm, norm_weight, norm_bias, eps)
    bias = lambda b, y: 0 if b is None else b.double().reshape(1, -1, *([1] * (y.dim() - 2)))  # noqa: E731
    h = torch.einsum("nc...,oc->no...", x, w1.reshape(w1.shape[0], -1).double())
    h = epi.activation_reference(act, h + bias(b1, h))
    y = torch.einsum("nc...,oc->no...", h, w2.reshape(w2.shape[0], -1).double())
    return epi.reference(y + bias(b2, y), steps)


# ---- test on an odd shape ---------------------------------------------------------------------------------

def self_test(device="cuda", dtype=torch.float32, check: bool = True) -> float:
    """ConvNeXt-style LN -> 5 -> 21 -> gelu -> 5 + bias + layer scale + residual on (2, 5, 7, 9), both layouts;
    StarReLU-free MetaFormer-style relu2 MLP on (11, 5) vectors. Returns the worst error / tolerance."""
    from codegen.triton.common import channels_last, close, poisoned

    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, res = mk(2, 5, 7, 9), mk(2, 5, 7, 9)
    w1, b1, w2, b2, gamma, lw, lb = mk(21, 5) / 2, mk(21), mk(5, 21) / 4, mk(5), mk(5), mk(5), mk(5)
    steps = [("mul", gamma), ("add", res)]
    worst = 0.0
    for inp, kw in ((x, dict(norm="ln", norm_weight=lw, norm_bias=lb, steps=steps)),
                    (channels_last(x), dict(norm="ln", norm_weight=lw, norm_bias=lb, steps=steps)),
                    (mk(11, 5), dict(steps=[("relu", None)]))):
        act = "gelu" if inp.dim() > 2 else "relu2"
        want = reference(inp, w1, b1, act, w2, b2, **kw)
        got = mlp(inp, w1, b1, act, w2, b2, out=poisoned(inp, want.shape), **kw)
        ok, err = close(got, want, dtype)
        assert ok or not check, f"mlp self-test failed ({tuple(inp.shape)}): worst error {err:.3g} x tolerance"
        worst = max(worst, err)
    return worst


# ---- benchmark cases --------------------------------------------------------------------------------------

def benchmark_cases(device="cuda", dtype=torch.bfloat16, n=64, size=56):
    """ConvNeXt-T stage-1 MLP at 64 x 56 x 56 channels-last: LN -> 96 -> 384 -> GELU -> 96 -> ls -> + x."""
    x = torch.randn(n, 96, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(384, 96, device=device, dtype=dtype) / 10, torch.randn(384, device=device, dtype=dtype)
    w2, b2 = torch.randn(96, 384, device=device, dtype=dtype) / 20, torch.randn(96, device=device, dtype=dtype)
    lw, lb = torch.ones(96, device=device, dtype=dtype), torch.zeros(96, device=device, dtype=dtype)
    gamma = torch.full((96,), 1e-6, device=device, dtype=dtype)
    f = torch.nn.functional

    def eager():
        t = f.layer_norm(x.permute(0, 2, 3, 1), (96,), lw, lb, 1e-6)
        return (f.linear(f.gelu(f.linear(t, w1, b1)), w2, b2) * gamma).permute(0, 3, 1, 2) + x

    ours = lambda: mlp(x, w1, b1, "gelu", w2, b2, norm="ln", norm_weight=lw, norm_bias=lb,  # noqa: E731
                       steps=[("mul", gamma), ("add", x)])
    return [("ln + mlp 96->384->96 +ls+res", ours, eager, 3 * x.numel() * x.element_size())]
