"""The kernels compile for an H100 (sm_90) down to a cubin, without a GPU: the interpreter runs kernels as
Python and never exercises Triton's compiler, so a kernel can pass every interpreter test and still fail to
compile. Runs codegen/triton/aot.py (first autotune config) on the benchmark's shapes and a lowered ConvNeXt
block, in a subprocess without TRITON_INTERPRET."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from codegen.triton.lower import triton_available

OK, WHY = triton_available()
if not OK:
    pytest.skip(WHY, allow_module_level=True)


def _has_nvidia_backend():
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _has_nvidia_backend(), reason="this triton build has no NVIDIA backend (ptxas)")
def test_benchmark_kernels_compile_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "codegen.triton.aot", "--quick", "--arch", "90",
                           "--only", "benchmark cases,convnext group"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failure(s)" in proc.stdout
