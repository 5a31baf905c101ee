"""Backends: IR -> torch.fx GraphModule (torch_fx.py), the compiled model (compiled.py) and its deploy form
(deploy.py), readable Python source (python_source.py), Triton kernels for fused groups (triton/)."""
