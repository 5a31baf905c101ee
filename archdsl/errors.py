"""archdsl's one error type: every problem with a user's file is reported as an ArchError.

An ArchError carries where it happened (a Span), what is wrong and, when we know it, what would fix it.
The CLI prints it as ``file:line:col: error: ...`` followed by the offending line and a caret; it never
shows a Python traceback.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A place in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# Source texts by file name, so an error can quote its line without re-reading (or for text with no file).
_SOURCES: dict[str, str] = {}


def remember_source(file: str, text: str) -> None:
    _SOURCES[file] = text


def source_line(span: Span) -> str | None:
    text = _SOURCES.get(span.file)
    if text is None:
        from archdsl.frontend.source import read_source  # regular UTF-8 files only: never block or echo a device

        try:
            text = read_source(span.file)
        except ArchError:
            return None
    lines = text.splitlines()
    return lines[span.line - 1] if 0 < span.line <= len(lines) else None


class ArchError(Exception):
    """A problem in an .arch file (or in how it is used), with its location and a hint."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def with_span(self, span: Span | None) -> "ArchError":
        """Attach a location if this error has none yet (inner code often knows what, not where)."""
        if self.span is None and span is not None:
            self.span = span
        return self

    def format(self) -> str:
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        out = [head]
        if self.span:
            line = source_line(self.span)
            if line is not None:
                line, col = _window(line, self.span.col)
                out.append(f"    {line}")
                out.append("    " + " " * (col - 1) + "^")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format()


def _window(line: str, col: int, width: int = 100) -> tuple[str, int]:
    """A long line cut to `width` characters around column `col` (and the column within the cut)."""
    if len(line) <= width:
        return line, col
    start = max(0, min(col - width // 2, len(line) - width))
    cut = line[start:start + width]
    head, tail = ("..." if start else ""), ("..." if start + width < len(line) else "")
    return head + cut + tail, col - start + len(head)


def did_you_mean(name: str, candidates) -> str | None:
    """'did you mean ...?' text for a misspelled name, or None."""
    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
