"""What the kernel files share: interpreter detection, autotuning configs, the (N, C, P) view of tensors,
output allocation in the input's memory format, and tolerances by precision.

Every kernel indexes tensors as (n, c, p): batch, channel, and p = the flattened spatial position. A tensor of
logical shape (N, C, *S) fits that view when its spatial dims collapse to one stride (true for contiguous
NCHW and for channels-last NHWC alike), so one kernel serves both layouts: it reads the strides.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton

# Read once: TRITON_INTERPRET must be set before the kernel modules are imported, since triton.jit decides at
# decoration (tests/triton/conftest.py sets it). The kernels avoid triton's own @jit library (epilogue.py), so
# it does not matter whether triton itself was imported earlier.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


_TUNED: list = []  # every autotuned launcher, so single_config() can narrow them all
_SINGLE = [False]


def tuned(gpu_configs, interpreter_config, key):
    """triton.autotune over `gpu_configs` on a GPU; one config in the interpreter (autotuning would only cost
    time there: every config would run on the CPU)."""
    configs = [interpreter_config] if INTERPRET else list(gpu_configs)

    def wrap(fn):
        tuner = triton.autotune(configs=configs, key=key)(fn)
        tuner._archdsl_configs = list(tuner.configs)
        if _SINGLE[0]:
            tuner.configs = tuner.configs[:1]
        _TUNED.append(tuner)
        return tuner

    return wrap


@contextlib.contextmanager
def single_config():
    """Within: every autotuned kernel uses its first config (no tuning runs): for correctness checks on a GPU,
    where tuning each small test shape would only cost compile time."""
    _SINGLE[0] = True
    for tuner in _TUNED:
        tuner.configs = tuner._archdsl_configs[:1]
    try:
        yield
    finally:
        _SINGLE[0] = False
        for tuner in _TUNED:
            tuner.configs = list(tuner._archdsl_configs)


def config(num_warps=4, num_stages=None, **meta):
    if num_stages is None:
        return triton.Config(meta, num_warps=num_warps)
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def pow2(n: int, least: int = 1) -> int:
    return max(least, triton.next_power_of_2(int(n)))


# ---- the (N, C, P) view ------------------------------------------------------------------------------------

def ncp_strides(t: torch.Tensor, out_shape) -> tuple[int, int, int]:
    """(n, c, p) strides of `t` broadcast to `out_shape` = (N, C, *S); 0 along broadcast dims.

    `t` may have the output's rank, or be a per-channel vector (C,), or a scalar (1,) / ().
    Raises ValueError when its spatial dims do not collapse to one stride.
    """
    rank = len(out_shape)
    if t.dim() <= 1 and rank > 1 and t.numel() in (1, out_shape[1]) and not (t.dim() == 1 and rank == 1):
        t = t.reshape(1, -1, *([1] * (rank - 2))) if t.numel() == out_shape[1] else t.reshape([1] * rank)
    if t.dim() != rank:
        raise ValueError(f"operand of shape {tuple(t.shape)} does not broadcast to {tuple(out_shape)}")
    strides = []
    for size, want, stride in zip(t.shape, out_shape, t.stride()):
        if size == want:
            strides.append(stride if size > 1 else 0)
        elif size == 1:
            strides.append(0)
        else:
            raise ValueError(f"operand of shape {tuple(t.shape)} does not broadcast to {tuple(out_shape)}")
    sn = strides[0]
    sc = strides[1] if rank > 1 else 0
    sp = collapse(strides[2:], list(out_shape[2:]))
    return sn, sc, sp


def ncp(t: torch.Tensor, out_shape) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(t, its (n, c, p) strides), copying t to a dense layout first when its spatial dims do not collapse
    (a sliced or permuted view): correct for any input, fast for the usual ones."""
    try:
        return t, ncp_strides(t, out_shape)
    except ValueError:
        if t.dim() != len(out_shape):
            raise
        t = t.contiguous()
        return t, ncp_strides(t, out_shape)


