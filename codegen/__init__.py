"""Backends: IR -> torch.fx GraphModule and readable Python source (torch_fx.py, python_source.py)."""
