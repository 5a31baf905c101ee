"""Depthwise convolution, 1-D and 2-D, any kernel size, stride, dilation and padding, channels-first or
channels-last, with bias, an optional LayerNorm / RMSNorm over the channels and the fused epilogue.

One program computes a (BLOCK_P output positions x BLOCK_C channels) tile of one sample: for every kernel tap
(kh, kw) it loads the shifted input tile (zero outside the map) and one weight per channel, and accumulates in
fp32. The tap loops are real loops (not unrolled) with runtime bounds, so one binary serves every kernel size,
stride and dilation (a search over k = 3..31 compiles once per epilogue; Triton still specialises arguments
equal to 1). Strides come from the tensors, so NCHW (positions contiguous) and NHWC (channels contiguous) share
the kernel; Triton's coalescing follows whichever stride is 1. With NORM the tile spans all channels
(BLOCK_C >= C) and the normalized result is stored directly: ConvNeXt's dwconv -> LayerNorm in one pass over
memory.
1-D input (N, C, L) runs as H = 1.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from archdsl.ops.shapes import same_padding
from codegen.triton import epilogue as epi
from codegen.triton.common import check_out, config, ncp_strides, pow2, tuned
from codegen.triton.norm import normalize, rows_for

FUSED_NORM_MAX_CHANNELS = 1024  # beyond this a (positions x all channels) tile spills; run the norm apart


# ---- kernel -----------------------------------------------------------------------------------------------

@triton.jit
def dwconv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,  # input (N, C/MULT, H, W); weight (C, 1, KH, KW) contiguous; bias (C,); output
    nw_ptr, nb_ptr, eps,  # fused norm weight, bias (C,), epsilon (used when NORM != "none")
    C, H, W, OH, OW,  # output channels, input and output spatial sizes
    sxn, sxc, sxh, sxw,  # input strides
    son, soc, sop,  # output strides in (n, c, p) with p = oh * OW + ow
    q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,  # epilogue operand slots (see epilogue.py)
    q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p,
    KH, KW,  # kernel size (runtime: one binary serves every size; the tap loops are loops either way)
    SH, SW,  # stride (Triton specialises a stride of 1 by itself)
    DH, DW,  # dilation
    PH, PW,  # padding before the first row / column
    MULT,  # channel multiplier: output channel c reads input channel c // MULT
    E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr, E3: tl.constexpr, E4: tl.constexpr, E5: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr,  # "none" / "ln" / "rms" over channels
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: output positions x channels
):
    n = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask, cmask = p < OH * OW, c < C
    oh, ow = p // OW, p % OW
    x_base = x_ptr + n * sxn + (c // MULT)[None, :] * sxc
    w_base = w_ptr + c * (KH * KW)
    acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    for kh in range(KH):
        ih = oh * SH - PH + kh * DH
        row_ok = pmask & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = ow * SW - PW + kw * DW
            ok = row_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_base + (ih * sxh + iw * sxw)[:, None], mask=ok[:, None] & cmask[None, :], other=0.0)
            wv = tl.load(w_base + (kh * KW + kw), mask=cmask, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if NORM != "none":
        acc = normalize(acc, c, cmask, C, eps, nw_ptr, nb_ptr, NORM, HAS_NW, HAS_NB)
    mask = pmask[:, None] & cmask[None, :]
    acc = epi.epilogue(acc, n, c[None, :], p[:, None], mask,
                       q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,
                       q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p, E0, E1, E2, E3, E4, E5)
    tl.store(out_ptr + n * son + c[None, :] * soc + p[:, None] * sop, acc.to(out_ptr.dtype.element_ty), mask=mask)


# Tiles for both layouts: tall and narrow suits NCHW (positions contiguous), wide suits NHWC (channels).
_GPU = [config(BLOCK_P=bp, BLOCK_C=bc, num_warps=w) for bp, bc, w in
        ((256, 4, 4), (128, 8, 4), (64, 16, 4), (32, 32, 4), (16, 64, 4), (64, 32, 4), (32, 64, 4), (128, 32, 8))]
_KEY = ["C", "H", "W", "OH", "OW", "KH", "KW", "sxc"]
_plain = tuned(_GPU, config(BLOCK_P=128, BLOCK_C=8), key=_KEY)(dwconv_kernel)


@functools.lru_cache(maxsize=None)
def _fused_norm_kernel(block_c: int):
    """With a fused norm BLOCK_C is fixed (all channels); tune the tile height only."""
    gpu = [config(BLOCK_P=rows_for(block_c, budget), num_warps=w) for budget, w in ((1024, 4), (2048, 4),
                                                                                    (4096, 8))]
    return tuned(gpu, config(BLOCK_P=rows_for(block_c, 1024)), key=_KEY)(dwconv_kernel)


# ---- wrapper ----------------------------------------------------------------------------------------------

def out_size(size, k, stride, dilation, pad_lo, pad_hi):
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def dwconv(x: torch.Tensor, weight: torch.Tensor, bias=None, *, stride=1, padding=None, dilation=1,
           norm: str | None = None, norm_weight=None, norm_bias=None, eps: float = 1e-6, steps=(),
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv of x (N, C, L) or (N, C, H, W) with weight (C * mult, 1, *k), then bias, then the optional
    norm over channels, then the epilogue steps. padding: per-dim (lo, hi) pairs, ints, or None (= same for odd
    k: dilation * (k - 1) // 2 each side). Output in x's memory format."""
    nd = x.dim() - 2
    if nd not in (1, 2):
        raise ValueError(f"dwconv takes 1-D or 2-D input, got shape {tuple(x.shape)}")
    k = tuple(weight.shape[2:])
    stride, dilation = _per_dim(stride, nd), _per_dim(dilation, nd)
    pads = _pads(padding, k, dilation, nd)
    cin, cout = x.shape[1], weight.shape[0]
    if cout % cin or weight.shape[1] != 1:
        raise ValueError(f"weight {tuple(weight.shape)} is not depthwise for {cin} input channels")
    sizes = [out_size(x.shape[2 + i], k[i], stride[i], dilation[i], *pads[i]) for i in range(nd)]
    shape = (x.shape[0], cout, *sizes)
    out = check_out(out, x, shape)
    e = epi.Epilogue(steps, shape, out)
    son, soc, sop = ncp_strides(out, shape)
    if nd == 1:  # (N, C, L) as (N, C, 1, L)
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (1, k[0]), (1, stride[0]), (1, dilation[0]), (0, pads[0][0])
        h, w, oh, ow = 1, x.shape[2], 1, sizes[0]
        sxn, sxc, sxh, sxw = x.stride(0), x.stride(1), 0, x.stride(2)
    else:
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = k, stride, dilation, (pads[0][0], pads[1][0])
        h, w, oh, ow = x.shape[2], x.shape[3], sizes[0], sizes[1]
        sxn, sxc, sxh, sxw = x.stride()
    if norm is not None and cout > FUSED_NORM_MAX_CHANNELS:
        raise ValueError(f"a fused norm over {cout} channels does not fit one tile (max {FUSED_NORM_MAX_CHANNELS})")
    if norm is None:
        kernel = _plain
        grid = lambda meta: (triton.cdiv(oh * ow, meta["BLOCK_P"]),  # noqa: E731
                             triton.cdiv(cout, meta["BLOCK_C"]), shape[0])
        fixed = {}
    else:
        kernel = _fused_norm_kernel(pow2(cout))
        grid = lambda meta: (triton.cdiv(oh * ow, meta["BLOCK_P"]), 1, shape[0])  # noqa: E731
        fixed = {"BLOCK_C": pow2(cout)}
    weight = weight.contiguous()
    kernel[grid](
        x, weight, bias if bias is not None else weight, out,
        norm_weight if norm_weight is not None else weight, norm_bias if norm_bias is not None else weight,
        float(eps), cout, h, w, oh, ow, sxn, sxc, sxh, sxw, son, soc, sop, *e.args,
        kh, kw, sh, sw, dh, dw, ph, pw, cout // cin, **e.codes, HAS_BIAS=bias is not None,
        NORM=norm or "none", HAS_NW=norm_weight is not None, HAS_NB=norm_bias is not None, **fixed)
    return out


