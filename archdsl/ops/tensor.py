"""Tensor primitives, so a token mixer can be written in an .arch file: softmax, matmul, einsum, transpose,
slice, chunk / split, unflatten, div.

Axes count the dims of one sample (the batch is never named): a sequence of tokens is (C, N), so axis 0 is the
channels and axis 1 (or -1) the tokens; an image is (C, H, W). Negative axes count from the end. Multi-input
primitives take the current tensor first and labelled results after it: ``$q >> matmul($k)`` is q @ k.
MACs count products that are summed (matmul, einsum contractions), as for linear layers.
"""
from __future__ import annotations

import itertools
import math
import re

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import ref_softmax
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import numel


def axis_of(name, axis, shape) -> int:
    """`axis` (negative counts from the end) as an index into a sample's shape, or an error naming both."""
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ArchError(f"{name}(): axis {axis} does not exist in shape {list(shape)} (the batch is not an axis)",
                        hint=f"axes run 0..{rank - 1}, or -1..-{rank} from the end")
    return axis % rank


def _ints(v):
    if not isinstance(v, (list, tuple)) or not v or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        return "must be a non-empty list of integers"
    return None


# ---- softmax ----------------------------------------------------------------------------------------------

def _softmax_reference(m, x):
    """exp(x - max) / sum along the axis, written with the textbook formula on the axis moved last."""
    t = x.double().movedim(m.dim, -1)
    return ref_softmax(t).movedim(-1, m.dim)


def _softmax_shape(a, ins):
    axis_of("softmax", a.axis, ins[0])
    return tuple(ins[0])


op("softmax", Attr("axis", "int", -1, doc="the axis normalised (default: the last, the keys of a score map)"),
   shape=_softmax_shape,
   torch=lambda a, ins: (nn.Softmax, dict(dim=1 + axis_of("softmax", a.axis, ins[0]))),
   reference=_softmax_reference, category="tensor",
   doc="softmax along one axis: exp(x) / sum(exp(x)) over that axis.",
   examples=(({}, [(3, 5)]), ({"axis": 0}, [(4, 3, 5)]), ({"axis": -2}, [(2, 7, 3)]), ({}, [(6,)])))


# ---- matmul -----------------------------------------------------------------------------------------------

class MatMul(nn.Module):
    def forward(self, a, b):
        return a @ b


def _matmul_shape(a, ins):
    x, y = (tuple(s) for s in ins)
    if len(x) < 2 or len(x) != len(y):
        raise ArchError(f"matmul: shapes {list(x)} and {list(y)} need the same rank, at least 2",
                        hint="matmul multiplies the last two axes (n, k) @ (k, m); reshape or unflatten first")
    if x[-1] != y[-2]:
        raise ArchError(f"matmul: {list(x)} @ {list(y)}: the inner sizes {x[-1]} and {y[-2]} differ",
                        hint="the last axis of the first input must match the second-last axis of the second; "
                             "transpose one of them")
    lead = []
    for p, q in zip(x[:-2], y[:-2]):
        if p != q and 1 not in (p, q):
            raise ArchError(f"matmul: the leading axes of {list(x)} and {list(y)} do not broadcast")
        lead.append(max(p, q))
    return (*lead, x[-2], y[-1])


def _matmul_reference(m, a, b):
    """out[..., i, j] = sum_k a[..., i, k] b[..., k, j] as a broadcast product summed over k."""
    return (a.double().unsqueeze(-1) * b.double().unsqueeze(-3)).sum(-2)


op("matmul", shape=_matmul_shape, arity=2, torch=lambda a, ins: (MatMul, {}), reference=_matmul_reference,
   macs=lambda a, ins, out: numel(out) * ins[0][-1],  # one product per output element and inner index
   category="tensor",
   doc="Matrix product of the last two axes, (n, k) @ (k, m) -> (n, m); leading axes broadcast. "
       "`$q >> matmul($k)` multiplies the current tensor by a labelled one.",
   examples=(({}, [(3, 5), (5, 4)]), ({}, [(2, 3, 5), (2, 5, 4)]), ({}, [(2, 3, 5), (1, 5, 7)])))


