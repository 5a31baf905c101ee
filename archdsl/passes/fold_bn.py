"""fold_bn: an eval-mode BatchNorm next to a conv / linear becomes part of its weights.

At inference BN is ``s * x + t`` per channel (running statistics), so it folds exactly into the linear map
beside it:

    conv(x) >> bn  -> conv'(x)     W' = s W, b' = s b + t       (the conv's only reader is the bn)
    bn >> conv(x)  -> conv'(x)     W' = W s, b' = b + W t       (the bn's only reader is a padding-free conv)

The second rule needs a conv without zero padding (bn(0) = t is not 0) and fires only when the first cannot.
"""
from __future__ import annotations

from archdsl.ir.graph import inputs, order
from archdsl.ir.modules import conv_geometry
from archdsl.ops.conv_algebra import bn_affine, scale_in, scale_out
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import bypass, precision_blocker, set_op, sole_consumer, users_text
from archdsl.passes.weights import CONV_OPS, LINEAR_OPS, float_like, get_wb, set_wb


def _with_bias(G, node):
    d = G.nodes[node]
    set_op(G, node, d["op"], {**d["attrs"], "bias": True})


def _fold_after(G, weights, bn, conv) -> None:
    # conv >> bn -> conv(bias)
    if weights is not None:
        like = float_like(weights[conv])
        w, b = scale_out(*get_wb(G, weights, conv), *bn_affine(weights.pop(bn), G.nodes[bn]["attrs"].eps))
    bypass(G, bn)
    _with_bias(G, conv)
    if weights is not None:
        set_wb(G, weights, conv, w, b, like)


def _fold_before(G, weights, bn, conv) -> None:
    # bn >> conv -> conv(bias)
    if weights is not None:
        like = float_like(weights[conv])
        groups = conv_geometry(G, conv).groups if G.nodes[conv]["op"] in CONV_OPS else 1
        s, t = bn_affine(weights.pop(bn), G.nodes[bn]["attrs"].eps)
        w, b = scale_in(*get_wb(G, weights, conv), s, t, groups)
    bypass(G, bn)
    _with_bias(G, conv)
    if weights is not None:
        set_wb(G, weights, conv, w, b, like)


def _before_blocker(G, bn) -> str | None:
    """Why the bn cannot fold into the conv / linear reading it (None: it can)."""
    reader = sole_consumer(G, bn)
    if reader is None:
        return f"its output goes to {users_text(G, bn) or 'the graph output'}"
    op = G.nodes[reader]["op"]
    if op not in LINEAR_OPS:
        return f"its reader '{reader}' is {op}, not a conv / linear"
    if precision_blocker(G, bn, reader):
        return precision_blocker(G, bn, reader)
    if op in CONV_OPS and not conv_geometry(G, reader).padding_free:
        return f"its reader '{reader}' zero-pads, and the bn's shift would have to pad it instead"
    return None


def fold_bn(G, weights) -> PassResult:
    """conv >> bn and bn >> padding-free conv -> conv with bias (linear likewise)."""
    res = PassResult()
    for bn in order(G):
        if bn not in G or G.nodes[bn]["op"] != "bn":
            continue
        src = inputs(G, bn)[0]
        blocked = precision_blocker(G, src, bn, scales_outputs=True)
        if G.nodes[src]["op"] in LINEAR_OPS and sole_consumer(G, src) == bn and not blocked:
            _fold_after(G, weights, bn, src)
            res.changed.append(f"{bn}: {G.nodes[src]['op']} '{src}' >> bn -> {G.nodes[src]['op']} (bias)")
            continue
        after = (f"its input '{src}' is {G.nodes[src]['op']}, not a conv / linear"
                 if G.nodes[src]["op"] not in LINEAR_OPS
                 else f"'{src}' is also read by {users_text(G, src)}" if sole_consumer(G, src) != bn else blocked)
        before = _before_blocker(G, bn)
        if before is None:
            reader = sole_consumer(G, bn)
            _fold_before(G, weights, bn, reader)
            res.changed.append(f"{bn}: bn >> {G.nodes[reader]['op']} '{reader}' -> {G.nodes[reader]['op']} (bias)")
            continue
        res.decline(bn, f"not after a foldable conv ({after}) nor before one ({before})")
    return res
