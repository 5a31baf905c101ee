"""Latency of what ships: the deploy graph, median after warm-up, on the target device and precision."""
from __future__ import annotations

import statistics
import time

import torch

from archdsl.quant import DEPLOY_DTYPE, LOW_FLOAT_DTYPES


def measure(module: torch.nn.Module, input_shape, batch: int = 1, device: str = "cpu", precision: str = "fp32",
            runs: int = 30, warmup: int = 5, max_seconds: float = 5.0) -> float:
    """Median forward time in milliseconds. Stops early after `max_seconds` of timed runs (5 at least)."""
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    dtype = LOW_FLOAT_DTYPES.get(DEPLOY_DTYPE.get(precision), torch.float32)
    module = module.eval().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    times = []
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        for i in range(warmup + runs):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            module(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                if len(times) >= 5 and sum(times) > max_seconds:
                    break
    return statistics.median(times) * 1e3
