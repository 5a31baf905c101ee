"""From a (trained) train-mode module to the deploy module: split its state per node, run the pipeline,
lower the deploy IR and load the converted tensors.

    deploy = archdsl.compile("net.arch").deploy()   # after training: BN folded, branches merged, ops fused
"""
from __future__ import annotations

import torch

from archdsl.passes.base import flatten_state, split_state
from archdsl.passes.pipeline import run_pipeline


def deploy_module(module, select=None, disable=(), dump_dir=None, log=None):
    """The deploy GraphModule of a compiled train-mode module, its current weights converted (eval mode).

    The result carries ``archdsl_ir`` (the deploy IR) and ``pass_results`` (what each pass did / declined).
    """
    from codegen.torch_fx import to_graph_module

    lowered = sorted({d["precision"] for _, d in module.archdsl_ir.nodes(data=True)} - {"fp32"})
    if lowered:
        from archdsl.errors import ArchError

        raise ArchError(f"deploying {', '.join(lowered)} regions is not supported yet: train-mode modules simulate "
                        f"them (QAT, fp8 rounding, autocast) but the deploy passes convert fp32 graphs only",
                        hint="compile in train mode, or deploy an fp32 copy of the model")
    weights = split_state(module.archdsl_ir, module.state_dict())
    G, weights, results = run_pipeline(module.archdsl_ir, weights, select, disable, dump_dir, log)
    out = to_graph_module(G)
    ref = next((t for t in module.state_dict().values() if t.is_floating_point()), None)
    if ref is not None:
        out.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        out.load_state_dict(flatten_state(weights), strict=True)
    out.pass_results = results
    return out.eval()