def collapse(strides, sizes) -> int:
    """The one stride of spatial dims laid out as a single run (0 if all broadcast); ValueError otherwise."""
    live = [(st, sz) for st, sz in zip(strides, sizes) if sz > 1]
    if not live:
        return 0
    if all(st == 0 for st, _ in live):
        return 0
    for (st, _), (st_next, sz_next) in zip(live, live[1:]):
        if st != st_next * sz_next:
            raise ValueError(f"spatial strides {tuple(strides)} of sizes {tuple(sizes)} do not collapse to one")
    return live[-1][0]


def positions(shape) -> int:
    return math.prod(shape[2:])


def is_channels_last(x: torch.Tensor) -> bool:
    """Channels have stride 1 and the spatial dims are outside them (NHWC, NLC); a (N, C) tensor is not."""
    return x.dim() > 2 and x.shape[1] > 1 and x.stride(1) == 1 and positions(x.shape) > 1


def empty_like_layout(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An uninitialised (N, C, *S) tensor in x's memory format (channels-last when x is)."""
    dtype = dtype or x.dtype
    if is_channels_last(x):
        n, c, *spatial = shape
        return torch.empty((n, *spatial, c), dtype=dtype, device=x.device).movedim(-1, 1)
    return torch.empty(tuple(shape), dtype=dtype, device=x.device)


def poisoned(like: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An output buffer in like's layout filled with NaN, so an element a kernel forgets to write fails a test."""
    return empty_like_layout(like, shape, dtype).fill_(float("nan"))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """The same values laid out channels-last (works for 1-D, 2-D and 3-D spatial)."""
    return x.movedim(1, -1).contiguous().movedim(-1, 1)


def check_out(out: torch.Tensor | None, x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    if out is None:
        return empty_like_layout(x, shape, dtype)
    if tuple(out.shape) != tuple(shape) or out.device != x.device:
        raise ValueError(f"out has shape {tuple(out.shape)} on {out.device}; expected {tuple(shape)} on {x.device}")
    return out


def fold_batch(shape, *stride_triples):
    """A tensor without spatial positions, (N, C): run it as (1, C, N), so rows go to the p axis (kernels
    launch one program column per sample; p has no grid limit). Returns (N, P, strides...) to launch with."""
    n, p = shape[0], positions(shape)
    if p == 1 and n > 1:
        return 1, n, [(0, sc, sn) for sn, sc, _ in stride_triples]
    return n, p, list(stride_triples)


# ---- tolerances ---------------------------------------------------------------------------------------------

# (rtol, atol) against a float64 reference, for outputs of unit scale. bf16 keeps 8 mantissa bits (eps 2^-8),
# fp16 11 (2^-11); fp32 accumulation keeps the sums themselves tight.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}


def tolerance(dtype):
    return TOLERANCE[dtype]


def close(got: torch.Tensor, want: torch.Tensor, dtype=None) -> tuple[bool, float]:
    """(all within tolerance and nothing NaN, the worst error relative to the tolerance).

    atol is scaled by the reference's RMS when that exceeds 1: values rounded to the input precision inside a
    fused chain (a matmul's hidden tensor, a normalized tile) err in proportion to the typical magnitude, not
    to each output element's."""
    rtol, atol = tolerance(dtype or got.dtype)
    got64, want64 = got.detach().double().cpu(), want.detach().double().cpu()
    scale = max(1.0, float(want64.pow(2).mean().sqrt())) if want64.numel() else 1.0
    err = (got64 - want64).abs() / (atol * scale + rtol * want64.abs())
    worst = float(err.max()) if err.numel() else 0.0
    return bool(torch.isfinite(got64).all()) and worst <= 1.0, worst


@functools.lru_cache(maxsize=None)
def scalar(value: float, device: str) -> torch.Tensor:
    """A cached 1-element float32 tensor (a constant operand of the epilogue, e.g. scale(0.5))."""
    return torch.full((1,), float(value), dtype=torch.float32, device=device)


if INTERPRET:
    from codegen.triton._interpreter import patch_bf16_dot

    patch_bf16_dot()
