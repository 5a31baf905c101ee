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


def _substitute(text: str, file: str, picks: dict, by_name: dict | None = None,
               params: tuple | None = None) -> str:
    """`text` with every search construct replaced: a choice by the source text of the option taken (itself
    substituted, so a choice nested in an option, `choice(conv(8, k = choice(3, 5)), relu)`, resolves too), a
    range by its value; a construct never reached by its default. Keys of `picks` are (line, col) of the
    construct; `by_name` gives the picks of dimensions named with `name = "..."` (one dimension met at several
    places); `params` = (model name, {parameter: text}, *annotation names) replaces the defaults of model
    parameters set with `--set` (plain parameters, not search constructs) and removes the model's annotations
    of those names."""
    from archdsl.frontend.parse import parse_text

    calls, defaults = [], []
    for item in parse_text(text, file):
        if not isinstance(item, tuple):
            _calls(item, calls)
        if params and isinstance(item, A.Definition) and item.kind == "model" and item.name == params[0]:
            defaults += [(p.default, params[1][p.name]) for p in item.params
                         if p.name in params[1] and p.default is not None]
            # scaled values already stand in its parameters' defaults: scaling them again would change them
            defaults += [(a, "") for a in item.annotations if a.name in params[2:]]
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)

    def extent(node):
        s = node.span
        if s.end_line is None or s.end_col is None:
            return None
        return _offset(starts, s.line, s.col), _offset(starts, s.end_line, s.end_col)

    # (start, end, 0 for a parameter default / 1 for a construct, what replaces it); outermost first
    located = sorted([(*extent(node), 0, value) for node, value in defaults if extent(node) is not None]
                     + [(*extent(c), 1, c) for c in calls if extent(c) is not None],
                     key=lambda x: (x[0], -x[1], x[2]))

    def rewrite(a: int, b: int) -> str:
        """text[a:b] with the outermost constructs inside it replaced (each replacement handles its nested ones)."""
        out, at = [], a
        for ca, cb, kind, what in located:
            if ca < at or cb > b:  # before `at` (nested in one already replaced) or outside [a, b)
                continue
            out.append(text[at:ca])
            out.append(what if kind == 0 else replacement(what))
            at = cb
        out.append(text[at:b])
        return "".join(out)

    def source_of(node, fallback: str) -> str:
        ext = extent(node) if isinstance(node, A.Node) else None
        return rewrite(*ext) if ext is not None else fallback

    def replacement(call) -> str:
        pick = picks.get((call.span.line, call.span.col))
        if pick is None and by_name:
            name = call.kwargs.get("name")
            if isinstance(name, A.Const) and isinstance(name.value, str):
                pick = by_name.get(name.value)
        if pick is not None:
            value_text, index = pick
            if call.func == "choice" and index is not None and index < len(call.args):
                return source_of(call.args[index], value_text)
            return value_text
        # never reached in this architecture: its default stands in
        if "default" in call.kwargs:
            return source_of(call.kwargs["default"], _default_text(call))
        if call.args:
            return source_of(call.args[0], _default_text(call))
        return _default_text(call)

    return rewrite(0, len(text))


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
    by_name: dict[str, tuple] = {}
    for name, dim in resolver.dims.items():
        value = resolver.values[name]
        index = None
        if dim.kind == "choice":
            options = list(dim.options)
            index = next((i for i, o in enumerate(options) if o is value), None)
            if index is None and value in options:
                index = options.index(value)
            text = dim.labels[index] if index is not None else show(value)
        else:
            text = show(value)
        by_name[name] = (text, index)
        picks.setdefault(_key(dim.span.file), {}).setdefault((dim.span.line, dim.span.col), (text, index))
    # model parameters that are no search construct but were set by name (`--set classes=10`)
    overrides = resolver.overrides
    plain = {n: show(overrides[n]) for n in resolver.used if n not in resolver.dims}
    model = G.graph.get("name") if G is not None else None
    params = (model or program.model(None).name, {n: t for n, t in plain.items() if t != "{...}"},
              *(("scale",) if G is not None and G.graph.get("scaling") else ()))
    parts = []
    for path in program.imports:
        text = Path(path).read_text()
        parts.append(f"# --- from {Path(path).name}\n"
                     + _strip_imports(_substitute(text, path, picks.get(_key(path), {}), by_name, params)))
    main = _substitute(program.source, program.file, picks.get(_key(program.file), {}), by_name, params)
    if len(params) > 2:  # where the scaled defaults came from
        sc = G.graph["scaling"]
        parts.append(f"# {params[0]}: scaled by rule {sc['rule']} (s = {sc['s']:.4g}) to {sc['macs']:,} of a "
                     f"{sc['budget']:,}-MAC budget")
    parts.append(_strip_imports(main))
    return "\n".join(parts)


def _key(file: str) -> str:
    return file if file.startswith("<") else str(Path(file).resolve())


def _strip_imports(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("import ")) + "\n"
