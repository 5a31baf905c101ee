"""Parse .arch text into the AST (lark LALR, positions kept); syntax errors become ArchErrors."""
from __future__ import annotations

import functools
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from archdsl.errors import ArchError, Span, remember_source
from archdsl.frontend import ast as A
from archdsl.frontend.values import checked_number
from archdsl.frontend.source import read_import, read_source
from grammar import GRAMMAR_FILE

# What a terminal is called in an error message.
_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "'('", "RPAR": "')'",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "_THEN": "'>>'", "SEMICOLON": "';'", "DOLLAR": "'$'", "AT": "'@'", "MINUS": "'-'",
    "COMP_OP": "a comparison", "PLUS": "'+'", "_POW": "'**'", "MUL_OP": "'*', '/', '//' or '%'", "__ANON_0": "'..'",
    "$END": "the end of the file",
}


@functools.cache
def _parser(start: str = "start") -> Lark:
    return Lark(GRAMMAR_FILE.read_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True,
                start=start, cache=False)


def _span(file, meta) -> Span:
    if isinstance(meta, Token):
        return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)
    return Span(file, getattr(meta, "line", 1), getattr(meta, "column", 1),
                getattr(meta, "end_line", None), getattr(meta, "end_column", None))


def _number(text: str, span: Span):
    if len(text) > 40:  # before int(): a 5,000-digit literal would hit Python's int-conversion limit
        raise ArchError(f"number {text[:20]}... ({len(text)} characters) is too large", span)
    scale = {"k": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1])
    body = text[:-1] if scale else text
    value = float(body) if any(c in body for c in ".eE") else int(body)
    if scale:
        value = value * scale
        if isinstance(value, float) and value.is_integer():  # 1.5k = 1500; inf stays a float (not int(inf))
            value = int(value)
    return value


