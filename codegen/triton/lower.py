"""Lowering entry point: a fused group of IR members -> a callable running generated Triton kernels.

    ok, why = triton_available()
    try:
        run = lower_group(members, shapes, precision="bf16")     # plan.py: members -> stages
    except NotLowerable as e:                                    # the backend keeps this group in torch
        log(f"group {name}: {e.reason}")
    y = run(x, *other_inputs, weights={member name: {state key: tensor}})

    run = lower_group(members, shapes, split=True)               # members without a kernel run in torch
    y = run(x, *other_inputs, weights=..., modules={member name: its torch module})

Splitting (plan.plan_split; what lower_fused_node and lower_module do): a member with no kernel (a dense conv, a
BatchNorm left over, lnchw) runs as its own torch module and every maximal run of the other members becomes
Triton kernels, so a dense conv's epilogue or the norm + MLP after it still fuse. ``run.torch_members`` says
which members stayed in torch and why; ``lower_module`` reports it per group.

How kernels are generated. plan.py turns the members into stages; each stage is one of five parameterised
@triton.jit kernels (dwconv, norm, linear, mlp, elementwise) whose tl.constexpr switches come from the IR: the
epilogue step list (bias, activation, layer scale, residual add, gates: epilogue.py), which norm is fused, the
MLP's activation, which affine parts exist. Triton compiles one binary per distinct set of constexprs, exactly as
if we had emitted that group's source text, and the untaken branches vanish. The geometry (kernel size,
stride, dilation, padding) stays a runtime integer: the tap loops are loops either way, so one binary serves a
whole search over kernel sizes (Triton still specialises values equal to 1). We chose this over emitting text
and exec'ing it: nothing built from the IR is ever run as code (the constexprs are names checked against
epilogue.ACTIVATIONS / BINARY, and integers), the kernels stay ordinary files that read, test and debug as
such, and Triton's own cache keys on the constexpr values.

Weights: ``weights[member.name]`` is that member's torch state (``{"weight": ..., "bias": ...}``, the keys of its
module's state_dict, as the passes' ``weights`` use). Group inputs: positional, input 0 first. Kernels compute
inference semantics (dropout / droppath are identity).
"""
from __future__ import annotations

import os

import torch

from archdsl.ir.graph import inputs as args_of
from codegen.triton.plan import Member, NotLowerable, Ref, Segment, Stage, plan, plan_split

__all__ = ["NotLowerable", "Member", "LoweredGroup", "lower_group", "lower_fused_node", "triton_available",
           "group_from_nodes", "TritonGroup", "lower_module", "member_modules"]

DEBUG = os.environ.get("ARCHDSL_TRITON_DEBUG", "0") not in ("", "0")