# ---- einsum -----------------------------------------------------------------------------------------------

_EQUATION = re.compile(r"(?:[A-Za-z]|\.\.\.)*(?:,(?:[A-Za-z]|\.\.\.)*)?->(?:[A-Za-z]|\.\.\.)*")


def parse_equation(eq: str) -> tuple[list[list[str]], list[str]]:
    """(operand terms, output term) of an einsum equation, each a list of letters and '...'; strict: letters,
    one '->', at most one ',', '...' at most once per term, a letter at most once per term, every output letter
    in some operand, and '...' in the output exactly when in an operand."""
    if not isinstance(eq, str) or not _EQUATION.fullmatch(eq):
        raise ArchError(f'einsum(): equation "{eq}" is not of the form "ab,bc->ac"',
                        hint="write letters, '...', one ',' between the two operands and '->' before the "
                             "output; no spaces")
    lhs, out = eq.split("->")
    terms = [re.findall(r"[A-Za-z]|\.\.\.", t) for t in lhs.split(",")] + [re.findall(r"[A-Za-z]|\.\.\.", out)]
    for t in terms:
        if len(set(t)) != len(t):
            raise ArchError(f'einsum(): "{eq}" repeats an index within one term',
                            hint="diagonals and traces are not supported: each letter once per operand")
    letters = {x for t in terms[:-1] for x in t}
    missing = [x for x in terms[-1] if x not in letters]
    if missing:
        raise ArchError(f'einsum(): output index {missing[0]!r} of "{eq}" is in no operand')
    if ("..." in terms[-1]) != any("..." in t for t in terms[:-1]):
        raise ArchError(f'einsum(): "{eq}" must keep "..." in the output exactly when an operand has it')
    return terms[:-1], terms[-1]


def _einsum_sizes(eq, ins):
    """(letter -> size, the broadcast '...' shape) from the input shapes, checked."""
    terms, _ = parse_equation(eq)
    if len(terms) != len(ins):
        raise ArchError(f'einsum(): "{eq}" has {len(terms)} operand(s) but {len(ins)} input(s) are given',
                        hint="the current tensor is the first operand; pass the second as a $label")
    sizes, ell = {}, []
    for t, shape in zip(terms, ins):
        named = [x for x in t if x != "..."]
        if len(named) > len(shape) or ("..." not in t and len(named) != len(shape)):
            raise ArchError(f'einsum(): term "{"".join(t)}" does not fit an input of shape {list(shape)}',
                            hint="one letter per axis of the sample (no batch), or '...' for the rest")
        if "..." in t:
            cut = t.index("...")
            rest = len(shape) - len(named)
            dims = list(shape[:cut]) + list(shape[cut + rest:])
            ell.append(tuple(shape[cut:cut + rest]))
        else:
            dims = list(shape)
        for x, n in zip(named, dims):
            if sizes.setdefault(x, n) != n:
                raise ArchError(f'einsum(): index {x!r} is {sizes[x]} in one input and {n} in another '
                                f'(shapes {", ".join(str(list(s)) for s in ins)})')
    if len({len(e) for e in ell}) > 1 or any(len({e[i] for e in ell} - {1}) > 1 for i in range(len(ell[0]) if ell else 0)):
        raise ArchError(f'einsum(): the "..." axes of {", ".join(str(list(s)) for s in ins)} do not broadcast')
    ell_shape = tuple(max(col) for col in zip(*ell)) if ell else ()
    return sizes, ell_shape


def _einsum_shape(a, ins):
    sizes, ell = _einsum_sizes(a.equation, ins)
    _, out = parse_equation(a.equation)
    shape = []
    for x in out:
        shape += list(ell) if x == "..." else [sizes[x]]
    if not shape:
        raise ArchError(f'einsum(): "{a.equation}" gives a scalar per sample', hint="keep at least one index")
    return tuple(shape)


