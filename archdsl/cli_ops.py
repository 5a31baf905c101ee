"""`archdsl ops [NAME]`: the table of ops, or everything one op's registration (or one library block) says."""
from __future__ import annotations

import re

from archdsl.errors import ArchError, did_you_mean
from archdsl.ops.registry import REQUIRED, OpSpec, all_ops, get_op, has_op


def cmd_ops(args) -> int:
    if getattr(args, "name", None):
        print(describe(args.name))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="registered ops (archdsl ops NAME: one op in full)")
    table.add_column("op")
    table.add_column("signature")
    table.add_column("what it is")
    for spec in (s for s in all_ops() if not s.internal):  # what the compiler inserts is no user's business
        name = spec.name + (f" ({', '.join(spec.aliases)})" if spec.aliases else "")
        table.add_row(name, spec.signature(), spec.doc.split("\n")[0])
    Console().print(table)
    return 0


def describe(name: str) -> str:
    """The full documentation of op `name`, or of a block of the library (archdsl/lib) of that name."""
    if has_op(name) and not get_op(name).internal:
        return describe_op(get_op(name))
    block = library_block(name)
    if block is not None:
        return block
    from archdsl.ops.registry import user_op_names

    raise ArchError(f"no op or library block '{name}'",
                    hint=did_you_mean(name, user_op_names() | set(_library_blocks())) or "run `archdsl ops` for the list")


def describe_op(spec: OpSpec) -> str:
    lines = [spec.signature(), ""]
    if spec.aliases:
        lines.append(f"aliases: {', '.join(spec.aliases)}")
    lines += [spec.doc, "", "attributes:" if spec.attrs else "attributes: none"]
    for a in spec.attrs:
        default = "required" if a.default is REQUIRED else f"default {a.default!r}"
        choices = f"; one of {', '.join(map(str, a.choices))}" if a.choices else ""
        lines.append(f"  {a.name} ({a.kind}, {default}{choices})" + (f": {a.doc}" if a.doc else ""))
    inputs = {1: "the current tensor", -1: "the current tensor, then $label operands"}.get(
        spec.arity, f"{spec.arity}: the current tensor, then $label operands")
    lines += ["", f"inputs: {inputs}", f"category: {spec.category}",
              f"spatial dims: {', '.join(map(str, spec.spatial_dims))}",
              f"precisions: {', '.join(spec.precisions)}"]
    if spec.pieces is not None:
        lines.append("results: several pieces; label the call and pick one with $label[i]")
    if spec.source:
        lines.append("values: its own (learnable), not its input's; may be passed as an operand")
    facts = [f for f, on in (("fuses with its neighbours", spec.fusable), ("exact in any dtype", spec.exact_in_any_dtype),
                             (f"folds into a conv ({spec.fold.by})" if spec.fold else "", spec.fold is not None)) if on]
    lines.append("deploy: " + (", ".join(facts) or "a node of its own"))
    triton = f"rule '{spec.triton}'" if spec.triton else (spec.triton_declined or "none (runs in torch)")
    lines.append(f"triton: {triton}")
    if spec.examples:
        lines.append("examples (attributes, input shapes without the batch):")
        lines += [f"  {dict(attrs)} on {[list(s) for s in ins]}" for attrs, ins in spec.examples]
    return "\n".join(lines)


def _library_blocks() -> dict[str, tuple[str, str]]:
    """block name -> (library, its text with the comment lines just above it)."""
    from archdsl.frontend.source import LIBRARY

    out = {}
    for path in sorted(LIBRARY.glob("*.arch")):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"((?:^#[^\n]*\n)*)^block (\w+)\(.*?^}", text, re.M | re.S):
            out[m.group(2)] = (path.stem, m.group(0))
    return out


def library_block(name: str) -> str | None:
    found = _library_blocks().get(name)
    if found is None:
        return None
    lib, text = found
    return f'library block {name} (import "{lib}")\n\n{text}'
