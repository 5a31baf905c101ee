"""A workaround for the Triton interpreter (CPU, TRITON_INTERPRET=1), applied only there.

The interpreter keeps bfloat16 tensors as raw uint16 bits and its ``tl.dot`` multiplies those bits as integers
(triton 3.9 ``InterpreterBuilder.create_dot``), so a bf16 ``tl.dot`` returns garbage. We widen bf16 operands to
float32 first, which is what the GPU's tensor cores compute (bf16 products accumulated in fp32). The kernels
themselves are unchanged: the GPU path never sees this.
"""
from __future__ import annotations


def patch_bf16_dot() -> None:
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as it
    except ImportError:
        return
    builder = it.InterpreterBuilder
    original = builder.create_dot
    if getattr(original, "_archdsl_patched", False):
        return

    def widen(h):
        if h.dtype.scalar == tl.bfloat16:
            data = it._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
            return it.TensorHandle(data, tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot._archdsl_patched = True
    builder.create_dot = create_dot