def _einsum_macs(a, ins, out):
    # one product per point of the iteration space (every index, summed or kept) when two operands meet
    if len(ins) < 2:
        return 0
    sizes, ell = _einsum_sizes(a.equation, ins)
    return math.prod(sizes.values()) * math.prod(ell)


def batched_equation(eq: str) -> str:
    """The equation with a batch index (a letter it does not use) in front of every term."""
    free = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in eq)
    lhs, out = eq.split("->")
    return ",".join(free + t for t in lhs.split(",")) + "->" + free + out


class Einsum(nn.Module):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation  # already batched: its first index is the batch

    def forward(self, *xs):
        return torch.einsum(self.equation, *xs)


def _einsum_reference(m, *xs):
    """Every output element summed term by term over the contracted indices (explicit loops, float64)."""
    lhs, out = m.equation.split("->")
    terms = lhs.split(",")
    xs = [x.double() for x in xs]
    ranks = [x.dim() - len(t.replace("...", "")) for t, x in zip(terms, xs) if "..." in t]
    if ranks:  # '...' -> fresh capital letters, right-aligned; size-1 axes are broadcast by expanding
        fresh = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in m.equation][:max(ranks)]
        terms = [t.replace("...", "".join(fresh[len(fresh) - (x.dim() - len(t) + 3):])) for t, x in zip(terms, xs)]
        out = out.replace("...", "".join(fresh))
        full = {}
        for t, x in zip(terms, xs):
            for c, n in zip(t, x.shape):
                full[c] = max(full.get(c, 1), n)
        xs = [x.expand(*[full[c] for c in t]) for t, x in zip(terms, xs)]
    sizes = {c: n for t, x in zip(terms, xs) for c, n in zip(t, x.shape)}
    result = torch.zeros(*[sizes[c] for c in out], dtype=torch.float64)
    summed = [c for c in sizes if c not in out]
    for idx in itertools.product(*[range(sizes[c]) for c in out]):
        env = dict(zip(out, idx))
        total = 0.0
        for rest in itertools.product(*[range(sizes[c]) for c in summed]):
            env.update(zip(summed, rest))
            prod = 1.0
            for t, x in zip(terms, xs):
                prod = prod * x[tuple(env[c] for c in t)]
            total = total + prod
        result[idx] = total
    return result


op("einsum", Attr("equation", "str", doc='e.g. "hdn,hdm->hnm"; indices of one sample, no batch'),
   shape=_einsum_shape, macs=_einsum_macs, arity=-1, category="tensor",
   torch=lambda a, ins: (Einsum, dict(equation=batched_equation(a.equation))),
   reference=_einsum_reference,
   doc="Einstein summation over the axes of one or two inputs (the current tensor, then a $label); the "
       "equation names the axes of one sample, the batch is added. Strict: letters, '...', one ',' and '->'.",
   examples=(({"equation": "dn,dm->nm"}, [(3, 4), (3, 5)]), ({"equation": "hdn,hdm->hnm"}, [(2, 3, 4), (2, 3, 5)]),
             ({"equation": "cn->nc"}, [(3, 4)]), ({"equation": "hnm,hdm->hdn"}, [(2, 4, 3), (2, 5, 3)]),
             ({"equation": "...nd,...md->...nm"}, [(2, 3, 4), (1, 5, 4)])))


# ---- transpose / slice / unflatten --------------------------------------------------------------------------

class Transpose(nn.Module):
    def __init__(self, dim0, dim1):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x):
        return x.transpose(self.dim0, self.dim1)


def _swap(a, ins):
    return axis_of("transpose", a.a, ins[0]), axis_of("transpose", a.b, ins[0])


def _transpose_shape(a, ins):
    i, j = _swap(a, ins)
    out = list(ins[0])
    out[i], out[j] = out[j], out[i]
    return tuple(out)


def _transpose_reference(m, x):
    x = x.double()
    out = torch.empty(*_transpose_shape_full(x.shape, m.dim0, m.dim1), dtype=torch.float64)
    for idx in itertools.product(*(range(s) for s in x.shape)):
        swapped = list(idx)
        swapped[m.dim0], swapped[m.dim1] = idx[m.dim1], idx[m.dim0]
        out[tuple(swapped)] = x[idx]
    return out


