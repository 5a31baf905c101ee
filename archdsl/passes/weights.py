"""The weights a pass rewrites: a trained state_dict split per node, checked against the IR, and read / written
as a conv or linear's (weight, bias).

``weights`` maps a node name to that node's state (``{"weight": tensor, "bn.running_mean": tensor, ...}``: the
keys of its torch module's ``state_dict``). Passes never change a tensor in place: the dict may hold the very
tensors of a trained module.
"""
from __future__ import annotations

import networkx as nx
import torch

from archdsl.errors import ArchError
from archdsl.ir.modules import state_shapes, weight_keys

# ---- weights <-> state_dict ----------------------------------------------------------------------------

def split_state(G: nx.DiGraph, state: dict) -> dict:
    """``{"stage0.block0.mixer.lkb_origin.conv.weight": t}`` -> ``{"stage0.block0.mixer": {"lkb_origin.conv.weight":
    t}}``. Node names are dotted too, so the node is the longest prefix of the key that is a node of G."""
    out: dict = {}
    for key, tensor in state.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            node = ".".join(parts[:cut])
            if node in G:
                out.setdefault(node, {})[".".join(parts[cut:])] = tensor
                break
        else:
            raise ArchError(f"state_dict key '{key}' belongs to no node of graph '{G.graph.get('name')}'")
    return out


def flatten_state(weights: dict) -> dict:
    return {f"{node}.{key}": t for node, state in weights.items() for key, t in state.items()}


def check_weights(G: nx.DiGraph, weights: dict) -> None:
    """Every node's state holds exactly the keys and shapes its torch module will load (fails naming the node)."""
    for node, d in G.nodes(data=True):
        if d["op"] in ("input", "output"):
            if weights.get(node):
                raise ArchError(f"weights check failed at '{node}': {d['op']} nodes hold no state")
            continue
        try:
            want = state_shapes(G, node)
        except (NotImplementedError, RuntimeError):  # a module that cannot be built on the meta device
            continue
        have = {k: tuple(v.shape) for k, v in weights.get(node, {}).items()}
        if want != have:
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
            raise ArchError(f"weights check failed at '{node}' ({d['op']}): missing {missing}, unexpected {extra}, "
                            f"wrong shape {[(k, have[k], want[k]) for k in shapes]}", d.get("span"))
    for node in weights:
        if node not in G and weights[node]:
            raise ArchError(f"weights check failed: state for '{node}', which is not in the graph")


# ---- conv / linear as (weight, bias) --------------------------------------------------------------------

CONV_OPS = ("conv", "dwconv", "pwconv")
LINEAR_OPS = CONV_OPS + ("linear",)  # ops computing W x + b (they absorb an affine map on either side)


def get_wb(G, weights, node):
    """(weight, bias or None) of a conv / linear node, as float64."""
    wkey, bkey = weight_keys(G, node)
    state = weights[node]
    return state[wkey].double(), (state[bkey].double() if bkey else None)


def float_like(state: dict) -> torch.Tensor:
    """A floating tensor of a node's state: the dtype and device its rewritten tensors take."""
    return next(t for t in state.values() if t.is_floating_point())


def set_wb(G, weights, node, w, b, like: torch.Tensor) -> None:
    """Store a conv / linear node's new weight and bias (keys from its current attrs), in `like`'s dtype/device."""
    wkey, bkey = weight_keys(G, node)
    state = {wkey: w.to(like.dtype).to(like.device).contiguous()}
    if bkey:
        state[bkey] = (b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)).to(like)
    weights[node] = state
