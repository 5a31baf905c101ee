"""The Python API: parse, build, compile."""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from archdsl.frontend import ast as A
from archdsl.frontend.elaborate import build as _build
from archdsl.frontend.parse import parse as _parse


def parse(source: str | Path, file: str | None = None) -> A.Program:
    """Parse an .arch path or text (and its imports)."""
    return _parse(source, file)


def build(program: A.Program | str | Path, model: str | None = None, resolver=None, **overrides) -> nx.DiGraph:
    """Elaborate a model into the IR: a verified networkx DiGraph with shapes, params and MACs per node.

    ``overrides`` set model parameters or search choices by name (``k=5``, ``mixer="pool(3)"``).
    """
    if not isinstance(program, A.Program):
        program = parse(program)
    return _build(program, model, resolver, **overrides)


def compile(source, mode: str = "train", backend: str = "torch", model: str | None = None, log=None,
            act_bits: int = 8, **overrides):
    """Build and lower to a ``torch.fx.GraphModule`` whose parameters are named after the hierarchy.

    ``mode="deploy"`` returns the inference module: the train module's fresh weights through the deploy passes
    (BN folded, branches re-parameterized, ops fused; int8 observers calibrated on a random batch, so int8
    regions get their integer kernels). For trained weights call ``module.deploy()`` instead.
    ``act_bits=7``: int8 regions quantize activations on 7 bits (archdsl.quant.set_activation_bits).
    """
    from archdsl.errors import ArchError

    if mode not in ("train", "deploy"):
        raise ArchError(f"unknown mode '{mode}'", hint="use mode='train' or mode='deploy'")
    if backend not in ("torch", "triton"):
        raise ArchError(f"unknown backend '{backend}'", hint="available backends: torch, triton")
    if backend == "triton" and mode != "deploy":
        raise ArchError("the triton backend runs the deploy graph (its kernels are inference-only)",
                        hint="use mode='deploy' with backend='triton', or backend='torch' for training")
    G = source if isinstance(source, nx.DiGraph) else build(source, model, **overrides)
    from codegen.compiled import to_graph_module

    if act_bits != 8:  # the observers are built with that many levels (a copy: the caller's graph is kept)
        from archdsl.quant import ACTIVATION_BITS

        G = G.copy()
        G.graph["act_levels"] = ACTIVATION_BITS[act_bits]
    module = to_graph_module(G)
    if mode == "deploy":  # Triton takes large depthwise kernels itself; the CSR 1x1 kernel is a CPU choice
        calibrate(module)
        module = module.deploy(disable=("select_kernels", "sparse_kernels") if backend == "triton" else ())
    if backend == "triton":
        from codegen.triton.lower import lower_module

        lower_module(module, log)  # `log(msg)` hears each group left in torch and why (default: a warning)
    return module


def calibrate(module, batch: int = 2, seed: int = 0) -> None:
    """One train-mode forward pass on a fixed random batch when the model has int8 regions, so their input
    observers hold a range and deploy can choose int8 kernels. Meant for fresh modules (latency, structure):
    a trained module's observers already hold the data's range."""
    import torch

    G = module.archdsl_ir
    if not any(d["precision"] == "int8" for _, d in G.nodes(data=True)):
        return
    x = torch.randn(batch, *G.nodes[G.graph["input"]]["shape"], generator=torch.Generator().manual_seed(seed))
    was = module.training
    with torch.no_grad():
        module.train()(x)
    module.train(was)