def _transpose_shape_full(shape, i, j):
    out = list(shape)
    out[i], out[j] = out[j], out[i]
    return out


op("transpose", Attr("a", "int", -2), Attr("b", "int", -1),
   shape=_transpose_shape, torch=lambda a, ins: (Transpose, dict(dim0=1 + _swap(a, ins)[0], dim1=1 + _swap(a, ins)[1])),
   reference=_transpose_reference, exact_in_any_dtype=True, category="tensor",
   doc="Swap two axes (default the last two): (C, N) tokens -> (N, C).",
   examples=(({}, [(3, 5)]), ({"a": 0, "b": 2}, [(2, 3, 4)]), ({}, [(2, 3, 4)])))


class Slice(nn.Module):
    def __init__(self, dim, start, length):
        super().__init__()
        self.dim, self.start, self.length = dim, start, length

    def forward(self, x):
        return x.narrow(self.dim, self.start, self.length)


def slice_bounds(name, start, stop, axis, shape) -> tuple[int, int, int]:
    """(axis, start, stop) with negative values counted from the end, or an error if the range is empty."""
    ax = axis_of(name, axis, shape)
    n = shape[ax]
    lo = start + n if start < 0 else start
    hi = n if stop is None else (stop + n if stop < 0 else stop)
    if not 0 <= lo < hi <= n:
        raise ArchError(f"{name}(): [{start}:{'' if stop is None else stop}] is empty or out of range on axis "
                        f"{axis} of shape {list(shape)}", hint=f"that axis has {n} entries, 0..{n - 1}")
    return ax, lo, hi


def _slice_facts(a, ins):
    return slice_bounds("slice", a.start, a.stop, a.axis, ins[0])


def _slice_shape(a, ins):
    ax, lo, hi = _slice_facts(a, ins)
    return tuple(hi - lo if i == ax else s for i, s in enumerate(ins[0]))


def _slice_reference(m, x):
    idx = torch.arange(m.start, m.start + m.length)
    return x.double().index_select(m.dim, idx)


def _slice_torch(a, ins):
    ax, lo, hi = _slice_facts(a, ins)
    return Slice, dict(dim=1 + ax, start=lo, length=hi - lo)


op("slice", Attr("start", "int"), Attr("stop", "int", None, doc="exclusive; default the end"),
   Attr("axis", "int", 0),
   shape=_slice_shape, torch=_slice_torch, reference=_slice_reference, exact_in_any_dtype=True, category="tensor",
   doc="Entries start..stop (exclusive) of one axis; slice(0, 1, axis = -1) takes the first token (a CLS token).",
   examples=(({"start": 1, "stop": 3}, [(4, 5)]), ({"start": 0, "stop": 1, "axis": -1}, [(3, 7)]),
             ({"start": -2, "axis": 1}, [(2, 5, 3)])))


# ---- chunk / split: one node per piece (the front end makes them all and binds the list) -----------------------

def _piece_bounds(name, sizes, piece, axis, shape):
    ax = axis_of(name, axis, shape)
    if sum(sizes) != shape[ax]:
        raise ArchError(f"{name}(): pieces of {sizes} do not add up to the {shape[ax]} entries of axis {axis} of "
                        f"shape {list(shape)}", hint="the pieces must cover the axis exactly")
    if piece is None or not 0 <= piece < len(sizes):
        raise ArchError(f"{name}(): piece {piece} of {len(sizes)}")
    lo = sum(sizes[:piece])
    return ax, lo, lo + sizes[piece]