def triton_available() -> tuple[bool, str]:
    """(whether lowered groups can run here, why / on what)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"triton is not importable: {e}"
    if not hasattr(triton, "jit"):
        return False, "the module named triton is not Triton (no triton.jit)"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1): CPU tensors, slow, for tests"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU (torch.cuda.is_available() is False) and TRITON_INTERPRET is not set"
    major, minor = torch.cuda.get_device_capability()
    if major < 7:
        return False, f"GPU compute capability {major}.{minor}; Triton needs 7.0 or newer"
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()} (sm_{major}{minor})"


class LoweredGroup:
    """The kernels of one group, run in order; call with the group inputs, the weights and optionally `out`.

    A split group (``segments`` with torch ones) also needs ``modules``: the torch module of each member that
    runs in torch, by member name (TritonGroup passes them)."""

    def __init__(self, name: str, members: list[Member], stages, shapes, layout: str, precision: str,
                 segments: list[Segment] | None = None):
        self.name, self.members = name, members
        self.segments = segments if segments is not None else [Segment(list(range(len(members))), list(stages))]
        self.stages = [st for seg in self.segments if not seg.torch for st in seg.stages]  # every kernel launch
        self.shapes, self.layout, self.precision = [tuple(s) for s in shapes], layout, precision

    @property
    def torch_members(self) -> dict:
        """{member index: why it runs in torch}; empty when the whole group runs in Triton."""
        return {i: why for seg in self.segments if seg.torch for i, why in seg.reasons.items()}

    def __call__(self, *inputs, weights=None, out=None, modules=None):
        if len(inputs) != len(self.shapes):
            raise TypeError(f"group '{self.name}' takes {len(self.shapes)} input(s), got {len(inputs)}")
        if tuple(inputs[0].shape[1:]) != self.shapes[0]:
            raise ValueError(f"group '{self.name}': input of shape {tuple(inputs[0].shape)}, planned for "
                             f"(N, {', '.join(map(str, self.shapes[0]))})")
        if torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(inputs, weights, modules)):
            raise RuntimeError(f"group '{self.name}': Triton groups compute inference only (no backward); "
                               "call under torch.no_grad() or torch.inference_mode()")
        env = Env(inputs, weights or {})
        y = inputs[0]
        for s, seg in enumerate(self.segments):
            last = s == len(self.segments) - 1
            if seg.torch:
                y = self._run_torch(seg, y, inputs, modules)
                if last and out is not None:
                    y = out.copy_(y)
                continue
            for k, stage in enumerate(seg.stages):
                y = RUNNERS[stage.kind](stage, y, env, out if last and k == len(seg.stages) - 1 else None)
        return y

    def _run_torch(self, seg: Segment, y, inputs, modules):
        """The members of a torch segment through their own modules (add / mul: the running value first)."""
        for i in seg.members:
            m = self.members[i]
            module = (modules or {}).get(m.name)
            if module is None:
                raise TypeError(f"group '{self.name}': member {i} ({m.op}) runs in torch "
                                f"({seg.reasons.get(i, '')}); pass its module: modules={{'{m.name}': ...}}")
            y = module(y, *[inputs[j] for j in m.inputs])
        return y

    def split_summary(self) -> str:
        """Which members run as Triton kernels and which in torch, and why (empty when nothing is in torch)."""
        if not self.torch_members:
            return ""
        runs = [f"{_span(seg.members)} ({' -> '.join(self.members[i].op for i in seg.members)})"
                for seg in self.segments if not seg.torch]
        left = "; ".join(self.torch_members.values())
        return f"{len(self.stages)} Triton kernel(s) for {', '.join(runs)}; in torch: {left}"

    def describe(self) -> str:
        head = f"group '{self.name}' ({self.precision}, {self.layout}): "
        head += " -> ".join(m.op for m in self.members) + f" = {len(self.stages)} kernel(s)"
        if self.torch_members:
            head += f" + torch for member(s) {', '.join(map(str, self.torch_members))}"
        lines, k = [head], 0
        for seg in self.segments:
            if seg.torch:
                lines += [f"  torch: {why}" for why in seg.reasons.values()]
                continue
            for st in seg.stages:
                lines.append(f"  {k}: {st.describe()}")
                k += 1
        return "\n".join(lines)

    def __repr__(self):
        return self.describe()


def lower_group(members, shapes, *, layout: str = "channels_first", precision: str = "fp32",
                name: str = "group", split: bool = False) -> LoweredGroup:
    """Plan the group (raises NotLowerable with the member and reason) and return its runner. Planning needs no
    GPU; running does (or TRITON_INTERPRET=1 with CPU tensors). With split=True a member without a kernel runs
    in torch (call the result with ``modules=``) and NotLowerable means no member is left for a kernel."""
    if split:
        members, segments = plan_split(members, shapes, precision)
        group = LoweredGroup(name, members, None, shapes, layout, precision, segments)
    else:
        members, stages = plan(members, shapes, precision)
        group = LoweredGroup(name, members, stages, shapes, layout, precision)
    if DEBUG:
        print(group.describe())
    return group


def _tensors(inputs, weights, modules=None):
    yield from (t for t in inputs if isinstance(t, torch.Tensor))
    for state in (weights or {}).values():
        yield from (t for t in state.values() if isinstance(t, torch.Tensor))
    for module in (modules or {}).values():
        yield from module.parameters()


def _span(indices) -> str:
    """'member 3' or 'members 0-5' (a segment's members are consecutive)."""
    return f"member {indices[0]}" if len(indices) == 1 else f"members {indices[0]}-{indices[-1]}"


# ---- running a stage ----------------------------------------------------------------------------------------

class Env:
    """Resolves a Ref to a tensor (or a float for a constant) at call time."""

    def __init__(self, inputs, weights):
        self.inputs, self.weights = inputs, weights

    def __call__(self, ref: Ref | None):
        if ref is None:
            return None
        if ref.kind == "input":
            return self.inputs[ref.where]
        if ref.kind == "const":
            return float(ref.where)
        state = self.weights.get(ref.where)
        if state is None:
            raise KeyError(f"no weights for member '{ref.where}' (weights has {sorted(self.weights)[:8]})")
        for key in (ref.key, f"conv.{ref.key}"):  # PaddedConv (asymmetric padding) nests its conv
            if key in state:
                return state[key]
        raise KeyError(f"member '{ref.where}' has no '{ref.key}' in its weights (keys: {sorted(state)})")

    def steps(self, stage: Stage):
        return [(op, self(ref)) for op, ref in stage.steps]


def _run_dwconv(st, x, env, out):
    from codegen.triton.dwconv import dwconv

    c = st.consts
    return dwconv(x, env(st.params["weight"]), env(st.params.get("bias")), stride=c["stride"],
                  padding=c["padding"], dilation=c["dilation"], norm=c.get("norm"),
                  norm_weight=env(st.params.get("norm_weight")), norm_bias=env(st.params.get("norm_bias")),
                  eps=c.get("eps", 1e-6), steps=env.steps(st), out=out)


def _run_norm(st, x, env, out):
    from codegen.triton.norm import norm

    return norm(x, st.consts["norm"], env(st.params.get("norm_weight")), env(st.params.get("norm_bias")),
                st.consts["eps"], env.steps(st), out=out)


def _run_linear(st, x, env, out):
    from codegen.triton.matmul import linear

    bias = [("add", env(st.params["bias"]))] if "bias" in st.params else []
    return linear(x, env(st.params["weight"]), bias + env.steps(st), out=out)


def _run_mlp(st, x, env, out):
    from codegen.triton.mlp import mlp

    c = st.consts
    return mlp(x, env(st.params["w1"]), env(st.params.get("b1")), c["act"], env(st.params["w2"]),
               env(st.params.get("b2")), norm=c.get("norm"), norm_weight=env(st.params.get("norm_weight")),
               norm_bias=env(st.params.get("norm_bias")), eps=c.get("eps", 1e-6), steps=env.steps(st), out=out)


def _run_elementwise(st, x, env, out):
    from codegen.triton.elementwise import elementwise

    return elementwise(x, env.steps(st), out=out)


RUNNERS = {"dwconv": _run_dwconv, "norm": _run_norm, "linear": _run_linear, "mlp": _run_mlp,
           "elementwise": _run_elementwise}


# ---- from the IR ------------------------------------------------------------------------------------------

def group_from_nodes(G, nodes) -> dict:
    """The lower_group arguments for a chain of IR nodes (in order): members named by their node (so the
    passes' per-node weights apply as they are), the group inputs (IR nodes outside the chain, the chain's
    input first), their shapes, and the group's layout / precision. Raises NotLowerable when `nodes` is not a
    chain whose intermediate results stay inside it. Returns dict(members, shapes, layout, precision, inputs)."""
    nodes = list(nodes)
    inside = set(nodes)
    group_inputs: list[str] = []

    def input_index(src):
        if src not in group_inputs:
            group_inputs.append(src)
        return group_inputs.index(src)

    members = []
    for i, node in enumerate(nodes):
        d = G.nodes[node]
        args = args_of(G, node)
        running = nodes[i - 1] if i else args[0]
        if i == 0:
            input_index(running)
        if args.count(running) != 1:
            raise NotLowerable(f"'{node}' ({d['op']}) must read the previous member exactly once; it reads {args}")
        extra = []
        for a in args:
            if a == running:
                continue
            if a in inside:
                raise NotLowerable(f"'{node}' reads '{a}', an earlier member that is not its predecessor: "
                                   "the group is not a chain")
            extra.append(input_index(a))
        if i < len(nodes) - 1 and any(s not in inside for s in G.successors(node)):
            raise NotLowerable(f"'{node}' is used outside the group; its result would have to be stored")
        members.append(Member(d["op"], dict(d["attrs"]), tuple(extra), node))
    last = G.nodes[nodes[-1]]
    return dict(members=members, shapes=[tuple(G.nodes[s]["shape"]) for s in group_inputs],
                layout=last.get("layout", "channels_first"), precision=last.get("precision", "fp32"),
                inputs=group_inputs)


def lower_fused_node(G, node: str, split: bool = True) -> LoweredGroup:
    """Lower a `fused` node of the deploy IR (made by the group_fusion pass): its members as a chain
    (archdsl.ops.fused.chain), the shapes of its inputs, its precision and layout; split (default) so members
    without a kernel run in torch. Run the result with the fused module's members as weights and modules:
    ``TritonGroup(lower_fused_node(G, n), dict(fused_module.named_children()))``."""
    from archdsl.errors import ArchError
    from archdsl.ops.fused import chain

    d = G.nodes[node]
    if d["op"] != "fused":
        raise NotLowerable(f"'{node}' is a {d['op']} node, not a fused group")
    try:
        members = chain(d["attrs"])
    except ArchError as e:
        raise NotLowerable(f"'{node}': {e.message}") from None
    shapes = [tuple(G.nodes[a]["shape"]) for a in args_of(G, node)]
    try:
        return lower_group(members, shapes, layout=d.get("layout", "channels_first"),
                           precision=d.get("precision", "fp32"), name=node, split=split)
    except NotLowerable as e:
        raise NotLowerable(f"group '{node}': {e.reason}") from None


class TritonGroup(torch.nn.Module):
    """An nn.Module running a LoweredGroup with the parameters of the members' torch modules (by member name):
    the torch backend builds the members' modules as usual and swaps the chain for this one module. Members the
    group leaves in torch (a split group) run as these modules themselves."""

    def __init__(self, group: LoweredGroup, modules: dict):
        super().__init__()
        self.group = group
        self.names = list(modules)
        self.members = torch.nn.ModuleList(modules[n] for n in self.names)

    def forward(self, *inputs):
        weights = {n: {**dict(m.named_parameters()), **dict(m.named_buffers())}
                   for n, m in zip(self.names, self.members)}
        return self.group(*inputs, weights=weights, modules=dict(zip(self.names, self.members)))


def lower_module(module, log=None) -> dict:
    """Swap every fused group of a deploy module for its Triton kernels, in place. A member without a kernel
    (a dense conv) runs in torch inside its group, whose other members still run as kernels; a group left with
    nothing for a kernel stays in torch. Returns (and stores as ``module.lowering``) ``{group: outcome}``:
    "triton" (every member in kernels), "split: group '<name>': K Triton kernel(s) for members a-b (ops); in
    torch: member i (op): why", or the whole group's reason (it names the group). Splits and fallbacks are
    reported through `log` (default: a warning)."""
    import warnings

    from archdsl.errors import ArchError

    ok, why = triton_available()
    if not ok:
        raise ArchError(f"the triton backend cannot run here: {why}",
                        hint="use backend='torch' (the default), or TRITON_INTERPRET=1 to test kernels on CPU")
    G = module.archdsl_ir
    report = {}
    for node in list(G.nodes):
        if G.nodes[node]["op"] != "fused":
            continue
        try:
            lowered = lower_fused_node(G, node)
        except NotLowerable as e:
            report[node] = e.reason
            (log or (lambda msg: warnings.warn(msg, stacklevel=3)))(f"triton backend: {e.reason}; it runs in torch")
            continue
        parent_name, _, leaf = node.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        fused = getattr(parent, leaf)
        setattr(parent, leaf, TritonGroup(lowered, dict(fused.named_children())))
        report[node] = "triton"
        if lowered.torch_members:
            report[node] = f"split: group '{node}': {lowered.split_summary()}"
            (log or (lambda msg: warnings.warn(msg, stacklevel=3)))(
                f"triton backend: group '{node}' split: {lowered.split_summary()}")
    module.lowering = report
    return report


def member_modules(members, shapes, dtype=torch.float32, seed=0) -> dict:
    """The members' torch modules from the registry, parameters moved off their init (a layer scale of 1e-6 or a
    zero bias would hide a missing step), cast to dtype: the weights tests and benchmarks run a group with."""
    from archdsl.ops.registry import get_op
    from codegen.triton.plan import as_member

    torch.manual_seed(seed)
    modules, running = {}, tuple(shapes[0])
    for i, m in enumerate(members):
        m = as_member(m, i)
        spec = get_op(m.op)
        ins = [running] + [tuple(shapes[j]) for j in m.inputs]
        a = spec.bind([], m.attrs, ins)
        cls, kw = spec.torch(a, ins)
        module = cls(**kw)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(0.5 * torch.randn_like(p) + (0.5 if p.dim() == 1 else 0.0))
        modules[m.name] = module.to(dtype)
        running = tuple(spec.shape(a, ins))
    return modules
