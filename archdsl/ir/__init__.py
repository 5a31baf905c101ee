"""The graph IR: a networkx DiGraph of op nodes (graph.py), its verifier, text dump and cost tables."""
from archdsl.ir.graph import add_op, inputs, new_graph, output_node, totals  # noqa: F401
