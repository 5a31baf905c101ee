"""CI keeps every Python file of the product under the line budget (.ci/linecount.py)."""
from __future__ import annotations

import runpy
from pathlib import Path

LINECOUNT = runpy.run_path(str(Path(__file__).resolve().parents[1] / ".ci" / "linecount.py"))


def test_every_file_is_within_the_line_budget():
    counts = LINECOUNT["line_counts"]()
    assert "archdsl/ops/registry.py" in counts and "codegen/torch_fx.py" in counts  # it reads the real tree
    assert LINECOUNT["over_budget"](counts) == {}


def test_a_file_over_the_budget_is_reported():
    limit = LINECOUNT["LIMIT"]
    assert LINECOUNT["over_budget"]({"a.py": limit, "b.py": limit + 1}) == {"b.py": limit + 1}
