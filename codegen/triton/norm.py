"""LayerNorm and RMSNorm over the channel axis at every position, with the fused epilogue.

One program holds a (BLOCK_P positions x all C channels) tile: for channels-last input a row of the tile is
contiguous; for channels-first (ConvNeXt's "LayerNorm2d") the columns are, and the reduction still runs over
the tile's channel axis, so neither layout needs a transpose. Statistics in fp32 (biased variance, as
nn.LayerNorm): y = (x - mean) / sqrt(var + eps) * w + b; RMSNorm: y = x / sqrt(mean(x^2) + eps) * w.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from codegen.triton import epilogue as epi
from codegen.triton.common import check_out, config, fold_batch, ncp, ncp_strides, pow2, tuned

NORMS = ("ln", "rms")
MAX_CHANNELS = 16384  # the whole channel axis lives in one tile


# ---- kernel -----------------------------------------------------------------------------------------------

@triton.jit
def normalize(acc, c, cmask, C, eps, w_ptr, b_ptr,
              NORM: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Normalize the fp32 tile acc (positions x channels) along axis 1; c: channel index (1-D), cmask: c < C.
    Shared with dwconv.py and mlp.py, which normalize their tile before their own epilogue."""
    keep = cmask[None, :]
    if NORM == "ln":
        mean = epi.row_sum(tl.where(keep, acc, 0.0)) / C
        acc = tl.where(keep, acc - mean[:, None], 0.0)
    else:
        acc = tl.where(keep, acc, 0.0)
    var = epi.row_sum(acc * acc) / C
    acc = acc * tl.rsqrt(var + eps)[:, None]
    if HAS_W:
        acc = acc * tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        acc = acc + tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def norm_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,  # input (N, C, P) any strides; weight, bias (C,) (or unused); output
    C, P, eps,  # channels (reduced), positions, epsilon
    sxn, sxc, sxp,  # input strides
    son, soc, sop,  # output strides
    q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,  # epilogue operand slots (see epilogue.py)
    q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p,
    E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr, E3: tl.constexpr, E4: tl.constexpr, E5: tl.constexpr,
    NORM: tl.constexpr,  # "ln" or "rms"
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,  # affine weight / bias present
    BLOCK_C: tl.constexpr,  # >= C: the whole channel axis
    BLOCK_P: tl.constexpr,  # positions per program
):
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    pmask, cmask = p < P, c < C
    mask = pmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + p[:, None] * sxp, mask=mask, other=0.0).to(tl.float32)
    acc = normalize(x, c, cmask, C, eps, w_ptr, b_ptr, NORM, HAS_W, HAS_B)
    acc = epi.epilogue(acc, n, c[None, :], p[:, None], mask,
                       q0, q0n, q0c, q0p, q1, q1n, q1c, q1p, q2, q2n, q2c, q2p,
                       q3, q3n, q3c, q3p, q4, q4n, q4c, q4p, q5, q5n, q5c, q5p, E0, E1, E2, E3, E4, E5)
    tl.store(out_ptr + n * son + c[None, :] * soc + p[:, None] * sop, acc.to(out_ptr.dtype.element_ty), mask=mask)


def rows_for(block_c: int, budget: int) -> int:
    """Positions per tile so that a tile holds about `budget` elements (at least 1)."""
    return max(1, budget // block_c)


@functools.lru_cache(maxsize=None)
def _kernel_for(block_c: int):
    """The autotuned launcher for one channel bucket: BLOCK_C is fixed by C, the tile height is tuned."""
    gpu = [config(BLOCK_P=rows_for(block_c, budget), num_warps=w) for budget, w in ((1024, 4), (2048, 4),
                                                                                    (4096, 8), (8192, 8))]
    return tuned(gpu, config(BLOCK_P=rows_for(block_c, 2048)), key=["C", "P", "sxc"])(norm_kernel)


# ---- wrapper ----------------------------------------------------------------------------------------------

def norm(x: torch.Tensor, kind: str = "ln", weight=None, bias=None, eps: float = 1e-5, steps=(),
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Normalize x (N, C, *S) over C at each position, then apply the epilogue steps; output in x's layout."""
    if kind not in NORMS:
        raise ValueError(f"norm kind {kind!r}; known: {NORMS}")
    shape = tuple(x.shape)
    if shape[1] > MAX_CHANNELS:
        raise ValueError(f"{shape[1]} channels: more than {MAX_CHANNELS} do not fit one tile")
    out = check_out(out, x, shape)
    x, xs = ncp(x, shape)
    n, p, ((sxn, sxc, sxp), (son, soc, sop)) = fold_batch(shape, xs, ncp_strides(out, shape))
    e = epi.Epilogue(steps, shape, out, fold=n != shape[0])
    block_c = pow2(shape[1])
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_P"]), n)  # noqa: E731
    _kernel_for(block_c)[grid](
        x, weight if weight is not None else x, bias if bias is not None else x, out,
        shape[1], p, float(eps), sxn, sxc, sxp, son, soc, sop, *e.args, **e.codes,
        NORM=kind, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_C=block_c)
    return out


# ---- reference --------------------------------------------------------------------------------------------

def reference(x, kind="ln", weight=None, bias=None, eps=1e-5, steps=()):
    """Textbook formulas in float64 over dim 1."""
    x = x.double()
    shape = (1, -1, *([1] * (x.dim() - 2)))
    if kind == "ln":
        x = x - x.mean(1, keepdim=True)
    y = x / torch.sqrt((x * x).mean(1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.double().reshape(shape)
    if bias is not None:
        y = y + bias.double().reshape(shape)
    return epi.reference(y, steps)


# ---- test on an odd shape ---------------------------------------------------------------------------------

def self_test(device="cuda", dtype=torch.float32, check: bool = True) -> float:
    """LN (channels-last) and RMS (channels-first) on (2, 5, 7, 9) with an epilogue; worst error / tolerance."""
    from codegen.triton.common import channels_last, close, poisoned

    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, w, b, res = mk(2, 5, 7, 9), mk(5), mk(5), mk(2, 5, 7, 9)
    worst = 0.0
    for kind, inp, steps in (("ln", channels_last(x), [("gelu", None), ("add", res)]), ("rms", x, [("mul", w)])):
        out = norm(inp, kind, w, b if kind == "ln" else None, 1e-6, steps, out=poisoned(inp, inp.shape))
        ok, err = close(out, reference(inp, kind, w, b if kind == "ln" else None, 1e-6, steps), dtype)
        assert ok or not check, f"norm self-test ({kind}) failed: worst error {err:.3g} x tolerance"
        worst = max(worst, err)
    return worst


# ---- benchmark cases --------------------------------------------------------------------------------------

def benchmark_cases(device="cuda", dtype=torch.bfloat16, n=64, size=56):
    """LayerNorm over 96 channels at 64 x 56 x 56, channels-last and channels-first."""
    out = []
    for name, fmt in (("ln channels-last", torch.channels_last), ("ln channels-first", torch.contiguous_format)):
        x = torch.randn(n, 96, size, size, device=device, dtype=dtype).contiguous(memory_format=fmt)
        w, b = torch.randn(96, device=device, dtype=dtype), torch.randn(96, device=device, dtype=dtype)
        eager = (lambda x=x, w=w, b=b: torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (96,), w, b, 1e-6)
                 .permute(0, 3, 1, 2))
        out.append((name, lambda x=x, w=w, b=b: norm(x, "ln", w, b, 1e-6), eager, 2 * x.numel() * x.element_size()))
    return out