@v_args(meta=True)
class _ToAst(Transformer):
    """Thin: the grammar shapes the tree, this only turns it into dataclasses with spans."""

    def __init__(self, file: str, text: str):
        super().__init__()
        self.file = file
        self.text = text

    def _s(self, meta):
        return _span(self.file, meta)

    def _src(self, meta) -> str:
        if getattr(meta, "empty", False) or not hasattr(meta, "start_pos"):
            return ""
        return self.text[meta.start_pos:meta.end_pos]

    # top level
    def start(self, meta, items):
        return items

    def import_(self, meta, c):
        return ("import", str(c[0])[1:-1], self._s(meta))

    def definition(self, meta, c):
        *annotations, kind, name, params, body = c
        if str(kind) not in ("block", "model"):
            raise ArchError(f"expected 'block' or 'model', got '{kind}'", _span(self.file, kind),
                            hint="a definition reads `block NAME(params) { ... }` or `model NAME(params) { ... }`")
        return A.Definition(self._s(meta), str(kind), str(name), params or [], body, annotations, self.file)

    def params(self, meta, c):
        return c

    def param(self, meta, c):
        return A.Param(_span(self.file, c[0]), str(c[0]), c[1])

    def body(self, meta, c):
        return [s for s in c if s is not None and not (isinstance(s, Token) and s.type == "SEMICOLON")]

    def search_def(self, meta, c):
        name, dataset, *items = c
        return A.Search(self._s(meta), str(name) if name else "search", dataset,
                        [i for i in items if i is not None])

    def maximize(self, meta, c):
        return A.SearchItem(self._s(meta), "maximize", c[0])

    def minimize(self, meta, c):
        return A.SearchItem(self._s(meta), "minimize", c[0])

    def constraint(self, meta, c):
        return A.SearchItem(self._s(meta), "constraint", c[0])

    def setting(self, meta, c):
        return A.SearchItem(self._s(meta), "setting", c[1], str(c[0]))

    def search_annotation(self, meta, c):
        return A.SearchItem(self._s(meta), "annotation", c[0])

    def empty(self, meta, c):
        return None

    # statements
    def assign(self, meta, c):
        return A.Assign(self._s(meta), str(c[0]), c[1])

    def input_decl(self, meta, c):
        return A.InputDecl(self._s(meta), str(c[0]), c[1])

    def labeled(self, meta, c):
        return A.Labeled(self._s(meta), str(c[0]), c[1])

    def for_loop(self, meta, c):
        return A.For(self._s(meta), str(c[0]), c[1], c[2], c[3])

    def repeat_loop(self, meta, c):
        return A.Repeat(self._s(meta), c[0], c[1])

    def if_stmt(self, meta, c):
        orelse = c[2]
        if isinstance(orelse, A.If):
            orelse = [orelse]
        return A.If(self._s(meta), c[0], c[1], orelse)

    def chain(self, meta, c):
        return A.Chain(self._s(meta), c)

    def residual(self, meta, c):
        return A.Residual(self._s(meta), c[0])

    def parallel(self, meta, c):
        mode, *bodies = c
        return A.Parallel(self._s(meta), str(mode) if mode else "sum", bodies)

    def block_literal(self, meta, c):
        return A.Group(self._s(meta), c[0])

    def ref(self, meta, c):
        return A.Ref(self._s(meta), str(c[0]))

    def annotated_element(self, meta, c):
        return A.Annotated(self._s(meta), c[0], c[1])

    def annotation(self, meta, c):
        args, kwargs = c[1] if c[1] else ([], {})
        return A.Annotation(self._s(meta), str(c[0]), args, kwargs)

    # expressions
    def or_expr(self, meta, c):
        return A.BoolOp(self._s(meta), "or", c)

    def and_expr(self, meta, c):
        return A.BoolOp(self._s(meta), "and", c)

    def not_(self, meta, c):
        return A.Unary(self._s(meta), "not", c[0])

    def neg(self, meta, c):
        return A.Unary(self._s(meta), "-", c[0])

    def comparison(self, meta, c):
        return A.BinOp(self._s(meta), str(c[1]), c[0], c[2])

    def _fold(self, meta, c):
        out = c[0]
        for op_tok, rhs in zip(c[1::2], c[2::2]):
            out = A.BinOp(self._s(meta), str(op_tok), out, rhs)
        return out

    arith = term = _fold

    def power(self, meta, c):
        return A.BinOp(self._s(meta), "**", c[0], c[1])

    def index(self, meta, c):
        return A.Index(self._s(meta), c[0], c[1])

    def number(self, meta, c):
        span = self._s(meta)
        value = checked_number(_number(str(c[0]), span), str(c[0]), span)
        return A.Const(self._s(meta), value, str(c[0]))

    def string(self, meta, c):
        return A.Const(self._s(meta), str(c[0])[1:-1], str(c[0]))

    def true(self, meta, c):
        return A.Const(self._s(meta), True, "true")

    def false(self, meta, c):
        return A.Const(self._s(meta), False, "false")

    def list(self, meta, c):
        return A.ListExpr(self._s(meta), c[0] or [])

    def exprs(self, meta, c):
        return c

    def name(self, meta, c):
        return A.Name(self._s(meta), str(c[0]))

    def call(self, meta, c):
        args, kwargs = c[1] if c[1] else ([], {})
        return A.Call(self._s(meta), str(c[0]), args, kwargs, self._src(meta))

    def args(self, meta, c):
        args, kwargs = [], {}
        for item in c:
            if isinstance(item, tuple) and item and item[0] == "kwarg":
                _, key, value, span = item
                if key in kwargs:
                    raise ArchError(f"argument '{key}' given twice", span)
                kwargs[key] = value
            else:
                if kwargs:
                    raise ArchError("a positional argument cannot follow a named one", item.span,
                                    hint="put positional arguments first: f(1, 2, k=3)")
                args.append(item)
        return args, kwargs

    def kwarg(self, meta, c):
        return ("kwarg", str(c[0]), c[1], _span(self.file, c[0]))


