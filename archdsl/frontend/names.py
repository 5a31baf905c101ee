"""Names from an .arch file that become names in Python: one place decides how each is made safe.

Every IR node name is a dotted path of segments (labels, block names, variables applied as ops, op names)
and each segment becomes an attribute of an ``nn.Module`` - in the in-memory GraphModule and in the emitted
Python file alike. A segment that Python or torch already uses there (``forward``, ``training``, ``to``,
``state_dict``, ``__class__``, a keyword) would break the module, so it is mangled once, here, by appending
``_``; because the IR holds the mangled name, the emitted module and the in-memory one agree, state_dict
keys included. The same goes for the input's name (a ``forward`` argument: ``self`` or ``torch`` would
shadow what the generated code uses) and for the model's class name in the emitted file.
"""
from __future__ import annotations

import builtins
import functools
import keyword

# What the emitted file defines or imports at module level, besides the helper classes it copies in.
EMITTED_GLOBALS = frozenset({"math", "torch", "F", "nn", "Model"})


@functools.cache
def _module_attributes() -> frozenset[str]:
    """Attribute names an op module, a container or the root GraphModule already has."""
    from torch import fx, nn

    root = fx.GraphModule(nn.Module(), fx.Graph())
    instance = set(vars(root)) | set(vars(nn.Module()))
    # what codegen.torch_fx.ArchGraphModule adds (a method, and attributes set on a compiled module)
    ours = {"deploy", "archdsl_ir", "pass_results"}
    return frozenset(set(dir(fx.GraphModule)) | instance | ours | {"code", "graph", "meta"})


def segment(name: str) -> str:
    """`name` as one attribute segment of the module hierarchy: mangled with `_` while it is taken."""
    while keyword.iskeyword(name) or name in _module_attributes():
        name += "_"
    return name


def input_name(name: str) -> str:
    """The model input's name (an argument of the generated `forward`)."""
    while keyword.iskeyword(name) or name in _module_attributes() or name in EMITTED_GLOBALS \
            or name == "self" or hasattr(builtins, name):
        name += "_"
    return name


def class_name(model: str, taken) -> str:
    """The emitted class name for a model: CamelCase of its name, never a keyword, a builtin (`None`,
    `True`), a module-level name of the file (`F`, `nn`) or a helper class copied into it (`Linear`)."""
    name = "".join(p.capitalize() for p in model.split("_")) or "Model"
    while keyword.iskeyword(name) or hasattr(builtins, name) or name in taken or (
            name in EMITTED_GLOBALS and name != "Model"):
        name += "Net"
    return name
