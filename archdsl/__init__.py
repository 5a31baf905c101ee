"""archdsl: describe networks and search spaces as .arch text; check, compile, search.

    import archdsl
    program = archdsl.parse("searchspaces/models/convnext_t.arch")
    graph = archdsl.build(program, classes=10)           # IR (networkx), shapes/params/MACs checked
    module = archdsl.compile("net.arch", k=5)            # torch.nn.Module (a torch.fx GraphModule)
"""
from archdsl.errors import ArchError
from archdsl.api import build, compile, parse

__all__ = ["ArchError", "build", "compile", "parse"]
__version__ = "0.1.0"
