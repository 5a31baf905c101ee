"""What the `archdsl` commands share for reading their command line: numeric option types and `--set`."""
from __future__ import annotations

import argparse

from archdsl.errors import ArchError


def overrides(program, pairs: list[str]) -> dict:
    from archdsl.frontend.elaborate import eval_override

    out = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ArchError(f"--set expects name=value, got {pair!r}", hint="e.g. --set k=5 or --set mixer='pool(3)'")
        out[name] = eval_override(program, text.strip(), name)
    return out


def count(least: int):
    """An argparse type: a whole number >= `least` (argparse reports anything else with the usage, status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def above_zero(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value
