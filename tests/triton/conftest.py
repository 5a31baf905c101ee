"""Triton tests run in the Triton interpreter on CPU tensors: TRITON_INTERPRET=1 is set here, before anything
in this folder imports triton or the kernels (triton.jit reads it when a kernel is decorated). On a GPU
machine, TRITON_INTERPRET=0 pytest tests/triton runs the same tests on the GPU.

Modules that run kernels skip themselves, with the reason, when triton is not importable
(`lower.triton_available()`); the planning tests need no triton and always run.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def device():
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
