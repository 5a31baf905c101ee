"""reparam_branches: parallel linear branches of one tensor that are summed become one convolution.

Structural re-parameterization (RepVGG, Ding et al. 2021; RepLKNet 2022; UniRepLKNet 2024): convolution is
linear, so sum_i BN_i(conv_i(x)) is one conv whose kernel is the sum of the branch kernels (dilated kernels
written densely, smaller ones zero-padded to the largest, centred) with the BNs folded in; an identity
branch is a centred 1. Eval-mode BN statistics make it exact.

    replk(k, small)                         -> conv(k, groups=C, bias)   official ReparamLargeKernelConv
    dilreparam(k, kernels, dilations)       -> conv(k, groups=C, bias)   official DilatedReparamBlock
    add(conv_i(x) [>> bn_i] ..., [bn](x))   -> conv(K, bias)             any .arch: merged where exact

Mixers that are such a sum inside one module say so on their registration (``OpSpec.fold``, by
"reparam_branches"), with the rule that merges their branches.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from archdsl.ir.graph import inputs, order
from archdsl.ir.modules import conv_geometry
from archdsl.ops.conv_algebra import bn_affine, dilate, identity_kernel, pad_centred, scale_out
from archdsl.passes.result import PassResult
from archdsl.passes.fold_kernels import fold_node, folds_by
from archdsl.passes.rewrite import precision_blocker, prune_dead, redirect, set_op, sole_consumer
from archdsl.passes.weights import CONV_OPS, float_like, get_wb, set_wb


# ---- add(branches of x) ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Branch:
    head: str  # the add's argument
    src: str  # the tensor the branch reads
    conv: str | None = None
    bn: str | None = None

    def text(self) -> str:
        return " >> ".join(f"'{n}'" for n in (self.conv, self.bn) if n) or "identity"


def _branch(G, head) -> Branch:
    """Read an add argument as [conv] [>> bn] of some tensor, each step the only reader of the one before."""
    op = G.nodes[head]["op"]
    if op == "bn" and sole_consumer(G, head):
        below = inputs(G, head)[0]
        if G.nodes[below]["op"] in CONV_OPS and sole_consumer(G, below) == head:
            return Branch(head, inputs(G, below)[0], below, head)
        return Branch(head, below, None, head)
    if op in CONV_OPS and sole_consumer(G, head):
        return Branch(head, inputs(G, head)[0], head, None)
    return Branch(head, head)


def _why_not(G, br: Branch, x: str) -> str:
    """Why a branch of the sum is not a linear branch of x."""
    op = G.nodes[br.head]["op"]
    inner = br.src if br.bn and not br.conv else br.head
    if G.nodes[inner]["op"] in CONV_OPS + ("bn",) and (inner != br.head or br.src == br.head):
        return f"'{inner}' is also used outside the sum, so it cannot be merged away"
    if br.src == br.head:
        return f"branch '{br.head}' ({op}) is not a conv [+ bn] of '{x}': not linear"
    return f"branch {br.text()} reads '{br.src}', not '{x}'"


def _plan(G, branches, x):
    """(merged conv attrs, anchor branch) for branches of x, or a reason to leave the add alone."""
    convs = [b for b in branches if b.conv]
    geo = {b.conv: conv_geometry(G, b.conv) for b in convs}
    nd = len(G.nodes[x]["shape"]) - 1
    strides = {geo[b.conv].stride for b in convs} | ({(1,) * nd} if len(convs) < len(branches) else set())
    if len(strides) > 1:
        return None, f"branch strides differ ({', '.join(map(str, sorted(strides)))})"
    groups = {geo[b.conv].groups for b in convs}
    if len(groups) > 1:
        return None, f"branch groups differ ({', '.join(map(str, sorted(groups)))})"
    for b in convs:
        if any(lo != hi for lo, hi in geo[b.conv].pads):
            return None, f"'{b.conv}' pads unevenly {list(geo[b.conv].pads)}, so no centred kernel matches it"
    ext = {b: (geo[b.conv].extent if b.conv else (1,) * nd) for b in branches}
    pad = {b: (tuple(lo for lo, _ in geo[b.conv].pads) if b.conv else (0,) * nd) for b in branches}
    K = tuple(max(e[i] for e in ext.values()) for i in range(nd))
    P = set()
    for b in branches:
        if any((Kd - e) % 2 for Kd, e in zip(K, ext[b])):
            return None, f"{b.text()} spans {list(ext[b])}: it cannot sit centred in the {list(K)} kernel"
        P.add(tuple(p + (Kd - e) // 2 for p, Kd, e in zip(pad[b], K, ext[b])))
    if len(P) > 1:
        return None, f"branch paddings do not centre the kernels in one {list(K)} kernel (would need {sorted(P)})"
    merged, parts = math.prod(K), sum(math.prod(geo[b.conv].k) for b in convs) + len(branches) - len(convs)
    if merged > parts:
        return None, (f"the merged {list(K)} kernel costs {merged} MACs per output and input channel, "
                      f"the branches {parts}")
    anchor = max(convs, key=lambda b: math.prod(ext[b]))
    g0 = geo[anchor.conv]
    attrs = dict(out=g0.out, k=K, stride=g0.stride, padding=P.pop(), dilation=1, groups=g0.groups, bias=True)
    return (attrs, anchor), None


def _merged_kernel(G, weights, branches, attrs, cin):
    K, out, groups = attrs["k"], attrs["out"], attrs["groups"]
    w = torch.zeros(out, cin // groups, *K, dtype=torch.float64)
    b = torch.zeros(out, dtype=torch.float64)
    for br in branches:
        if br.conv:
            wi, bi = get_wb(G, weights, br.conv)
            wi = pad_centred(dilate(wi, conv_geometry(G, br.conv).dilation), K)
        else:
            wi, bi = identity_kernel(out, cin // groups, K), None
        if br.bn:
            wi, bi = scale_out(wi, bi, *bn_affine(weights[br.bn], G.nodes[br.bn]["attrs"].eps))
        w = w + wi
        b = b + (bi if bi is not None else 0)
    return w, b


def _merge_sum(G, weights, node, res) -> None:
    branches = [_branch(G, h) for h in inputs(G, node)]
    counts = Counter(b.src for b in branches)
    sources = [s for s, n in counts.items() if n >= 2 and any(b.conv and b.src == s for b in branches)]
    if not sources:
        return  # not a sum of conv branches of one tensor: nothing to re-parameterize
    x = sources[0]
    others = [b for b in branches if b.src != x]
    if others:
        res.decline(node, _why_not(G, others[0], x))
        return
    blocked = precision_blocker(G, node, *{n for b in branches for n in (b.conv, b.bn) if n})
    if blocked:
        res.decline(node, blocked)
        return
    plan, why = _plan(G, branches, x)
    if plan is None:
        res.decline(node, why)
        return
    attrs, anchor = plan
    cin = G.nodes[x]["shape"][0]
    like = float_like(weights[anchor.conv]) if weights is not None else None
    kernel = _merged_kernel(G, weights, branches, attrs, cin) if weights is not None else None
    shape = tuple(G.nodes[node]["shape"])
    redirect(G, node, anchor.conv)
    G.remove_node(node)
    gone = {n for b in branches for n in (b.conv, b.bn) if n and n != anchor.conv}
    G.remove_nodes_from(gone)
    set_op(G, anchor.conv, "conv", attrs)
    assert tuple(G.nodes[anchor.conv]["shape"]) == shape, (anchor.conv, shape)
    if weights is not None:
        for n in gone | {node}:
            weights.pop(n, None)
        set_wb(G, weights, anchor.conv, *kernel, like)
    prune_dead(G)
    res.changed.append(f"{node}: add({', '.join(b.text() for b in branches)}) -> conv '{anchor.conv}' "
                       f"(k={list(attrs['k'])}, groups={attrs['groups']})")


def reparam_branches(G, weights) -> PassResult:
    """replk / dilreparam / add of conv(+bn) branches and identities of one tensor -> one conv."""
    res = PassResult()
    for node in order(G):
        if node not in G:
            continue
        op = G.nodes[node]["op"]
        if folds_by(G, node, "reparam_branches") and precision_blocker(G, node):
            res.decline(node, precision_blocker(G, node))
        elif folds_by(G, node, "reparam_branches"):
            fold_node(G, weights, node)
            res.changed.append(f"{node}: {op} -> conv (k={list(G.nodes[node]['attrs'].k)}, depthwise, BN folded)")
        elif op == "add":
            _merge_sum(G, weights, node, res)
    return res
