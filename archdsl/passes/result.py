"""What a pass returns: what it rewrote (one line each) and what it looked at but left alone, with the reason.

A pass is a function ``pass_name(G, weights) -> PassResult`` that rewrites the IR graph in place and, when
``weights`` is not None, the tensors with it (archdsl/passes/weights.py). With ``weights=None`` a pass does only
the structural rewrite, so `archdsl check --mode deploy` knows the deploy graph's parameters and MACs without
allocating a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassResult:
    name: str = ""
    changed: list[str] = field(default_factory=list)
    declined: list[tuple[str, str]] = field(default_factory=list)

    def decline(self, node: str, reason: str) -> None:
        self.declined.append((node, reason))

    def summary(self) -> str:
        return f"{self.name}: {len(self.changed)} changed, {len(self.declined)} declined"