def _per_dim(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def _pads(padding, k, dilation, nd):
    """Per-dim (lo, hi): None = keep the size at stride 1 (odd dilated kernels: d * (k - 1) // 2 each side)."""
    if padding is None:
        return list(same_padding(k, dilation))
    items = list(padding) if isinstance(padding, (tuple, list)) else [padding] * nd
    return [tuple(p) if isinstance(p, (tuple, list)) else (int(p), int(p)) for p in items]


# ---- reference --------------------------------------------------------------------------------------------

def reference(x, weight, bias=None, *, stride=1, padding=None, dilation=1, norm=None, norm_weight=None,
              norm_bias=None, eps=1e-6, steps=()):
    """float64 torch.nn.functional.conv{1,2}d with groups = C (then the norm and steps, also in float64)."""
    from codegen.triton.norm import reference as norm_reference

    nd = x.dim() - 2
    k = tuple(weight.shape[2:])
    dilation, stride = _per_dim(dilation, nd), _per_dim(stride, nd)
    pads = _pads(padding, k, dilation, nd)
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    xp = torch.nn.functional.pad(x.double(), flat)
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d)[nd - 1]
    y = conv(xp, weight.double(), bias.double() if bias is not None else None, stride=stride, dilation=dilation,
             groups=x.shape[1])
    if norm is not None:
        return norm_reference(y, norm, norm_weight, norm_bias, eps, steps)
    return epi.reference(y, steps)


