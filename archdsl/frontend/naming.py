"""How the elaborator names IR nodes and records scopes: dotted paths of segments, unique under their parent,
counted on so that a long `repeat` stays linear; each scope (block call, label, loop iteration) recorded in
``G.graph["scopes"]`` for the emitted Python's classes. A mixin of `Elaborator` (it holds `G`, `taken`, `suffix`).
"""
from __future__ import annotations

from archdsl.errors import ArchError, Span
from archdsl.frontend.names import segment
from archdsl.frontend.values import is_plain

MAX_NODES = 200_000  # a runaway `repeat` should fail with a message, not eat the machine


class NodeNaming:
    def _scope(self, path, kind: str, name: str, span: Span | None, args: dict | None = None) -> None:
        # what made a scope of names (a block call, a label, a loop iteration): emitted Python names classes so
        if path:
            self.G.graph["scopes"][".".join(path)] = dict(kind=kind, name=name, file=span.file if span else "",
                                                          line=span.line if span else 0,
                                                          args={k: v for k, v in (args or {}).items() if is_plain(v)})

    def _qual(self, ctx: Ctx, name: str) -> str:
        return ".".join(ctx.path + (name,))

    def _segment(self, path: tuple, base: str) -> str:
        base = segment(base)  # `forward`, `to`, `class` ... become `forward_`: see frontend/names.py
        # Resume counting where the last `base` under this path stopped: `repeat 200000 { relu }` would be
        # quadratic if every name searched relu, relu_1, ... from the start again.
        key = (path, base)
        i = self.suffix.get(key, 0)
        seg = f"{base}_{i}" if i else base
        while ".".join(path + (seg,)) in self.taken:
            i += 1
            seg = f"{base}_{i}"
        self.suffix[key] = i + 1
        self._take(".".join(path + (seg,)))
        return seg

    def _name(self, path: tuple, base: str) -> str:
        if len(self.taken) > MAX_NODES:
            raise ArchError(f"the model has more than {MAX_NODES} nodes", hint="check repeat counts and loop bounds")
        return ".".join(path + (self._segment(path, base),))

    def _take(self, name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            self.taken.add(".".join(parts[:i]))
