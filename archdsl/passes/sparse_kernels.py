"""sparse_kernels: magnitude-pruned 1x1 convs run as a CSR matrix product when they are sparse enough to gain.

# sparsepw(out, sparsity), fp32, sparsity >= MIN_SPARSITY -> sparsepw_csr(out, keep)   (the kept weights, CSR)
# sparsepw(out, sparsity), otherwise                      -> conv(out, k = 1)          (the pruned dense weight)

Fast Sparse ConvNets (Elsen et al. 2020) run pruned 1x1 convs as sparse x dense products on CPU. Here the sparse
product is the C kernel of archdsl.ops.native (the paper's layout) where a C compiler is at hand, else torch's CSR
matmul, which beats the dense one only at high sparsity. benchmarks/sparse_pw.py measures each against the dense
1x1 conv on the 1x1 convs of a mobile network at 70 / 80 / 90 % (one thread, BENCHMARKS.md section 9), and each
threshold is the lowest sparsity from which its kernel was measured faster than dense (comments below). Both forms
compute the trained layer exactly. The CSR kernels exist for fp32 only; other precisions take the dense form.
"""
from __future__ import annotations

import torch

from archdsl.ir.graph import order
from archdsl.ir.modules import input_shapes, module_for
from archdsl.ops import native
from archdsl.passes.fold_kernels import fold_node, folds_by
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import set_op
from archdsl.passes.weights import float_like

# measured break-even against the dense 1x1 conv (benchmarks/sparse_pw.py, BENCHMARKS.md section 9)
MIN_SPARSITY = 0.7  # the C kernel: 0.45-0.83x dense on every layer at 70 % in two runs (not measured below)
# torch's CSR matmul (MKL), when no C compiler builds the kernel: 0.67-1.19x dense at 80 % at batch 1 (to 2.07x at
# batch 8), faster on every batch-1 layer at 90 % (one batch-8 layer 1.08x); 85 %, as before the C kernel, between
MIN_SPARSITY_TORCH = 0.85


def threshold() -> tuple[float, str]:
    """The sparsity from which the CSR form is deployed, and the kernel it runs on this machine."""
    if native.available():
        return MIN_SPARSITY, "the C sparse kernel"
    return MIN_SPARSITY_TORCH, "torch's CSR matmul (no C compiler for the native kernel)"


def _csr_state(G, weights, node) -> dict:
    """The node's kept weights as CSR tensors (rows in order), from its trained module's own mask."""
    cls, kwargs = module_for(G, node)
    module = cls(**kwargs).double().eval()
    state = weights[node]
    like = float_like(state)
    with torch.no_grad():
        module.load_state_dict(state)
        mask = module.mask().bool()
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: the order CSR stores them in
        counts = torch.bincount(rows, minlength=mask.shape[0])
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        out = {"crow": crow.to(like.device, torch.int32), "col": cols.to(like.device, torch.int32),
               "values": module.weight[mask].to(like)}
        if module.bias is not None:
            out["bias"] = module.bias.to(like)
    return out


def sparse_kernels(G, weights) -> PassResult:
    """sparsepw -> sparsepw_csr (CSR matmul) at sparsity >= threshold() in fp32, else -> dense 1x1 conv."""
    res = PassResult()
    least, kernel = threshold()
    for node in order(G):
        if not folds_by(G, node, "sparse_kernels"):
            continue
        d = G.nodes[node]
        a = d["attrs"]
        cin = input_shapes(G, node)[0][0]
        keep = module_for(G, node)[1]["keep"]
        why = None
        if d["precision"] != "fp32":
            why = f"it runs at {d['precision']}: the CSR kernel is fp32 only"
        elif a.sparsity < least:  # the asked sparsity, as the benchmark's layers are (the kept count rounds up)
            why = (f"sparsity {a.sparsity:.0%} is below {least:.0%}, from where {kernel} was measured to beat the "
                   "dense one (benchmarks/sparse_pw.py)")
        if why is not None:
            fold_node(G, weights, node)
            res.decline(node, why + ": a dense 1x1 conv with the pruned weights instead")
            continue
        state = _csr_state(G, weights, node) if weights is not None else None
        set_op(G, node, "sparsepw_csr", dict(out=a.out, keep=keep, bias=a.bias))
        if weights is not None:
            weights[node] = state
        res.changed.append(f"{node}: sparsepw -> sparsepw_csr ({keep} of {a.out * cin} weights, sparsity "
                           f"{a.sparsity:.0%} >= {least:.0%}: CSR measured faster on {kernel})")
    return res
