"""fused: a group of ops the deploy graph runs as one call (made by the group_fusion pass).

A fused node lists its members in order: their ops, their names (submodules of the group, so the state keys
read ``<group>.<member>.weight``), where each member's arguments come from (``in0``, ``in1``: the group's
inputs; otherwise an earlier member's name) and the members' attributes. The last member's result is the
group's. ``boundary`` says why the group ends where it does. Shapes, parameters and MACs are the members'
(their own registry entries), so a fused node costs what its members cost.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.activations import SquaredReLU, StarReLU
from archdsl.ops.conv import Linear, PaddedConv, TapConv1d
from archdsl.ops.merge import Add, Mul
from archdsl.ops.norms import ChannelLayerNorm, ChannelRMSNorm, GroupNormScaleOnly
from archdsl.ops.registry import REQUIRED, Attr, get_op, op
from archdsl.ops.structure import ChannelScale, ConstScale


def channel_linear(x, weight, bias=None):
    """The math of ``Linear`` (weight @ x over the channel axis, dim 1, plus bias), computed so that a
    channels-last-strided (N, C, *spatial) input costs no copy: F.linear over the ``movedim(1, -1)`` view, which
    is contiguous for such an input, and the result viewed back, channels-last strided. A contiguous NCHW input
    takes one copy (into the view's layout) where Linear's ``matmul`` takes two (input and output)."""
    if x.dim() == 2:
        return F.linear(x, weight, bias)
    return F.linear(x.movedim(1, -1), weight, bias).movedim(-1, 1)


class FusedGroup(nn.Module):
    """Members run in order as one call: ``steps`` are (name, op, class, kwargs, argument names).

    Linear members run through ``channel_linear`` (the same math): with ChannelLayerNorm, the activations and
    the merges, which keep their input's strides, a chain fed a channels-last-strided tensor (dwconv_cl's output,
    a LayerNorm's) runs ln -> linear -> act -> linear -> add without a single layout copy."""

    # The module classes a member may have besides torch.nn's (emitted code defines them before this class).
    _emit_deps = (PaddedConv, TapConv1d, Linear, ChannelLayerNorm, ChannelRMSNorm, GroupNormScaleOnly, StarReLU,
                  SquaredReLU, ChannelScale, ConstScale, Add, Mul, channel_linear)

    def __init__(self, steps):
        super().__init__()
        local = {cls.__name__: cls for cls in self._emit_deps}
        self.steps = tuple((name, op, tuple(args)) for name, op, _, _, args in steps)
        for name, _, cls, kwargs, _ in steps:
            make = getattr(nn, cls[3:]) if cls.startswith("nn.") else local[cls]
            self.add_module(name, make(**dict(kwargs)))

    def forward(self, *xs):
        env = {"in" + str(i): x for i, x in enumerate(xs)}
        for name, _, args in self.steps:
            m = self._modules[name]
            if type(m) is Linear:
                env[name] = channel_linear(env[args[0]], m.weight, m.bias)
            else:
                env[name] = m(*[env[a] for a in args])
        return env[self.steps[-1][0]]


def class_ref(cls: type) -> str | None:
    """How FusedGroup names a member's class ("nn.Conv2d", "Linear"), or None when it cannot build it."""
    if getattr(nn, cls.__name__, None) is cls:
        return "nn." + cls.__name__
    return cls.__name__ if cls in FusedGroup._emit_deps else None


def _list_of(what, inner=None):
    def check(v):
        if not isinstance(v, (list, tuple)) or not v:
            return f"must be a non-empty list of {what}"
        if inner and any(not inner(x) for x in v):
            return f"must be a list of {what}"
        return None
    return check


def _pairs(v):
    return isinstance(v, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                                                for p in v)


def members(a, ins):
    """[(name, spec, bound attrs, input shapes, output shape)] of a fused node's members, in order."""
    if not len(a.ops) == len(a.names) == len(a.args) == len(a.member_attrs):
        raise ArchError("fused(): ops, names, args and member_attrs must be equally long")
    shapes = {f"in{i}": tuple(s) for i, s in enumerate(ins)}
    out = []
    for op_name, name, args, pairs in zip(a.ops, a.names, a.args, a.member_attrs):
        if not name.isidentifier() or name in shapes:
            raise ArchError(f"fused(): member name {name!r} must be a new identifier")
        missing = [r for r in args if r not in shapes]
        if missing:
            raise ArchError(f"fused(): member '{name}' reads {missing}: neither a group input nor an earlier member",
                            hint=f"known here: {', '.join(shapes)}")
        spec = get_op(op_name)
        mins = [shapes[r] for r in args]
        defaults_none = {x.name for x in spec.attrs if x.default is None}
        attrs = spec.bind([], {k: v for k, v in pairs if not (v is None and k in defaults_none)}, mins)
        shapes[name] = tuple(spec.shape(attrs, mins))
        out.append((name, spec, attrs, mins, shapes[name]))
    return out


def chain(a) -> list[tuple]:
    """The members as a chain, the form kernel backends take: (op, attrs, indices of the group inputs read
    besides the running value, name) per member. Member 0's running value is in0; every later member's is the
    member before it (group_fusion makes chains)."""
    out, running = [], "in0"
    for op_name, name, args, pairs in zip(a.ops, a.names, a.args, a.member_attrs):
        rest = list(args)
        if running not in rest or any(not (r.startswith("in") and r[2:].isdigit()) for r in rest if r != running):
            raise ArchError(f"fused(): member '{name}' reads {list(args)}, not '{running}' and group inputs: "
                            f"the group is not a chain")
        rest.remove(running)
        out.append((op_name, dict(pairs), tuple(int(r[2:]) for r in rest), name))
        running = name
    return out


def fused_torch(a, ins):
    steps = []
    for name, spec, attrs, mins, _ in members(a, ins):
        cls, kwargs = spec.torch(attrs, mins)
        ref = class_ref(cls)
        if ref is None:
            raise ArchError(f"fused(): member '{name}' ({spec.name}) lowers to {cls.__name__}, which FusedGroup "
                            f"cannot build", hint="add the class to FusedGroup._emit_deps")
        args = dict(zip(a.names, a.args))[name]
        steps.append((name, spec.name, ref, tuple(kwargs.items()), tuple(args)))
    return FusedGroup, dict(steps=tuple(steps))


def fused_reference(m, *xs):
    """Each member's own registry reference, in order (float64)."""
    env = {f"in{i}": x.double() for i, x in enumerate(xs)}
    for name, op_name, args in m.steps:
        env[name] = get_op(op_name).reference(m._modules[name], *[env[r] for r in args])
    return env[m.steps[-1][0]]


op("fused",
   Attr("ops", "any", REQUIRED, check=_list_of("op names", lambda x: isinstance(x, str)), doc="member ops, in order"),
   Attr("names", "any", REQUIRED, check=_list_of("names", lambda x: isinstance(x, str)), doc="member names"),
   Attr("args", "any", REQUIRED, check=_list_of("argument lists", lambda x: isinstance(x, (list, tuple))),
        doc="per member: in0, in1 (group inputs) or earlier member names"),
   Attr("member_attrs", "any", REQUIRED, check=_list_of("(attr, value) lists", _pairs), doc="per member attrs"),
   Attr("boundary", "str", "", doc="why the group ends where it does"),
   shape=lambda a, ins: members(a, ins)[-1][4],
   params=lambda a, ins: sum(spec.params(attrs, mins) for _, spec, attrs, mins, _ in members(a, ins)),
   macs=lambda a, ins, out: sum(spec.macs(attrs, mins, o) for _, spec, attrs, mins, o in members(a, ins)),
   torch=fused_torch, reference=fused_reference, arity=-1, category="compiler",
   doc="A group of ops run as one call (the group_fusion pass makes them; members keep their own facts).",
   examples=(
       ({"ops": ("conv", "relu"), "names": ("conv", "relu"), "args": (("in0",), ("conv",)),
         "member_attrs": ((("out", 4), ("k", 3)), ())}, [(3, 9)]),
       ({"ops": ("linear", "gelu", "layerscale", "add"), "names": ("linear", "gelu", "layerscale", "add"),
         "args": (("in0",), ("linear",), ("gelu",), ("in1", "layerscale")),
         "member_attrs": ((("out", 6),), (("approximate", "tanh"),), (("init", 0.5),), ())}, [(3, 5, 4), (6, 5, 4)]),
       ({"ops": ("bn", "relu", "mul"), "names": ("bn", "relu", "gate"), "args": (("in0",), ("bn",), ("relu", "in1")),
         "member_attrs": ((), (), ())}, [(4, 7), (4, 1)]),
       ({"ops": ("ln", "starrelu", "conv"), "names": ("ln", "act", "conv"), "args": (("in0",), ("ln",), ("act",)),
         "member_attrs": ((("eps", 1e-6),), (), (("out", 2), ("k", 2), ("stride", 2), ("padding", "valid")))},
        [(5, 4, 6)]),
   ))
