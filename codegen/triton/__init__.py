"""Fused groups -> Triton kernels.

Importing this package does not import triton: ``lower.triton_available()`` says whether kernels can run here
and why not, so the torch backend can fall back group by group. Layout follows the pipeline:

    plan.py         IR members of a fused group -> stages (which kernel, its constexpr switches, its epilogue)
    lower.py        lower_group(members, shapes) -> LoweredGroup (runs the stages) or NotLowerable(reason)
                    (split=True, as the backend lowers: members without a kernel run in torch, the rest
                    as kernels)
    epilogue.py     the fused epilogue every kernel ends with (bias, activations, layer scale, residual, gates)
    elementwise.py  elementwise chains with broadcasting
    norm.py         LayerNorm / RMSNorm over channels (channels-first and channels-last)
    dwconv.py       depthwise conv, 1-D / 2-D, any kernel, stride, dilation; optional fused norm
    matmul.py       linear / 1x1 conv
    mlp.py          [norm ->] linear -> activation -> linear in one kernel (hidden never leaves the chip)

Every kernel file has the same shape: kernel with commented arguments -> wrapper -> reference -> test on an odd
shape -> benchmark cases. Debug switch: ARCHDSL_TRITON_DEBUG=1 prints each lowered group's plan.
"""