def _chunk_sizes(a, ins):
    ax = axis_of("chunk", a.axis, ins[0])
    if ins[0][ax] % a.n:
        raise ArchError(f"chunk(): {a.n} pieces do not divide the {ins[0][ax]} entries of axis {a.axis} of shape "
                        f"{list(ins[0])}", hint="use split([...]) for pieces of different sizes")
    return [ins[0][ax] // a.n] * a.n


def _piece_op(name, sizes_of, first_attr, examples, doc):
    def bounds(a, ins):
        return _piece_bounds(name, sizes_of(a, ins), a.piece, a.axis, ins[0])

    def shape(a, ins):
        ax, lo, hi = bounds(a, ins)
        return tuple(hi - lo if i == ax else s for i, s in enumerate(ins[0]))

    def torch_(a, ins):
        ax, lo, hi = bounds(a, ins)
        return Slice, dict(dim=1 + ax, start=lo, length=hi - lo)

    op(name, first_attr, Attr("axis", "int", 0),
       Attr("piece", "int", None, doc="set by the front end: which piece this node is"),
       shape=shape, torch=torch_, reference=_slice_reference, pieces=lambda a, ins: len(sizes_of(a, ins)),
       exact_in_any_dtype=True, category="tensor", doc=doc, examples=examples)


_piece_op("chunk", _chunk_sizes, Attr("n", "int", check=positive, doc="number of equal pieces"),
          (({"n": 3, "piece": 1}, [(6, 5)]), ({"n": 2, "axis": -1, "piece": 1}, [(3, 4, 6)])),
          doc="Cut one axis into n equal pieces; `qkv: linear(3 * dim) >> chunk(3)` then $qkv[0], $qkv[1], "
              "$qkv[2] are q, k and v.")
_piece_op("split", lambda a, ins: list(a.sizes), Attr("sizes", "any", check=_ints, doc="the size of every piece"),
          (({"sizes": [2, 4], "piece": 1}, [(6, 5)]), ({"sizes": [1, 2, 1], "axis": 1, "piece": 1}, [(3, 4, 2)])),
          doc="Cut one axis into pieces of the given sizes; $label[i] is piece i.")


class Unflatten(nn.Module):
    def __init__(self, dim, sizes):
        super().__init__()
        self.dim, self.sizes = dim, tuple(sizes)

    def forward(self, x):
        return x.reshape(*x.shape[:self.dim], *self.sizes, *x.shape[self.dim + 1:])


def _unflatten_shape(a, ins):
    ax = axis_of("unflatten", a.axis, ins[0])
    if any(s < 1 for s in a.sizes) or math.prod(a.sizes) != ins[0][ax]:
        raise ArchError(f"unflatten(): {list(a.sizes)} does not hold the {ins[0][ax]} entries of axis {a.axis} "
                        f"of shape {list(ins[0])}", hint="the sizes must multiply to that axis' length")
    return (*ins[0][:ax], *a.sizes, *ins[0][ax + 1:])


def _unflatten_reference(m, x):
    """out[..., i0, i1, ..., rest] = x[..., row-major index of (i0, i1, ...), rest], by loops."""
    x = x.double()
    out = torch.empty(*x.shape[:m.dim], *m.sizes, *x.shape[m.dim + 1:], dtype=torch.float64)
    for k, idx in enumerate(itertools.product(*(range(s) for s in m.sizes))):
        out[(slice(None),) * m.dim + idx] = x.select(m.dim, k)
    return out


op("unflatten", Attr("axis", "int"), Attr("sizes", "any", check=_ints),
   shape=_unflatten_shape, reference=_unflatten_reference, exact_in_any_dtype=True, category="tensor",
   torch=lambda a, ins: (Unflatten, dict(dim=1 + axis_of("unflatten", a.axis, ins[0]), sizes=tuple(a.sizes))),
   doc="Split one axis into several (row-major): tokens (C, H*W) -> image with unflatten(1, [H, W]); "
       "(C, N) -> heads (h, C/h, N) with unflatten(0, [h, C/h]). flatten(start, end) is the inverse.",
   examples=(({"axis": 1, "sizes": [2, 3]}, [(4, 6)]), ({"axis": 0, "sizes": [3, 2]}, [(6, 5)]),
             ({"axis": -1, "sizes": [2, 2]}, [(3, 2, 4)])))
