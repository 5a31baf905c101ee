"""Registered ops, one module per family; importing archdsl.ops.registry loads them all on first use."""
