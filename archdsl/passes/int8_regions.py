"""The int8 part of lower_precision: which int8 nodes run on PyTorch's quantized kernels (archdsl/ops/
quantized.py), on which (scale, zero point), with quantized tensors flowing between them.

    conv / pwconv / dwconv (1-D, 2-D, symmetric padding)  -> qconv     linear on (C,) -> qlinear
    linear on (C, L) / (C, H, W)                           -> qconv with a 1-wide kernel
    add of two int8 results                                -> qadd
    qconv | qlinear | qadd >> relu (its only reader)       -> the same with the ReLU fused
    relu, maxpool, flatten, gelu, gap, identity            run on the quantized tensor as it is

QAT (archdsl/quant.py) quantizes each int8 node's *input* with that node's observer. A quantized kernel
instead requantizes its *output*, so it takes the observer of the input its readers trained with (looking
through the ops above that keep a tensor quantized): where readers disagree, the widest range, so nothing
clips. An int8 add trains with one observer on both arguments (codegen.torch_fx.as_function), so a conv
feeding it requantizes to that range and the quantized add reads both arguments as QAT did (an add trained
before that, without an observer, is looked through). A reader whose own observer's range is narrower than
the grid it receives requantizes onto its own (qconv / qlinear do it at run time), as QAT clipped there. Deploy
then differs from QAT by at most one quantization step per skipped rounding point (a fused ReLU's or a folded
BN's own observer, or a reader's grid inside the one it receives).

A linear on (C,) whose result no observed int8 node reads (a classifier) gets a float32 result (qlinear,
requantize=False): QAT's float32 product, or where large oneDNN's exact int8 one scaled to float32. Such a conv,
or a linear over more axes, keeps the torch._int_mm kernel (int8_conv / int8_linear), as does a conv with
asymmetric padding.
"""
from __future__ import annotations

import torch

from archdsl.ir.graph import inputs, order
from archdsl.ops.registry import get_op
from archdsl.ir.modules import conv_geometry, weight_keys
from archdsl.passes.rewrite import bypass, set_op, sole_consumer

UNKNOWN = "unknown"  # qparams when there are no weights (structure only): assume the observer saw data
KEEPS_QUANTIZED = frozenset(("relu", "maxpool", "flatten", "gelu", "gap", "identity"))  # ops torch runs on quint8
QUINT8 = "quint8"


def _observed(G, node, weights):
    """The (scale, zero point) the node's input observer trained with; None where it saw no data or the node
    is not int8."""
    d = G.nodes[node]
    if d["precision"] != "int8" or (get_op(d["op"]).function is not None and d["op"] != "add"):
        return None  # mul / concat train without an observer
    return d.get("act_qparams") if weights is not None else UNKNOWN


def _widest(candidates):
    if not candidates:
        return None
    if UNKNOWN in candidates:
        return UNKNOWN
    return max(candidates, key=lambda qp: qp[0] * qp[2])  # scale x levels: the range


def output_qparams(G, node, weights, through_add=True):
    """The (scale, zero point) a quantized kernel at `node` requantizes to: the widest its readers trained
    with (None: no observed int8 node reads it)."""
    found = []
    for c in G.successors(node):
        d = G.nodes[c]
        if d["precision"] != "int8":
            continue
        qp = _observed(G, c, weights)
        if qp is not None:
            found.append(qp)
        elif d["op"] in KEEPS_QUANTIZED or (d["op"] == "add" and through_add):
            found.append(output_qparams(G, c, weights, through_add=d["op"] != "add" and through_add))
    return _widest([qp for qp in found if qp is not None])


def _after_fused_relu(G, node, weights):
    """Where a ReLU will be fused into the kernel, the grid of the ReLU's readers (non-negative: zero point 0,
    which the x86 kernels run faster too), else the ReLU's own observer cut to [0, max]. None: no such ReLU."""
    relu = sole_consumer(G, node)
    if relu is None or G.nodes[relu]["op"] != "relu" or G.nodes[relu]["precision"] != "int8":
        return None
    after = output_qparams(G, relu, weights)
    own = _observed(G, relu, weights)
    if after is not None or own in (None, UNKNOWN):
        return after or own
    scale, zero, levels = own
    return (scale * (levels - zero) / levels, 0, levels)


def levels(qp) -> int:
    """The top uint8 level of an observer's grid: 255, or 127 for 7-bit activations (UNKNOWN: 255)."""
    return qp[2] if isinstance(qp, tuple) else 255


