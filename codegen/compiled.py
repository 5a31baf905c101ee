"""The compiled model a user trains: a GraphModule that keeps its IR and becomes its deploy form.

    model = archdsl.compile("net.arch")      # an ArchGraphModule
    ...train...
    deploy = model.deploy()                   # BN folded, branches merged, ops fused (codegen/deploy.py)

It survives ``copy.deepcopy`` (EMA copies) and pickling (``torch.save(model)``) with its IR, so the copy
deploys too. A pickle holds the IR and the state_dict, not generated code: loading rebuilds the module from the
IR and puts the saved tensors (their dtype, device and sharing) back in place.
"""
from __future__ import annotations

import copy

import networkx as nx
from torch import fx

from codegen.deploy import deploy_module
from codegen.torch_fx import lower


class ArchGraphModule(fx.GraphModule):
    """A compiled .arch model: a GraphModule that knows its IR (``archdsl_ir``) and can become its deploy form."""

    def deploy(self, select=None, disable=(), dump_dir=None, log=None) -> fx.GraphModule:
        """The inference module with this module's current (trained) weights converted: the deploy passes
        (archdsl/passes/pipeline.py: BN folding, re-parameterization, fusion) run on its IR and state_dict.
        `select` / `disable` name passes; `dump_dir` gets the IR after each pass; `log` gets one line per pass."""
        return deploy_module(self, select=select, disable=disable, dump_dir=dump_dir, log=log, cls=ArchGraphModule)

    def __deepcopy__(self, memo):
        # fx copies only what its graph references; the IR is not among it
        res = super().__deepcopy__(memo)
        res.archdsl_ir = copy.deepcopy(self.archdsl_ir, memo)
        return res

    def __reduce__(self):
        # fx pickles generated code and unpickles a plain GraphModule; the IR rebuilds this very class
        return _unpickle, (self.archdsl_ir, self.state_dict(keep_vars=True), self.training)


def _unpickle(G: nx.DiGraph, state: dict, training: bool) -> ArchGraphModule:
    gm = to_graph_module(G)
    gm.load_state_dict(state, assign=True)  # the saved tensors themselves: dtype, device, shared parameters
    return gm.train(training)


def to_graph_module(G: nx.DiGraph) -> ArchGraphModule:
    """The compiled (train-mode) module of an IR graph, with freshly initialised weights."""
    return lower(G, ArchGraphModule)
