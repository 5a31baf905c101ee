#!/usr/bin/env python3
"""The line budget: no Python file under archdsl/, codegen/ or benchmarks/ longer than LIMIT lines.

    python .ci/linecount.py        # the longest files; exit 1 naming any over the budget

A file over the budget is split by what it holds (an op family, a pass, a backend stage), not trimmed.
"""
from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 500
ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("archdsl", "codegen", "benchmarks")


def line_counts() -> dict[str, int]:
    return {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
            for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def over_budget(counts: dict[str, int]) -> dict[str, int]:
    return {f: n for f, n in counts.items() if n > LIMIT}


def main() -> int:
    counts = line_counts()
    for f, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5]:
        print(f"{n:5d}  {f}")
    print(f"{len(counts)} files, {sum(counts.values())} lines, budget {LIMIT} lines a file")
    over = over_budget(counts)
    for f, n in over.items():
        print(f"over budget: {f} has {n} lines (limit {LIMIT}); split it by what it holds", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