def kernel_for(G, node, x_qp=UNKNOWN) -> tuple[str, dict] | None:
    """(op, attrs) of the quantized kernel for a conv / linear node reading on grid `x_qp`, or None (the
    reason is the caller's)."""
    d = G.nodes[node]
    shape = G.nodes[inputs(G, node)[0]]["shape"]
    top = levels(x_qp)
    if d["op"] == "linear":
        if len(shape) == 1:
            return "qlinear", dict(out=d["attrs"].out, bias=d["attrs"].bias, levels=top)
        if len(shape) in (2, 3):  # over the channel axis: a conv with a 1-wide kernel
            return "qconv", dict(out=d["attrs"].out, k=1, bias=d["attrs"].bias, levels=top)
        return None
    if d["op"] not in ("conv", "pwconv", "dwconv"):
        return None
    g = conv_geometry(G, node)
    if len(g.k) not in (1, 2) or any(lo != hi for lo, hi in g.pads):
        return None
    return "qconv", dict(out=g.out, k=g.k, stride=g.stride, padding=tuple(lo for lo, _ in g.pads),
                         dilation=g.dilation, groups=g.groups, bias=bool(d["attrs"].get("bias", True)), levels=top)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight of w's shape, per-output-channel scale): symmetric, scale = max|w| / 127, exactly the
    levels archdsl.quant.WeightFakeQuant trained with."""
    from archdsl.quant import WeightFakeQuant

    w = w.detach()
    scale = WeightFakeQuant.scales(w)
    view = (-1, *([1] * (w.dim() - 1)))
    q = torch.round(w.float() / scale.view(view)).clamp(-127, 127).to(torch.int8)
    return q, scale


def _qp_state(prefix, qp, like):
    return {f"{prefix}_scale": torch.tensor(float(qp[0]), dtype=like),
            f"{prefix}_zero": torch.tensor(float(qp[1]), dtype=like)}


def _kernel_state(state, keys, weight_shape, x_qp, y_qp) -> dict:
    wkey, bkey = keys
    q, scale = quantize_weight(state[wkey].reshape(weight_shape))
    out = {"qweight": q, "wscale": scale, **_qp_state("x", x_qp, torch.float32), **_qp_state("y", y_qp, torch.float32)}
    if bkey:
        out["bias"] = state[bkey].detach().float()
    return out


def lower_int8(G, weights, res) -> tuple[set, set]:
    """Rewrite int8 nodes onto quantized kernels; returns (the nodes whose result is a quint8 tensor (their IR
    dtype is set to "quint8"), every node handled here). The rest is left to lower_precision's other int8
    paths."""
    quantized: set = set()
    done: set = set()
    for node in order(G):
        d = G.nodes[node]
        if d["precision"] != "int8" or d["op"] in ("input", "output"):
            continue
        srcs = inputs(G, node)
        if d["op"] in KEEPS_QUANTIZED and srcs and srcs[0] in quantized:
            quantized.add(node)
            d["dtype"] = QUINT8
            res.changed.append(f"{node}: {d['op']} runs on the quantized tensor")
            continue
        y_qp = output_qparams(G, node, weights)
        if y_qp is None:
            if _float_result_linear(G, node, weights, res):
                done.add(node)
            continue
        y_qp = _after_fused_relu(G, node, weights) or y_qp
        if d["op"] == "add" and len(srcs) == 2 and any(s in quantized for s in srcs):
            # the arguments' trained range; a model trained before adds had observers: the result's range
            x_qp = _observed(G, node, weights) or y_qp
            set_op(G, node, "qadd", {"levels": levels(x_qp)})
            if weights is not None:
                weights[node] = {**_qp_state("x", x_qp, torch.float32), **_qp_state("y", y_qp, torch.float32)}
            res.changed.append(f"{node}: add -> qadd (quantized add)")
        else:
            x_qp = _observed(G, node, weights)
            kernel = kernel_for(G, node, x_qp) if x_qp is not None else None
            if kernel is None:
                continue
            was, cin, keys = d["op"], G.nodes[srcs[0]]["shape"][0], weight_keys(G, node)
            set_op(G, node, *kernel)
            if weights is not None:
                a = d["attrs"]
                wshape = (a.out, cin // a.groups, *a.k) if kernel[0] == "qconv" else (a.out, cin)
                weights[node] = _kernel_state(weights[node], keys, wshape, x_qp, y_qp)
            res.changed.append(f"{node}: {was} -> {kernel[0]} (PyTorch quantized kernel)")
        d["dtype"] = QUINT8
        quantized.add(node)
    _fuse_relus(G, quantized, res)
    return quantized, done | quantized


def _float_result_linear(G, node, weights, res) -> bool:
    # linear on (C,) that no observed int8 node reads (a classifier) -> qlinear with a float32 result
    d = G.nodes[node]
    x_qp = _observed(G, node, weights)
    if d["op"] != "linear" or x_qp is None or len(G.nodes[inputs(G, node)[0]]["shape"]) != 1:
        return False
    cin, keys = G.nodes[inputs(G, node)[0]]["shape"][0], weight_keys(G, node)
    set_op(G, node, "qlinear", dict(out=d["attrs"].out, bias=d["attrs"].bias, requantize=False,
                                    levels=levels(x_qp)))
    if weights is not None:
        weights[node] = _kernel_state(weights[node], keys, (d["attrs"].out, cin), x_qp, (1.0, 0, 255))
    res.changed.append(f"{node}: linear -> qlinear (float32 result)")
    return True


def _fuse_relus(G, quantized, res) -> None:
    # qconv | qlinear | qadd >> relu -> the same op with relu=True (the relu its only reader)
    for node in list(order(G)):
        if node not in G or G.nodes[node]["op"] not in ("qconv", "qlinear", "qadd"):
            continue
        reader = sole_consumer(G, node)
        if reader is None or G.nodes[reader]["op"] != "relu" or reader not in quantized:
            continue
        bypass(G, reader)
        quantized.discard(reader)
        d = G.nodes[node]
        set_op(G, node, d["op"], {**d["attrs"], "relu": True})
        res.changed.append(f"{reader}: relu fused into {d['op']} '{node}'")
