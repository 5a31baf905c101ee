"""Elaboration: run a model definition (parameters, loops, choices, blocks) and record the ops as IR.

A model body is a list of statements applied in order to a *current* tensor. ``a >> b`` applies ``a`` and
then ``b``; ``residual { ... }`` adds its body's result to its input; ``parallel(sum|concat|mul) {..} {..}``
merges branches; ``name: ...`` labels a statement (its nodes live under ``name.``; ``$name`` refers to its
result later); ``stage: for i in 0..4 {...}`` and ``block: repeat n {...}`` give each iteration a scope
(``stage2.block3``). Search constructs are resolved through a Resolver under stable names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from archdsl.errors import ArchError, Span, did_you_mean
from archdsl.frontend import ast as A
from archdsl.frontend.names import input_name
from archdsl.frontend.naming import MAX_NODES, NodeNaming  # noqa: F401 (MAX_NODES: part of this module's API)
from archdsl.frontend.choices import DefaultResolver, Resolver, make_dim
from archdsl.frontend.scaling import build_scaled
from archdsl.frontend.pieces import Pieces, make_pieces, materialize_operands, need_tensor, prune_unused_pieces
from archdsl.frontend.values import (CONSTANTS, FUNCTIONS, SEARCH_FUNCTIONS, Closure, OpValue, Tensor, binop,
                                     checked_number, index, is_search_call, show, unknown_name)
from archdsl.ir.graph import DEFAULT_PRECISION, LAYOUTS, PRECISIONS, add_op, new_graph
from archdsl.ops.registry import get_op, has_op, user_op_names

MERGES = {"sum": "add", "add": "add", "concat": "concat", "mul": "mul"}


class Frame:
    """Lexical variables; a block body sees its own parameters and the globals, never its caller's locals.

    As in Python, `if`, `for` and `repeat` bodies assign in the frame they are in; a block call or a `{...}`
    literal gets a frame of its own."""

    def __init__(self, parent: "Frame | None" = None, vars: dict | None = None):
        self.parent = parent
        self.vars = dict(vars or {})

    def lookup(self, name):
        frame = self
        while frame is not None:
            if name in frame.vars:
                return True, frame.vars[name]
            frame = frame.parent
        return False, None

    def names(self) -> set:
        out, frame = set(), self
        while frame is not None:
            out |= set(frame.vars)
            frame = frame.parent
        return out


@dataclass(frozen=True)
class Ctx:
    path: tuple = ()  # hierarchical name prefix
    precision: str = DEFAULT_PRECISION
    layout: str = "channels_first"
    binding: str | None = None  # the name a search construct evaluated now takes, if it has none
    refs: dict | None = None  # label -> Tensor, per model / block instance


class Elaborator(NodeNaming):
    def __init__(self, program: A.Program, resolver: Resolver):
        self.program = program
        self.resolver = resolver
        self.G: nx.DiGraph | None = None
        self.taken: set[str] = set()  # every node name and every prefix of one
        self.suffix: dict[tuple, int] = {}  # (path, base name) -> the next free numeric suffix
        self.depth = 0
        self.inline_choices: dict = {}

    # ----- entry
    def build(self, model: A.Definition) -> nx.DiGraph:
        self.G = new_graph(model.name, model.file)
        self.G.graph["scopes"] = {}
        ctx = self._annotate(Ctx(refs={}), model.annotations, Frame(vars=CONSTANTS))
        frame = Frame(Frame(vars=CONSTANTS))
        for param in model.params:
            if param.name in self.resolver.overrides and not is_search_call(param.default):
                frame.vars[param.name] = self.resolver.take(param.name)
            elif param.default is None:
                raise ArchError(f"model parameter '{param.name}' has no default", param.span,
                                hint=f"give it one (`{param.name} = ...`) or pass --set {param.name}=VALUE")
            else:
                frame.vars[param.name] = self.eval(param.default, frame, replace(ctx, binding=param.name))
        current = self.run_body(model.body, frame, ctx, None)
        if current is None:
            raise ArchError(f"model '{model.name}' declares no input", model.span,
                            hint="start the body with `input x[C, H, W]` (or `input x[C, L]` for sequences)")
        need_tensor(current, model.span, f"the output of model '{model.name}'")
        add_op(self.G, "output", "output", [current.node], shape=current.shape, span=model.span)
        prune_unused_pieces(self.G)
        self.G.graph["output"] = "output"
        self.resolver.finish()
        return self.G

    # ----- statements
    def run_body(self, stmts, frame: Frame, ctx: Ctx, current: Tensor | None) -> Tensor | None:
        for stmt in stmts:
            current = self.run_stmt(stmt, frame, ctx, current)
        return current

    def run_stmt(self, s, frame: Frame, ctx: Ctx, current):
        if isinstance(s, A.Assign):
            frame.vars[s.name] = self.eval(s.value, frame, replace(ctx, binding=self._qual(ctx, s.name)))
            return current
        if isinstance(s, A.InputDecl):
            return self._input(s, frame, ctx, current)
        if isinstance(s, A.Labeled):
            return self._labeled(s, frame, ctx, current)
        if isinstance(s, A.For):
            return self._for(s, frame, ctx, current, None)
        if isinstance(s, A.Repeat):
            return self._repeat(s, frame, ctx, current, None)
        if isinstance(s, A.If):
            cond = self.eval(s.cond, frame, ctx)
            if not isinstance(cond, (bool, int)):
                raise ArchError(f"an if condition must be true or false, got {show(cond)}", s.cond.span)
            body = s.then if cond else (s.orelse or [])
            return self.run_body(body, frame, ctx, current)
        if isinstance(s, A.Chain):
            return self._chain(s, frame, ctx, current)
        raise ArchError(f"internal: unknown statement {type(s).__name__}", s.span)

    def _input(self, s: A.InputDecl, frame, ctx, current):
        if current is not None or self.G.graph["input"] is not None:
            raise ArchError("only one input, at the start of a model", s.span)
        dims = [self.eval(d, frame, ctx) for d in s.dims]
        if not dims or len(dims) > 4 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ArchError(f"input shape must be 1 to 4 positive integers (channels first, no batch), got "
                            f"{show(dims)}", s.span, hint="e.g. input image[3, 224, 224] or input seq[1, 40]")
        name = input_name(s.name)
        self._take(name)
        add_op(self.G, name, "input", [], shape=tuple(dims), span=s.span, precision=ctx.precision,
               layout=ctx.layout)
        self.G.graph["input"] = name
        ctx.refs[s.name] = Tensor(name, tuple(dims))  # `$image` reads the input again (a U-net's first skip)
        return ctx.refs[s.name]

    def _labeled(self, s: A.Labeled, frame, ctx, current):
        label = s.label
        if isinstance(s.stmt, A.For):
            out = self._for(s.stmt, frame, ctx, current, label)
        elif isinstance(s.stmt, A.Repeat):
            out = self._repeat(s.stmt, frame, ctx, current, label)
        else:
            sub = replace(ctx, path=ctx.path + (self._segment(ctx.path, label),))
            self._scope(sub.path, "label", label, s.span)
            out = self._chain(s.stmt, frame, sub, current)
        ctx.refs[label] = out
        return out

    def _for(self, s: A.For, frame, ctx, current, label):
        start = self.eval(s.start, frame, ctx)
        if s.stop is None:
            if not isinstance(start, (list, tuple)):
                raise ArchError(f"for ... in needs a list or a range a..b, got {show(start)}", s.start.span)
            items = list(start)
        else:
            stop = self.eval(s.stop, frame, ctx)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop)):
                raise ArchError(f"a range needs integer bounds, got {show(start)}..{show(stop)}", s.span)
            if stop - start > MAX_NODES:
                raise ArchError(f"the range {start}..{stop} has more than {MAX_NODES} items", s.span,
                                hint="check the loop bounds")
            items = list(range(start, stop))
        for i, item in enumerate(items):
            sub = ctx if label is None else replace(ctx, path=ctx.path + (self._segment(ctx.path, f"{label}{i}"),))
            self._scope(sub.path if label is not None else None, "for", label, s.span)
            frame.vars[s.var] = item
            current = self.run_body(s.body, frame, sub, current)
        return current

    def _repeat(self, s: A.Repeat, frame, ctx, current, label):
        n = self.eval(s.count, frame, ctx)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ArchError(f"repeat needs a whole number of times (0 or more), got {show(n)}", s.count.span)
        if n > MAX_NODES:
            raise ArchError(f"repeat {n} is more than {MAX_NODES} times", s.count.span, hint="check the repeat count")
        for i in range(n):
            sub = ctx if label is None else replace(ctx, path=ctx.path + (self._segment(ctx.path, f"{label}{i}"),))
            self._scope(sub.path if label is not None else None, "repeat", label, s.span)
            current = self.run_body(s.body, frame, sub, current)
        return current

    def _chain(self, s: A.Chain, frame, ctx, current):
        for el in s.elements:
            current = self.element(el, frame, ctx, current)
        return current

    # ----- chain elements
    def element(self, el, frame, ctx, current) -> Tensor:
        if isinstance(el, A.Ref):
            if el.name not in ctx.refs:
                raise ArchError(f"no labelled result '${el.name}' before this point", el.span,
                                hint=did_you_mean(el.name, ctx.refs) or "label a statement first: `name: ...`")
            return ctx.refs[el.name]
        if isinstance(el, A.Annotated):
            return self.element(el.element, frame, self._annotate(ctx, [el.annotation], frame), current)
        if isinstance(el, A.Group):  # `{ a >> b }` in a chain: run it in place
            return self.run_body(el.body, Frame(frame), ctx, current)
        self._need_input(current, el.span)
        if isinstance(el, A.Residual):
            out = need_tensor(self.run_body(el.body, Frame(frame), ctx, need_tensor(current, el.span, "residual")),
                              el.span, "the end of a residual")
            if out.shape != current.shape:
                raise ArchError(f"residual branch changes the shape: its input is {list(current.shape)} but it "
                                f"returns {list(out.shape)}", el.span,
                                hint="a residual body must keep the shape; move the downsampling out of it")
            return self._merge("add", [current, out], ctx, el.span)
        if isinstance(el, A.Parallel):
            if el.mode not in MERGES:
                raise ArchError(f"unknown merge '{el.mode}'", el.span,
                                hint=did_you_mean(el.mode, MERGES) or "use parallel(sum), parallel(concat) or parallel(mul)")
            outs = [need_tensor(self.run_body(b, Frame(frame), ctx, current) or current, el.span, "parallel")
                    for b in el.branches]
            return self._merge(MERGES[el.mode], outs, ctx, el.span)
        if isinstance(el, A.Name):
            found, value = frame.lookup(el.id)
            if found:
                return self.apply(value, current, frame, ctx, el.span, hint=el.id)
            return self.apply(self._callable(el.id, el.span, frame), current, frame, ctx, el.span)
        if isinstance(el, A.Call):
            found, value = frame.lookup(el.func)
            value = self.eval(el, frame, ctx)
            return self.apply(value, current, frame, ctx, el.span, hint=el.func if found else None)
        return self.apply(self.eval(el, frame, ctx), current, frame, ctx, el.span)

    def _need_input(self, current, span):
        if current is None:
            raise ArchError("no input to apply this to", span,
                            hint="a model starts with `input x[C, H, W]`; ops apply to the current tensor")

    def apply(self, value, current: Tensor, frame, ctx, span: Span, hint: str | None = None) -> Tensor:
        if isinstance(value, (Tensor, Pieces)):
            return value
        if isinstance(value, (list, tuple)):
            for v in value:
                current = self.apply(v, current, frame, ctx, span)
            return current
        if isinstance(value, Closure):
            if hint:  # `body = {...}` applied as `body`: its nodes live under `body.`
                ctx = replace(ctx, path=ctx.path + (self._segment(ctx.path, hint),))
                self._scope(ctx.path, "label", hint, value.span)
            return self.run_body(value.body, Frame(value.frame), ctx, current) or current
        if not isinstance(value, OpValue):
            raise ArchError(f"cannot apply {show(value)} to a tensor", span,
                            hint="chain elements are ops or blocks, e.g. conv(16, k=3) >> relu")
        self._need_input(current, span)
        need_tensor(current, value.span or span, value.name)
        if value.name in self.program.blocks:
            return self._block(value, current, ctx, span, hint)
        return self._op(value, current, ctx, span, hint)

    def _op(self, value: OpValue, current: Tensor, ctx, span, hint):
        spec = get_op(value.name)
        if spec.internal:
            raise ArchError(f"'{value.name}' is internal to the compiler: its passes insert it, an .arch file "
                            f"cannot call it", value.span or span,
                            hint="run `archdsl ops` for the ops a file can use; precision is set with @precision")
        value = materialize_operands(self, value, current, ctx, span)  # `add(param([c, n]))`
        for a in value.args:
            need_tensor(a, value.span or span, f"an operand of {spec.name}")
        tensors = [a for a in value.args if isinstance(a, Tensor)]  # `concat($stem)`: extra inputs
        args = [a for a in value.args if not isinstance(a, Tensor)]
        ins = [current] + tensors
        shapes = [t.shape for t in ins]
        if spec.arity > 0 and len(ins) != spec.arity:
            raise ArchError(f"{spec.name}() takes {spec.arity} input tensor(s), got {len(ins)}", span)
        problem = spec.precision_problem(ctx.precision, shapes)
        if problem:
            raise ArchError(problem, value.span or span,
                            hint=f"{spec.name} runs at {', '.join(spec.precisions)}; annotate it with "
                                 f"@precision({spec.precisions[0]})")
        try:
            attrs = spec.bind(args, value.kwargs, shapes)
            if spec.pieces is not None and attrs.get("piece") is None:  # chunk(3): one node per piece
                count = spec.pieces(attrs, shapes)
                return make_pieces(self, spec, value, current, count, ctx, span, hint)
            shape = tuple(spec.shape(attrs, shapes))
            params = spec.params(attrs, shapes)
            macs = spec.macs(attrs, shapes, shape)
        except ArchError as e:
            raise e.with_span(value.span or span) from None
        name = self._name(ctx.path, hint or spec.name)
        extra = {}
        if attrs.get("share"):
            extra = {"share": attrs["share"], "shared_params": _shareable_count(spec, attrs, shapes)}
        add_op(self.G, name, spec.name, [t.node for t in ins], attrs=attrs, shape=shape, span=value.span or span,
               precision=ctx.precision, layout=ctx.layout, params=params, macs=macs, **extra)
        return Tensor(name, shape)

    def _merge(self, op, tensors, ctx, span):
        return self._op(OpValue(op, tuple(tensors[1:]), {}, span), tensors[0], ctx, span, None)

    def _block(self, value: OpValue, current, ctx, span, hint):
        block = self.program.blocks[value.name]
        self.depth += 1
        if self.depth > 64:
            raise ArchError(f"block '{block.name}' calls itself too deeply (64 levels)", span,
                            hint="blocks may not be recursive")
        seg = self._segment(ctx.path, hint or block.name)
        inner = replace(ctx, path=ctx.path + (seg,), refs={})
        frame = Frame(Frame(vars=CONSTANTS))
        self._bind_block(block, value, frame, inner, span)
        inner = self._annotate(inner, block.annotations, frame)
        self._scope(inner.path, "block", block.name, block.span, {p.name: frame.vars[p.name] for p in block.params})
        out = self.run_body(block.body, frame, inner, current)
        self.depth -= 1
        return out if out is not None else current

    def _bind_block(self, block: A.Definition, value: OpValue, frame: Frame, ctx: Ctx, span):
        names = [p.name for p in block.params]
        if len(value.args) > len(names):
            raise ArchError(f"block {block.name}() takes {len(names)} arguments, got {len(value.args)}", span,
                            hint=f"signature: {_sig(block)}")
        given = dict(zip(names, value.args))
        for key, v in value.kwargs.items():
            if key not in names:
                raise ArchError(f"block {block.name}() has no parameter '{key}'", span,
                                hint=did_you_mean(key, names) or f"signature: {_sig(block)}")
            if key in given:
                raise ArchError(f"block {block.name}() got '{key}' twice", span)
            given[key] = v
        for p in block.params:
            if p.name in given:
                frame.vars[p.name] = given[p.name]
            elif p.default is None:
                raise ArchError(f"block {block.name}() is missing argument '{p.name}'", span,
                                hint=f"signature: {_sig(block)}")
            else:
                frame.vars[p.name] = self.eval(p.default, frame, replace(ctx, binding=self._qual(ctx, p.name)))

    # ----- annotations
    def _annotate(self, ctx: Ctx, annotations, frame) -> Ctx:
        for ann in annotations:
            if ann.name not in ("precision", "layout"):
                raise ArchError(f"unknown annotation '@{ann.name}'", ann.span,
                                hint=did_you_mean(ann.name, ["precision", "layout"]) or "use @precision or @layout")
            if len(ann.args) != 1 or ann.kwargs:
                raise ArchError(f"@{ann.name} takes one value, e.g. @{ann.name}("
                                f"{'bf16' if ann.name == 'precision' else 'channels_last'})", ann.span)
            allowed = PRECISIONS if ann.name == "precision" else LAYOUTS
            arg = ann.args[0]
            if isinstance(arg, A.Name) and not frame.lookup(arg.id)[0] and arg.id not in allowed:
                raise ArchError(f"@{ann.name}({arg.id}): not a known {ann.name}", arg.span,
                                hint=did_you_mean(arg.id, allowed) or f"one of {', '.join(allowed)}")
            value = self.eval(arg, frame, replace(ctx, binding=self._qual(ctx, ann.name)))
            if value not in allowed:
                raise ArchError(f"@{ann.name}({show(value)}): not a known {ann.name}", ann.span,
                                hint=did_you_mean(str(value), allowed) or f"one of {', '.join(allowed)}")
            ctx = replace(ctx, **{ann.name: value})
        return ctx

    # ----- expressions
    def eval(self, e, frame: Frame, ctx: Ctx):
        if isinstance(e, A.Const):
            return e.value
        if isinstance(e, A.ListExpr):
            return [self.eval(x, frame, replace(ctx, binding=None)) for x in e.items]
        if isinstance(e, A.Name):
            found, value = frame.lookup(e.id)
            if found:
                return value
            if e.id in self.program.blocks or has_op(e.id):
                return OpValue(e.id, (), {}, e.span)
            raise unknown_name(e.id, e.span, frame.names() | set(self.program.blocks))
        if isinstance(e, A.Ref):
            return self.element(e, frame, ctx, None)
        if isinstance(e, A.Group):
            return Closure(e.body, frame, e.span)
        if isinstance(e, A.Index):
            return index(self.eval(e.obj, frame, ctx), self.eval(e.index, frame, ctx), e.span)
        if isinstance(e, A.BinOp):
            return binop(e.op, self.eval(e.left, frame, ctx), self.eval(e.right, frame, ctx), e.span)
        if isinstance(e, A.Unary):
            v = self.eval(e.operand, frame, ctx)
            if e.op == "not":
                return not v
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ArchError(f"cannot negate {show(v)}", e.span)
            return checked_number(-v, f"-{show(v)}", e.span)
        if isinstance(e, A.BoolOp):
            vals = [self.eval(x, frame, ctx) for x in e.items]
            return all(vals) if e.op == "and" else any(vals)
        if isinstance(e, A.Call):
            return self._call(e, frame, ctx)
        raise ArchError(f"internal: cannot evaluate {type(e).__name__}", getattr(e, "span", None))

    def _call(self, e: A.Call, frame: Frame, ctx: Ctx):
        if e.func in SEARCH_FUNCTIONS and not frame.lookup(e.func)[0]:
            return self._search(e, frame, ctx)
        sub = replace(ctx, binding=None)
        args = tuple(self.eval(a, frame, sub) for a in e.args)
        kwargs = {k: self.eval(v, frame, sub) for k, v in e.kwargs.items()}
        if e.func in FUNCTIONS and not frame.lookup(e.func)[0]:
            if kwargs:
                raise ArchError(f"{e.func}() takes no named arguments", e.span)
            try:  # round(1e300) is an integer of 301 digits: results are checked like literals
                return checked_number(FUNCTIONS[e.func](e.span, *args), f"{e.func}(...)", e.span)
            except TypeError:
                raise ArchError(f"wrong number of arguments for {e.func}()", e.span) from None
        base = self._callable(e.func, e.span, frame)
        return OpValue(base.name, base.args + args, {**base.kwargs, **kwargs}, e.span)

    def _callable(self, name: str, span: Span, frame: Frame) -> OpValue:
        found, value = frame.lookup(name)
        if found:
            if isinstance(value, OpValue):
                return value
            raise ArchError(f"'{name}' is {show(value)}, not an op or block", span)
        if name in self.program.blocks or has_op(name):
            return OpValue(name, (), {}, span)
        candidates = set(self.program.blocks) | frame.names() | user_op_names()
        raise ArchError(f"unknown op '{name}'", span,
                        hint=did_you_mean(name, candidates) or "run `archdsl ops` to list the ops")

    def _search(self, e: A.Call, frame: Frame, ctx: Ctx):
        sub = replace(ctx, binding=None)
        args = [self.eval(a, frame, sub) for a in e.args]
        kwargs = {k: self.eval(v, frame, sub) for k, v in e.kwargs.items()}
        labels = [_label(a, v) for a, v in zip(e.args, args)]
        name = kwargs.get("name") or ctx.binding or self._inline_name(ctx, e)
        if not isinstance(name, str):
            raise ArchError(f"{e.func}(name=...) must be a string, got {show(name)}", e.span)
        return self.resolver.resolve(make_dim(e.func, name, args, kwargs, labels, e.span))

    def _inline_name(self, ctx: Ctx, e: A.Call) -> str:
        # No binding: name it after where it is, e.g. "stage1.block0.choice@12:30".
        prefix = ".".join(ctx.path)
        return f"{prefix + '.' if prefix else ''}{e.func}@{e.span.line}:{e.span.col}"


def _label(expr, value) -> str:
    """How a choice option is named for a sampler or --set: its source text (`dwconv(k)`) or its value."""
    if isinstance(expr, A.Call) and expr.text:
        return " ".join(expr.text.split())
    return show(value)


def _sig(block: A.Definition) -> str:
    return f"{block.name}(" + ", ".join(p.name if p.default is None else f"{p.name}=..." for p in block.params) + ")"


def _shareable_count(spec, attrs, shapes) -> int:
    fn = getattr(spec, "shared_params", None)
    return int(fn(attrs, shapes)) if callable(fn) else 0


def build(program: A.Program, model: str | None = None, resolver: Resolver | None = None, **overrides) -> nx.DiGraph:
    """Elaborate one model of a parsed program into a verified IR graph."""
    from archdsl.ir.verify import verify

    resolver = resolver if resolver is not None else DefaultResolver(overrides)
    try:
        G = build_scaled(program.model(model), resolver, lambda: Elaborator(program, resolver), Frame, Ctx)
    except RecursionError:
        raise ArchError("the model nests too deeply to elaborate", hint="flatten very deep expressions or groups") from None
    G.graph["space"] = {name: dim.describe() for name, dim in resolver.dims.items()}
    G.graph["choices"] = dict(resolver.values)
    verify(G)
    return G


def eval_override(program: A.Program, text: str, name: str = "value"):
    """The value of ``--set name=TEXT``: parsed with the .arch expression grammar and evaluated with the
    file's blocks and ops in scope (``--set mixer='pool(3)'``), never with Python's eval."""
    from archdsl.frontend.parse import parse_expr

    expr = parse_expr(text, file=f"<--set {name}>")
    try:
        return Elaborator(program, DefaultResolver()).eval(expr, Frame(vars=CONSTANTS), Ctx(refs={}))
    except ArchError:
        # `--set mixer='dcls(large_k, count = k)'` names a choice option by its source text, whose
        # variables only exist inside the model: the resolver matches the text against the labels.
        return " ".join(text.split())
