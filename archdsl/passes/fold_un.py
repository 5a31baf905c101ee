"""fold_un: an eval-mode Unified Normalization next to a linear / conv becomes part of its weights.

At inference UN is ``s * x + t`` per channel (``s = w / sqrt(running_var + eps)``, ``t = b``: no mean is
subtracted), which is what lets the paper fuse it into the linear operations of a transformer:

    un >> linear(x)   -> linear'(x)    W' = W s, b' = b + W t      (pre-norm: the un's only reader is the linear)
    un >> conv(x)     -> conv'(x)      likewise, for a padding-free conv (un(0) = t is not 0)
    linear(x) >> un   -> linear'(x)    W' = s W, b' = s b + t      (post-norm: the linear's only reader is the un)

The first rule is tried first (pre-norm transformers put UN before the qkv / MLP linear).
"""
from __future__ import annotations

from archdsl.ir.graph import inputs, order
from archdsl.ir.modules import conv_geometry
from archdsl.ops.conv_algebra import scale_in, scale_out
from archdsl.ops.unified_norm import un_affine
from archdsl.passes.rewrite import bypass, precision_blocker, set_op, sole_consumer
from archdsl.passes.result import PassResult
from archdsl.passes.weights import CONV_OPS, LINEAR_OPS, float_like, get_wb, set_wb


def _why_not_before(G, un) -> str | None:
    reader = sole_consumer(G, un)
    if reader is None:
        return "its output has more than one reader"
    op = G.nodes[reader]["op"]
    if op not in LINEAR_OPS:
        return f"its reader '{reader}' is {op}, not a linear / conv"
    if op in CONV_OPS and not conv_geometry(G, reader).padding_free:
        return f"its reader '{reader}' zero-pads, and the shift would have to pad it instead"
    return precision_blocker(G, un, reader)


def _why_not_after(G, un) -> str | None:
    src = inputs(G, un)[0]
    if G.nodes[src]["op"] not in LINEAR_OPS:
        return f"its input '{src}' is {G.nodes[src]['op']}, not a linear / conv"
    if sole_consumer(G, src) != un:
        return f"'{src}' has other readers"
    return precision_blocker(G, src, un, scales_outputs=True)


def _merge(G, weights, un, target, before: bool) -> None:
    if weights is not None:
        like = float_like(weights[target])
        s, t = un_affine(weights.pop(un), G.nodes[un]["attrs"].eps)
        w, b = get_wb(G, weights, target)
        if before:
            groups = conv_geometry(G, target).groups if G.nodes[target]["op"] in CONV_OPS else 1
            w, b = scale_in(w, b, s, t, groups)
        else:
            w, b = scale_out(w, b, s, t)
    bypass(G, un)
    d = G.nodes[target]
    set_op(G, target, d["op"], {**d["attrs"], "bias": True})
    if weights is not None:
        set_wb(G, weights, target, w, b, like)


def fold_un(G, weights) -> PassResult:
    """un >> linear / padding-free conv, and linear / conv >> un -> that linear / conv with bias."""
    res = PassResult()
    for un in order(G):
        if un not in G or G.nodes[un]["op"] != "un":
            continue
        before, after = _why_not_before(G, un), _why_not_after(G, un)
        if before is None or after is None:
            target = sole_consumer(G, un) if before is None else inputs(G, un)[0]
            _merge(G, weights, un, target, before is None)
            side = "un >> {}" if before is None else "{} >> un"
            res.changed.append(f"{un}: {side.format(G.nodes[target]['op'])} '{target}' -> "
                               f"{G.nodes[target]['op']} (bias)")
            continue
        res.decline(un, f"not before a foldable linear / conv ({before}) nor after one ({after})")
    return res
