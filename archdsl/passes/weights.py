"""What every pass shares: the result it returns and the weights it rewrites.

A pass is a function ``pass_name(G, weights) -> PassResult`` that rewrites the IR graph in place and, when
``weights`` is not None, the tensors with it. ``weights`` maps a node name to that node's state
(``{"weight": tensor, "bn.running_mean": tensor, ...}``: the keys of its torch module's ``state_dict``).
With ``weights=None`` a pass does only the structural rewrite, so `archdsl check --mode deploy` knows the
deploy graph's parameters and MACs without allocating a tensor.

Passes never change a tensor in place: the dict may hold the very tensors of a trained module.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch

from archdsl.errors import ArchError

@dataclass
class PassResult:
    """What a pass did (one line per rewrite) and what it looked at but left alone, with the reason."""

    name: str = ""
    changed: list[str] = field(default_factory=list)
    declined: list[tuple[str, str]] = field(default_factory=list)

    def decline(self, node: str, reason: str) -> None:
        self.declined.append((node, reason))

    def summary(self) -> str:
        return f"{self.name}: {len(self.changed)} changed, {len(self.declined)} declined"

    def as_dict(self) -> dict:
        return {"pass": self.name, "changed": list(self.changed),
                "declined": [{"node": n, "reason": r} for n, r in self.declined]}


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


# ---- a node's torch module, built on the meta device (no memory) to learn its state keys ----------------

def meta_module(G: nx.DiGraph, node: str) -> torch.nn.Module:
    from codegen.torch_fx import module_for

    cls, kwargs = module_for(G, node)
    with torch.device("meta"):
        return cls(**kwargs)


def state_shapes(G: nx.DiGraph, node: str) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in meta_module(G, node).state_dict().items()}


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


def weight_keys(G: nx.DiGraph, node: str) -> tuple[str, str | None]:
    """The state keys of a conv / linear node's weight and bias (``weight`` or ``conv.weight`` for a conv with
    asymmetric padding); the bias key is None when the node has no bias."""
    keys = state_shapes(G, node)
    wkey = next(k for k in keys if k == "weight" or k.endswith(".weight"))
    bkey = wkey[: -len("weight")] + "bias"
    return wkey, (bkey if bkey in keys else None)


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


@dataclass(frozen=True)
class ConvGeometry:
    """A conv-like node as a plain convolution: channels, groups, kernel, stride, (lo, hi) pads, dilation."""

    cin: int
    out: int
    groups: int
    k: tuple
    stride: tuple
    pads: tuple
    dilation: tuple

    @property
    def extent(self) -> tuple:
        """The dense kernel a dilated one spans: r*(k-1)+1 per dim."""
        return tuple(r * (k - 1) + 1 for k, r in zip(self.k, self.dilation))

    @property
    def padding_free(self) -> bool:
        return all(lo == 0 and hi == 0 for lo, hi in self.pads)


def conv_geometry(G: nx.DiGraph, node: str) -> ConvGeometry:
    from archdsl.ir.graph import inputs
    from archdsl.ops.conv import _as_dw, _as_pw, _conv_facts
    from archdsl.ops.shapes import resolve_padding

    d = G.nodes[node]
    ins = [tuple(G.nodes[x]["shape"]) for x in inputs(G, node)]
    a = {"dwconv": _as_dw, "pwconv": _as_pw}.get(d["op"], lambda a, ins: a)(d["attrs"], ins)
    cin, out, groups = _conv_facts(a, ins)
    pads = resolve_padding(d["op"], a.padding, a.k, a.stride, a.dilation)
    return ConvGeometry(cin, out, groups, tuple(a.k), tuple(a.stride), tuple(pads), tuple(a.dilation))
