"""sparse_kernels: magnitude-pruned 1x1 convs run as a CSR matrix product when they are sparse enough to gain.

# sparsepw(out, sparsity), fp32, sparsity >= MIN_SPARSITY -> sparsepw_csr(out, keep)   (the kept weights, CSR)
# sparsepw(out, sparsity), otherwise                      -> conv(out, k = 1)          (the pruned dense weight)

Fast Sparse ConvNets (Elsen et al. 2020) run pruned 1x1 convs as sparse x dense products on CPU. Here the sparse
product is torch's CSR matmul, which beats the dense one only at high sparsity: benchmarks/sparse_pw.py measures
both on the 1x1 convs of a mobile network at 70 / 80 / 90 % (batch 1, one thread, BENCHMARKS.md), and
MIN_SPARSITY is where the CSR product became faster in that run. Both forms compute the trained layer exactly.
The CSR kernel exists for fp32 only; other precisions take the dense form.
"""
from __future__ import annotations

import torch

from archdsl.ir.graph import order
from archdsl.ir.modules import input_shapes, module_for
from archdsl.passes.fold_kernels import fold_node, folds_by
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import set_op
from archdsl.passes.weights import float_like

MIN_SPARSITY = 0.85  # measured break-even of torch's CSR matmul against the dense one (benchmarks/sparse_pw.py)


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
        out = {"crow": torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(like.device), "col": cols.to(like.device),
               "values": module.weight[mask].to(like)}
        if module.bias is not None:
            out["bias"] = module.bias.to(like)
    return out


def sparse_kernels(G, weights) -> PassResult:
    """sparsepw -> sparsepw_csr (CSR matmul) at sparsity >= MIN_SPARSITY in fp32, else -> dense 1x1 conv."""
    res = PassResult()
    for node in order(G):
        if not folds_by(G, node, "sparse_kernels"):
            continue
        d = G.nodes[node]
        a = d["attrs"]
        cin = input_shapes(G, node)[0][0]
        keep = module_for(G, node)[1]["keep"]
        sparsity = 1 - keep / (a.out * cin)
        why = None
        if d["precision"] != "fp32":
            why = f"it runs at {d['precision']}: the CSR kernel is fp32 only"
        elif sparsity < MIN_SPARSITY:
            why = (f"sparsity {sparsity:.0%} is below {MIN_SPARSITY:.0%}, where torch's CSR matmul was measured to "
                   "beat the dense one (benchmarks/sparse_pw.py)")
        if why is not None:
            fold_node(G, weights, node)
            res.decline(node, why + ": a dense 1x1 conv with the pruned weights instead")
            continue
        state = _csr_state(G, weights, node) if weights is not None else None
        set_op(G, node, "sparsepw_csr", dict(out=a.out, keep=keep, bias=a.bias))
        if weights is not None:
            weights[node] = state
        res.changed.append(f"{node}: sparsepw -> sparsepw_csr ({keep} of {a.out * cin} weights, sparsity "
                           f"{sparsity:.0%} >= {MIN_SPARSITY:.0%}: CSR measured faster)")
    return res