# ---- test on an odd shape ---------------------------------------------------------------------------------

def self_test(device="cuda", dtype=torch.float32, check: bool = True) -> float:
    """7x7 / stride 2 dilation 2 / 1-D k=5 / 31x31 and dwconv + LN on odd shapes; worst error / tolerance."""
    from codegen.triton.common import channels_last, close, poisoned

    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x2, x1, res = mk(2, 5, 7, 9), mk(2, 5, 11), mk(2, 5, 7, 9)
    cases = [("7x7 + gelu + residual", x2, mk(5, 1, 7, 7), dict(steps=[("gelu", None), ("add", res)])),
             ("3x3 stride 2 dilation 2, channels-last", channels_last(x2), mk(5, 1, 3, 3),
              dict(stride=2, dilation=2)),
             ("1-D k=5 stride 2", x1, mk(5, 1, 5), dict(stride=2)),
             ("31x31 on 9x8", mk(1, 3, 9, 8), mk(3, 1, 31, 31), {}),
             ("7x7 + ln, channels-last", channels_last(x2), mk(5, 1, 7, 7),
              dict(norm="ln", norm_weight=mk(5), norm_bias=mk(5)))]
    worst = 0.0
    for name, x, w, kw in cases:
        b = mk(w.shape[0])
        want = reference(x, w, b, **kw)
        got = dwconv(x, w, b, out=poisoned(x, want.shape), **kw)
        ok, err = close(got, want, dtype)
        assert ok or not check, f"dwconv self-test failed ({name}): worst error {err:.3g} x tolerance"
        worst = max(worst, err)
    return worst


# ---- benchmark cases --------------------------------------------------------------------------------------

def benchmark_cases(device="cuda", dtype=torch.bfloat16, n=64, size=56):
    """Depthwise 7x7 / 13x13 / 31x31 (+ bias) at 64 x 96 x 56 x 56, channels-last; dwconv 7x7 + LN fused."""
    x = torch.randn(n, 96, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    nbytes = 2 * x.numel() * x.element_size()
    out = []
    for k in (7, 13, 31):
        conv = torch.nn.Conv2d(96, 96, k, padding=k // 2, groups=96).to(device=device, dtype=dtype)
        conv = conv.to(memory_format=torch.channels_last)
        w, b = conv.weight.detach(), conv.bias.detach()
        out.append((f"dwconv {k}x{k}", lambda w=w, b=b: dwconv(x, w, b), lambda conv=conv: conv(x), nbytes))
    conv = torch.nn.Conv2d(96, 96, 7, padding=3, groups=96).to(device=device, dtype=dtype)
    conv = conv.to(memory_format=torch.channels_last)
    lw, lb = torch.ones(96, device=device, dtype=dtype), torch.zeros(96, device=device, dtype=dtype)
    w, b = conv.weight.detach(), conv.bias.detach()
    eager = lambda: (torch.nn.functional.layer_norm(conv(x).permute(0, 2, 3, 1), (96,), lw, lb, 1e-6)  # noqa: E731
                     .permute(0, 3, 1, 2))
    out.append(("dwconv 7x7 + ln", lambda: dwconv(x, w, b, norm="ln", norm_weight=lw, norm_bias=lb), eager, nbytes))
    return out
