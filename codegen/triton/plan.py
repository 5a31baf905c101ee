"""IR members of a fused group -> a plan: the kernels to launch, each with its switches and epilogue.

A group is a chain: member 0 reads the group's input 0, every later member reads the previous member's result
(plus, for add / mul, further group inputs). Each member is validated by its op registry entry (attrs, shape),
then turned into an action by the rule its registration names (OpSpec.triton, one of RULES here): a producer
starts a stage (dwconv, linear, norm), an elementwise op becomes an epilogue step of the current stage. Then rewrite rules merge stages where one kernel
does both (REWRITES):

    dwconv [bias]            -> ln / rmsnorm            : dwconv with the norm fused    (when C <= 1024)
    linear -> bias -> act    -> linear                  : mlp (hidden stays on chip)    (when C, O <= 256)
    norm (no steps)          -> mlp                     : mlp with a norm prologue

plan() takes the whole group or refuses it (NotLowerable). plan_split() splits it instead: every member is
judged on its own (a dense conv, a BatchNorm left over, lnchw: no kernel), the members without a kernel run in
torch and each maximal run of the others is planned like a group of its own, so the epilogue after a dense conv
(bias, activation, layer scale, residual) is still one Triton kernel:

    dwconv -> ln -> linear -> gelu -> linear -> add -> ln | conv 2x2 s2  =  dwconv+ln, mlp, norm | torch
    conv 1x1 -> relu | conv 3x3 | relu -> conv 1x1 -> add -> relu          =  linear | torch | elementwise, linear

Nothing here imports triton, so a group is planned (and refused with a reason) on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from archdsl.errors import ArchError
from archdsl.ops.registry import Attrs, get_op
from archdsl.ops.shapes import resolve_padding

MAX_STEPS = 6  # = epilogue.MAX_STEPS (kept here so planning needs no triton)
PRECISIONS = ("fp32", "bf16", "fp16")
FUSED_NORM_MAX_CHANNELS = 1024  # = dwconv.FUSED_NORM_MAX_CHANNELS
NORM_MAX_CHANNELS = 16384  # = norm.MAX_CHANNELS
MLP_MAX_CHANNELS = 256  # = mlp.MAX_CHANNELS


class NotLowerable(Exception):
    """This group has no Triton lowering; `reason` says which member and why (the backend runs it in torch)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Member:
    """One op of a group: registry op name, its attrs, the group inputs it reads besides the running value
    (indices into the group's inputs; 0 is the group's first input), and its name (key of its weights)."""

    op: str
    attrs: dict = field(default_factory=dict)
    inputs: tuple[int, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class Ref:
    """Where a tensor comes from at run time: ("param", member name, state key), ("input", index, None) or
    ("const", value, None)."""

    kind: str
    where: Any
    key: str | None = None

    def __str__(self):
        if self.kind == "param":
            return f"{self.where}.{self.key}"
        return f"input{self.where}" if self.kind == "input" else repr(self.where)


@dataclass
class Segment:
    """A run of consecutive members (indices into the group's members) run one way: in Triton (``stages``, the
    kernels of the run) or in torch (``stages`` is None; ``reasons`` maps each member index to why it has no
    kernel). A Triton segment reads the running value as its chain input; its input Refs are group inputs."""

    members: list
    stages: list | None = None
    reasons: dict = field(default_factory=dict)

    @property
    def torch(self) -> bool:
        return self.stages is None


@dataclass
class Stage:
    """One kernel launch: kind (dwconv / norm / linear / mlp / elementwise), its compile-time switches, its
    parameter tensors, its epilogue steps, the members it covers and its output shape (no batch)."""

    kind: str
    consts: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    members: list = field(default_factory=list)
    shape: tuple = ()

    def capacity(self) -> int:
        """Epilogue steps still free (a linear's bias takes a slot; other kernels apply their bias inside)."""
        used = len(self.steps) + (1 if self.kind == "linear" and "bias" in self.params else 0)
        return MAX_STEPS - used

    def describe(self) -> str:
        consts = " ".join(f"{k}={v}" for k, v in self.consts.items())
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        steps = ", ".join(op if ref is None else f"{op}({ref})" for op, ref in self.steps) or "-"
        return f"{self.kind} [{consts}] params: {params or '-'} | epilogue: {steps} -> {list(self.shape)}"


# ---- members: normalise and validate --------------------------------------------------------------------

def as_member(m, index: int) -> Member:
    """Accept Member, (op,), (op, attrs), (op, attrs, inputs), (op, attrs, inputs, name) or a dict."""
    if isinstance(m, Member):
        return m if m.name else Member(m.op, dict(m.attrs), tuple(m.inputs), str(index))
    if isinstance(m, dict):
        return Member(m["op"], dict(m.get("attrs") or {}), tuple(m.get("inputs") or ()), str(m.get("name") or index))
    if isinstance(m, (tuple, list)) and m and isinstance(m[0], str):
        op, attrs, inputs, name = (*m, None, None, None)[:4]
        return Member(op, dict(attrs or {}), tuple(inputs or ()), str(name or index))
    raise NotLowerable(f"member {index}: cannot read {m!r} (expected (op, attrs, inputs) or a dict)")


def bind(member: Member, index: int, ins: list) -> tuple[str, Attrs, tuple]:
    """(canonical op name, validated attrs, output shape) from the op registry."""
    if member.op == "bias":  # a bias add of its own: state {"bias": (C,)}
        return "bias", Attrs(), tuple(ins[0])
    try:
        spec = get_op(member.op)
        attrs = spec.bind([], {k: v for k, v in member.attrs.items() if v is not None}, ins)
        return spec.name, attrs, tuple(spec.shape(attrs, ins))
    except ArchError as e:
        raise NotLowerable(f"member {index} ({member.op}): {e.message}") from None


# ---- the planner ------------------------------------------------------------------------------------------

class Planner:
    def __init__(self, shapes):
        self.inputs = [tuple(s) for s in shapes]
        self.stages: list[Stage] = []
        self.shape = self.inputs[0]

    @property
    def current(self) -> Stage | None:
        return self.stages[-1] if self.stages else None

    def start(self, kind, index, shape, **consts) -> Stage:
        stage = Stage(kind, consts=consts, members=[index], shape=tuple(shape))
        self.stages.append(stage)
        return stage

    def step(self, index, op, ref=None, shape=None):
        """Append an epilogue step; open an elementwise stage when there is none, it is full, or the step
        broadcasts the result to a larger shape than the producer's tile."""
        shape = tuple(shape or self.shape)
        cur = self.current
        grows = cur is not None and shape != cur.shape
        if cur is None or cur.capacity() < 1 or (grows and cur.kind != "elementwise"):
            cur = self.start("elementwise", index, shape)
        if index not in cur.members:
            cur.members.append(index)
        cur.shape = shape
        cur.steps.append((op, ref))


def _need_1d_or_2d(i, op, shape):
    if len(shape) - 1 not in (1, 2):
        raise NotLowerable(f"member {i} ({op}): depthwise kernels take 1-D or 2-D maps, got shape {list(shape)}")


def _dw(pl, i, m, a, ins, out):
    _need_1d_or_2d(i, m.op, ins[0])
    c = ins[0][0]
    mult = out[0] // c
    pads = resolve_padding(m.op, a.padding, a.k, a.stride, a.dilation)
    st = pl.start("dwconv", i, out, k=tuple(a.k), stride=tuple(a.stride), dilation=tuple(a.dilation),
                  padding=tuple(pads), mult=mult)
    st.params["weight"] = Ref("param", m.name, "weight")
    if a.bias:
        st.params["bias"] = Ref("param", m.name, "bias")


def _linear(pl, i, m, a, ins, out):
    st = pl.start("linear", i, out, cin=ins[0][0])
    st.params["weight"] = Ref("param", m.name, "weight")
    if a.bias:
        st.params["bias"] = Ref("param", m.name, "bias")


def _conv(pl, i, m, a, ins, out):
    c = ins[0][0]
    groups = c if a.groups == -1 else a.groups
    if groups == c and out[0] % c == 0 and groups > 1:
        return _dw(pl, i, m, a, ins, out)
    pads = resolve_padding(m.op, a.padding, a.k, a.stride, a.dilation)
    pointwise = all(k == 1 for k in a.k) and all(s == 1 for s in a.stride) and all(p == (0, 0) for p in pads)
    if pointwise and groups == 1:
        return _linear(pl, i, m, a, ins, out)
    raise NotLowerable(f"member {i} (conv k={list(a.k)} stride={list(a.stride)} groups={groups}): only depthwise "
                       "and 1x1 (stride 1, groups 1) convolutions have Triton kernels; dense convs stay on cuDNN")


def _pwconv(pl, i, m, a, ins, out):
    if a.groups != 1:
        raise NotLowerable(f"member {i} (pwconv groups={a.groups}): grouped 1x1 convs have no Triton kernel")
    _linear(pl, i, m, a, ins, out)


def _norm(pl, i, m, a, ins, out):
    kind = "ln" if m.op == "ln" else "rms"
    c = ins[0][0]
    if c > NORM_MAX_CHANNELS:
        raise NotLowerable(f"member {i} ({m.op}): {c} channels; a norm tile holds at most {NORM_MAX_CHANNELS}")
    params = {"norm_weight": Ref("param", m.name, "weight")}
    if kind == "ln" and a.bias:
        params["norm_bias"] = Ref("param", m.name, "bias")
    cur = pl.current
    if (cur is not None and cur.kind == "dwconv" and not cur.steps and "norm" not in cur.consts
            and c <= FUSED_NORM_MAX_CHANNELS):  # rewrite: dwconv [bias] -> norm  =>  dwconv with fused norm
        cur.consts.update(norm=kind, eps=a.eps)
        cur.params.update(params)
        cur.members.append(i)
        return
    st = pl.start("norm", i, out, norm=kind, eps=a.eps)
    st.params.update(params)


def _activation(pl, i, m, a, ins, out):  # an epilogue step named after the op (relu, silu, ...)
    pl.step(i, m.op)


def _gelu(pl, i, m, a, ins, out):
    pl.step(i, "gelu" if a.approximate == "none" else "gelu_tanh")


def _starrelu(pl, i, m, a, ins, out):  # s * relu(x)^2 + b
    pl.step(i, "relu2")
    pl.step(i, "mul", Ref("param", m.name, "scale"))
    pl.step(i, "add", Ref("param", m.name, "bias"))


def _channel_scale(pl, i, m, a, ins, out):
    pl.step(i, "mul", Ref("param", m.name, "gamma"))


def _const_scale(pl, i, m, a, ins, out):
    pl.step(i, "mul", Ref("const", float(a.value)))


def _bias(pl, i, m, a, ins, out):
    pl.step(i, "add", Ref("param", m.name, "bias"))


def _binary(pl, i, m, a, ins, out):
    for j in m.inputs:
        pl.step(i, m.op, Ref("input", j), shape=out)
    if a.get("value") is not None:  # add(0.5), mul(scale): a constant operand, as const_scale's
        pl.step(i, m.op, Ref("const", float(a.value)), shape=out)


def _nothing(pl, i, m, a, ins, out):  # identity, and dropout / droppath in inference
    pass


# An op names its rule on its registration (OpSpec.triton), or says why it has none (OpSpec.triton_declined).
RULES = {
    "dwconv": _dw, "conv": _conv, "pwconv": _pwconv, "linear": _linear, "norm": _norm,
    "activation": _activation, "gelu": _gelu, "starrelu": _starrelu,
    "channel_scale": _channel_scale, "const_scale": _const_scale, "binary": _binary, "no_op": _nothing,
}


def member_rule(op: str):
    """(the rule lowering a member of this op, None) or (None, why it has none)."""
    if op == "bias":  # a bias add of its own, not a registered op
        return _bias, None
    spec = get_op(op)
    if spec.triton is None:
        return None, spec.triton_declined or "no Triton lowering for this op"
    return RULES[spec.triton], None


# ---- rewrites over stages ---------------------------------------------------------------------------------

def _mlp_rewrite(stages: list[Stage]) -> list[Stage]:
    """linear -> [bias] -> one activation -> linear  =>  mlp (when C and O fit registers)."""
    out: list[Stage] = []
    for st in stages:
        prev = out[-1] if out else None
        if (prev is not None and prev.kind == "linear" and st.kind == "linear"
                and len(prev.steps) == 1 and prev.steps[0][1] is None
                and max(prev.consts.get("cin", 0), st.shape[0]) <= MLP_MAX_CHANNELS):
            merged = Stage("mlp", consts={"act": prev.steps[0][0], "cin": prev.consts["cin"]},
                           params={"w1": prev.params["weight"], "w2": st.params["weight"]},
                           steps=list(st.steps), members=prev.members + st.members, shape=st.shape)
            if "bias" in prev.params:
                merged.params["b1"] = prev.params["bias"]
            if "bias" in st.params:
                merged.params["b2"] = st.params["bias"]
            out[-1] = merged
            continue
        out.append(st)
    return out


def _norm_prologue_rewrite(stages: list[Stage]) -> list[Stage]:
    """norm (no steps) -> mlp  =>  mlp with the norm applied to its input tile."""
    out: list[Stage] = []
    for st in stages:
        prev = out[-1] if out else None
        if prev is not None and prev.kind == "norm" and not prev.steps and st.kind == "mlp":
            st.consts.update(norm=prev.consts["norm"], eps=prev.consts["eps"])
            st.params.update(prev.params)
            st.members = prev.members + st.members
            out[-1] = st
            continue
        out.append(st)
    return out


REWRITES = [_mlp_rewrite, _norm_prologue_rewrite]


# ---- entry ------------------------------------------------------------------------------------------------

def _check_group(members, shapes, precision) -> list[Member]:
    """What no split can mend: the precision, the shapes, members that do not read or name what they should."""
    if precision not in PRECISIONS:
        raise NotLowerable(f"precision {precision}: kernels take {', '.join(PRECISIONS)}")
    if not shapes:
        raise NotLowerable("a group needs at least its input shape")
    members = [as_member(m, i) for i, m in enumerate(members)]
    if not members:
        raise NotLowerable("empty group")
    for i, m in enumerate(members):
        for j in m.inputs:
            if not 0 <= j < len(shapes):
                raise NotLowerable(f"member {i} ({m.op}) reads group input {j}; the group has {len(shapes)}")
    return members


def plan(members, shapes, precision: str = "fp32") -> tuple[list[Member], list[Stage]]:
    """Validate the members and return (members, stages); raise NotLowerable naming the member and the reason."""
    members = _check_group(members, shapes, precision)
    pl = Planner(shapes)
    for i, m in enumerate(members):
        ins = [pl.shape] + [pl.inputs[j] for j in m.inputs]
        op, attrs, out = bind(m, i, ins)
        rule, why = member_rule(op)
        if rule is None:
            raise NotLowerable(f"member {i} ({m.op}): {why}")
        members[i] = m = replace(m, op=op)  # canonical name (ln2d -> ln, squared_relu -> relu2)
        rule(pl, i, m, attrs, ins, out)
        pl.shape = out
    stages = pl.stages or [Stage("elementwise", members=list(range(len(members))), shape=pl.shape)]
    for rewrite in REWRITES:
        stages = rewrite(stages)
    return members, stages


# ---- splitting a group: torch members and Triton runs -----------------------------------------------------



def member_verdict(i: int, m: Member, attrs, ins, out) -> str | None:
    """None when member i has a kernel of its own (its rule accepts it on a scratch planner), else why not."""
    rule, why = member_rule(m.op)
    if rule is None:
        return f"member {i} ({m.op}): {why}"
    try:
        rule(Planner([ins[0]]), i, m, attrs, ins, out)
    except NotLowerable as e:
        return e.reason
    return None


def _plan_run(members, shapes, start: int, stop: int, running, precision) -> list[Stage]:
    """Plan members[start:stop] as a group of its own whose input 0 is the running value and input k + 1 the
    group's input k; return its stages with member indices and input Refs in the whole group's terms."""
    run = [replace(m, inputs=tuple(j + 1 for j in m.inputs)) for m in members[start:stop]]
    _, stages = plan(run, [running] + [tuple(s) for s in shapes], precision)
    for st in stages:
        st.members = [start + k for k in st.members]
        st.steps = [(op, Ref("input", ref.where - 1) if ref is not None and ref.kind == "input" else ref)
                    for op, ref in st.steps]  # a member's extra inputs are >= 1 here: never the running value
    return stages


def plan_split(members, shapes, precision: str = "fp32") -> tuple[list[Member], list[Segment]]:
    """Like plan(), but a member without a kernel does not sink the group: it runs in torch, and every maximal
    run of the other members is planned as a group of its own. Returns (members, segments) in member order.
    Raises NotLowerable only for what concerns the whole group (precision, shapes, a member the op registry
    cannot bind: its result's shape would be unknown) and when no member is left with work for a kernel."""
    members = _check_group(members, shapes, precision)
    shapes = [tuple(s) for s in shapes]
    running, before, verdicts = shapes[0], [], []
    for i, m in enumerate(members):
        ins = [running] + [shapes[j] for j in m.inputs]
        op, attrs, out = bind(m, i, ins)
        members[i] = m = replace(m, op=op)
        before.append(running)
        verdicts.append(member_verdict(i, m, attrs, ins, out))
        running = out
    segments: list[Segment] = []
    i = 0
    while i < len(members):
        j = i
        while j < len(members) and (verdicts[j] is None) == (verdicts[i] is None):
            j += 1
        if verdicts[i] is not None:
            segments.append(Segment(list(range(i, j)), None, {k: verdicts[k] for k in range(i, j)}))
        elif all(member_rule(members[k].op)[0] is _nothing for k in range(i, j)):  # a kernel would only copy
            segments.append(Segment(list(range(i, j)), None, {k: f"member {k} ({members[k].op}): nothing to "
                                                              "compute in inference" for k in range(i, j)}))
        else:
            try:
                segments.append(Segment(list(range(i, j)), _plan_run(members, shapes, i, j, before[i], precision)))
            except NotLowerable as e:  # not expected (each member passed alone); keep the run in torch, say why
                segments.append(Segment(list(range(i, j)), None, {k: e.reason for k in range(i, j)}))
        i = j
    merged: list[Segment] = []  # neighbouring torch segments (a no-op run next to a dense conv) become one
    for seg in segments:
        if merged and seg.torch and merged[-1].torch:
            merged[-1].members += seg.members
            merged[-1].reasons.update(seg.reasons)
        else:
            merged.append(seg)
    if all(seg.torch for seg in merged):
        raise NotLowerable("; ".join(r for seg in merged for r in seg.reasons.values()))
    return members, merged
