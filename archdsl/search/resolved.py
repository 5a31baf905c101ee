"""A searched architecture as a plain .arch file: every search construct replaced by the value it took.

Each `choice(...)` call in the source is replaced by the source text of the option chosen (so `dwconv(k)`
keeps meaning what it meant), `int(...)`/`float(...)` by the number; imported files are inlined, so the
result stands alone and `archdsl compile` takes it. A construct met with different values in different
block instances has no single text: the result then keeps the first value, and the caller can tell by
rebuilding it and comparing IR hashes (`exact_resolution`).
"""
from __future__ import annotations

from pathlib import Path

from archdsl.frontend import ast as A
from archdsl.frontend.values import SEARCH_FUNCTIONS, show


def _calls(node, out):
    if isinstance(node, A.Call) and node.func in SEARCH_FUNCTIONS:
        out.append(node)
    if isinstance(node, A.Node) or isinstance(node, A.Definition):
        for v in vars(node).values():
            _calls(v, out)
    elif isinstance(node, (list, tuple)):
        for x in node:
            _calls(x, out)
    elif isinstance(node, dict):
        for x in node.values():
            _calls(x, out)


def _offset(lines_start, line, col):
    return lines_start[line - 1] + col - 1


def _substitute(text: str, file: str, picks: dict) -> str:
    from archdsl.frontend.parse import parse_text

    calls = []
    for item in parse_text(text, file):
        if not isinstance(item, tuple):
            _calls(item, calls)
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    edits = []
    for call in calls:
        key = (call.span.line, call.span.col)
        if key in picks:
            replacement = picks[key]
        else:  # never reached in this architecture: its default stands in
            replacement = _default_text(call)
        a = _offset(starts, call.span.line, call.span.col)
        b = _offset(starts, call.span.end_line, call.span.end_col)
        edits.append((a, b, replacement))
    for a, b, rep in sorted(edits, reverse=True):
        text = text[:a] + rep + text[b:]
    return text


def _default_text(call: A.Call) -> str:
    if "default" in call.kwargs:
        d = call.kwargs["default"]
        return getattr(d, "text", "") or show(getattr(d, "value", d))
    if call.func == "choice" and call.args:
        a = call.args[0]
        return getattr(a, "text", "") or show(getattr(a, "value", ""))
    a = call.args[0] if call.args else None
    return getattr(a, "text", "") or "0"


def resolved_source(program: A.Program, resolver, G=None) -> str:
    picks: dict[str, dict] = {}
    for name, dim in resolver.dims.items():
        value = resolver.values[name]
        if dim.kind == "choice":
            text = dim.labels[list(dim.options).index(value)] if value in dim.options else show(value)
        else:
            text = show(value)
        picks.setdefault(_key(dim.span.file), {}).setdefault((dim.span.line, dim.span.col), text)
    parts = []
    for path in program.imports:
        text = Path(path).read_text()
        parts.append(f"# --- from {Path(path).name}\n" + _strip_imports(_substitute(text, path, picks.get(_key(path), {}))))
    main = _substitute(program.source, program.file, picks.get(_key(program.file), {}))
    parts.append(_strip_imports(main))
    return "\n".join(parts)


def _key(file: str) -> str:
    return file if file.startswith("<") else str(Path(file).resolve())


def _strip_imports(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("import ")) + "\n"