def _syntax_error(err: UnexpectedInput, file: str) -> ArchError:
    span = Span(file, err.line if err.line > 0 else 1, err.column if err.column > 0 else 1)
    if isinstance(err, UnexpectedCharacters):
        return ArchError(f"unexpected character {err.char!r}", span,
                         hint="names are letters, digits and _; comments start with #")
    expected = sorted(getattr(err, "expected", None) or getattr(err, "accepts", None) or [])
    words = sorted({_WORDS.get(t, f"'{t.lower()}'") for t in expected})
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        msg = "unexpected end of file"
    else:
        msg = f"unexpected {err.token!r}" if isinstance(err, UnexpectedToken) else "syntax error"
        if isinstance(err, UnexpectedToken):
            msg = f"unexpected '{err.token}'"
    hint = ("expected " + ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]) if words else None
    return ArchError(msg, span, hint=hint)


# How deep the parse tree may nest. The transformer, the elaborator and the verifier all recurse over it, so
# this one limit keeps every later stage far from Python's recursion limit (about 2 frames per level): it
# allows ~100 nested `if`s or `{...}` groups and ~200-term `**` chains, far beyond any real model.
MAX_DEPTH = 200


def _check_depth(tree: Tree, file: str) -> None:
    """Refuse a tree deeper than MAX_DEPTH, at the place where it gets too deep (iterative: no recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ArchError(f"this is nested too deeply (more than {MAX_DEPTH} levels of blocks, "
                            f"conditions or expressions)", _span(file, node.meta),
                            hint="flatten it: name intermediate values or split it into blocks")
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def _run(start: str, text: str, file: str):
    """Parse `text` from rule `start` into the AST; every failure becomes an ArchError at its place."""
    remember_source(file, text)
    try:
        tree = _parser(start).parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, file) from None
    _check_depth(tree, file)
    try:
        return _ToAst(file, text).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, ArchError):
            raise err.orig_exc from None
        raise


def parse_text(text: str, file: str = "<text>") -> list:
    """Top-level items of one file (definitions, searches, ('import', path, span) tuples)."""
    return _run("start", text, file)


def parse_expr(text: str, file: str = "<--set>"):
    """One expression (the value of `--set name=value`); same grammar, so no eval() is ever needed."""
    return _run("expr", text, file)


def parse(source, file: str | None = None) -> A.Program:
    """Parse a path or .arch text (with its imports) into a Program."""
    text, file = _read(source, file)
    program = A.Program(file=file, source=text)
    root = () if file.startswith("<") else (str(Path(file).resolve()),)  # so `a -> b -> a` is a cycle at once
    _load(program, text, file, stack=root, imported=False)
    return program


def _read(source, file):
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and "{" not in source
                                     and source.endswith(".arch")):
        return read_source(source), file or str(source)
    return str(source), file or "<text>"


def _load(program: A.Program, text: str, file: str, stack: tuple, imported: bool) -> None:
    for item in parse_text(text, file):
        if isinstance(item, tuple):  # import
            _, rel, span = item
            path, sub = read_import(rel, file, span)
            key = str(path.resolve())
            if key in stack:
                raise ArchError(f"import cycle: {rel} imports itself (through {len(stack)} files)", span)
            if key in program.imports:
                continue
            program.imports.append(key)
            _load(program, sub, str(path), stack + (key,), imported=True)
        elif isinstance(item, A.Definition):
            table = program.blocks if item.kind == "block" else program.models
            if item.name in program.blocks or item.name in program.models:
                raise ArchError(f"'{item.name}' is defined twice", item.span, hint="rename one of them")
            if item.kind == "model" and imported:
                continue  # an import brings in blocks; its models stay its own
            table[item.name] = item
        elif isinstance(item, A.Search) and not imported:
            program.searches.append(item)
