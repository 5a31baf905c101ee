"""From a (trained) train-mode module to the deploy module: split its state per node, run the deploy passes,
lower the deploy IR and load the converted tensors.

    deploy = archdsl.compile("net.arch").deploy()   # after training: BN folded, branches merged, ops fused
"""
from __future__ import annotations

import warnings

import torch
from torch import fx

from archdsl.errors import ArchError
from archdsl.passes.lower_precision import simulated_notice
from archdsl.passes.pipeline import run_pipeline, selected
from archdsl.passes.weights import flatten_state, split_state
from codegen.torch_fx import lower


def deploy_module(module, select=None, disable=(), dump_dir=None, log=None, cls=fx.GraphModule):
    """The deploy GraphModule (a `cls`) of a compiled train-mode module, its current weights converted (eval mode).

    The result carries ``archdsl_ir`` (the deploy IR) and ``pass_results`` (what each pass did / declined).
    """
    lowered = sorted({d["precision"] for _, d in module.archdsl_ir.nodes(data=True)} - {"fp32"})
    if lowered and "lower_precision" not in [p.__name__ for p in selected(select, disable)]:
        # the other passes work on the op's own fp32 tensors; only lower_precision turns them back into modules
        raise ArchError(f"deploying a model with {', '.join(lowered)} regions needs the lower_precision pass, which "
                        f"converts their weights", hint="keep lower_precision in --passes and out of --disable-pass")
    G = module.archdsl_ir.copy()
    weights = unwrap_precision(module, G, split_state(G, module.state_dict()))
    G, weights, results = run_pipeline(G, weights, select, disable, dump_dir, log)
    out = lower(G, cls)
    ref = next((t for t in module.state_dict().values() if t.is_floating_point()), None)
    if ref is not None:  # the dtype too where no region chose its own (a float64 model stays float64)
        out.to(device=ref.device, **({} if G.graph.get("precision_lowered") else {"dtype": ref.dtype}))
    with torch.no_grad():
        out.load_state_dict(flatten_state(weights), strict=True)
    out.pass_results = results
    notice = simulated_notice(results)
    if notice:
        (log or (lambda msg: warnings.warn(msg, stacklevel=3)))(notice)
    return out.eval()


def unwrap_precision(module, G, weights: dict) -> dict:
    """Non-fp32 nodes train inside archdsl.quant.Precision, their tensors one level down (``op.weight``) and an
    int8 input observer beside them (``act.lo``). The passes work on the op's own tensors, so those move up a
    level; the observer's (scale, zero point, top level: 255, or 127 for 7-bit activations) goes on the IR node
    as ``act_qparams`` (None: it saw no data, so training never quantized that input), for lower_precision."""
    from archdsl.quant import ActFakeQuant, Precision

    for node, d in G.nodes(data=True):
        if d["precision"] == "fp32" or node not in weights:
            continue
        wrapper = module.get_submodule(node)
        if not isinstance(wrapper, Precision):
            continue
        weights[node] = {k[len("op."):]: v for k, v in weights[node].items() if k.startswith("op.")}
        act = getattr(wrapper, "act", None)
        if isinstance(act, ActFakeQuant):
            scale, zero = act.qparams()
            d["act_qparams"] = (float(scale), int(zero), int(act.levels)) if int(act.seen) > 0 else None
    return weights
