"""The sparse 1x1 conv's CPU kernel (spmm_rows.c), built with the system C compiler on first use.

torch's CSR matmul on CPU (MKL's general sparse product) only beats a dense 1x1 conv at about 85 % sparsity;
spmm_rows.c is the Fast Sparse ConvNets layout (each non-zero weight streams a contiguous row of pixels into
accumulators held across the output row) and beats it from 70 % (BENCHMARKS.md section 9). It is compiled once
per source and machine (-march=native) into a cache folder and loaded with ctypes; without a compiler, or with
ARCHDSL_NO_NATIVE=1, ``spmm_rows()`` is None and callers keep torch's CSR matmul.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("spmm_rows.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared"]


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "archdsl" / "native"


def _cpu_flags() -> str:
    # -march=native binds the build to this CPU: a shared home folder on another machine must not reuse it
    try:
        return next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build() -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *FLAGS, _cpu_flags(), platform.machine()]).encode())
    lib = _cache_dir() / f"spmm_rows-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    tmp = None
    try:
        lib.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: concurrent processes (pytest workers) never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True, timeout=120)
        os.replace(tmp, lib)
    except (OSError, subprocess.SubprocessError):
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return None
    return lib


@lru_cache(maxsize=None)
def _library():
    if os.environ.get("ARCHDSL_NO_NATIVE") == "1":
        return None
    path = _build()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    fn = lib.archdsl_spmm_rows
    fn.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 6
    fn.restype = None
    return fn


def available() -> bool:
    return _library() is not None


def spmm_rows(crow, col, values, x, bias):
    """y[n, m, p] = bias[m] + sum over row m's non-zeros of values * x[n, col, p], for float32 CPU tensors with
    int32 crow / col; x is (N, C, P). Returns None when the kernel is not available."""
    fn = _library()
    if fn is None:
        return None
    x = x.contiguous()
    n, _, p = x.shape
    rows = crow.numel() - 1
    y = torch.empty(n, rows, p, dtype=torch.float32)
    crow, col, values = crow.contiguous(), col.contiguous(), values.contiguous()
    bias = None if bias is None else bias.contiguous()  # kept referenced: its pointer must outlive the calls
    bias_ptr = None if bias is None else bias.data_ptr()
    for i in range(n):
        fn(rows, p, crow.data_ptr(), col.data_ptr(), values.data_ptr(), x[i].data_ptr(), bias_ptr, y[i].data_ptr())
    return y
