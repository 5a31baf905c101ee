"""Latency of what ships: the deploy graph, after warm-up, on the target device, precision and thread count.

On a shared machine a single timing says as much about the other work running as about the network. So every
measurement is paired: each timed forward of the candidate follows a timed forward of a fixed reference
workload (a small 1-D CNN, the same in every process), and the candidate's cost is the median of the
per-pair ratios candidate / reference. Load that arrives or leaves during the measurement slows both halves of
a pair alike and cancels. The search's latency objective is that ratio times the reference's time measured once
when the study was created (`calibrate`), so it reads in milliseconds and trials timed at different moments
compare; the raw milliseconds are kept beside it. `measure_together` times several networks round-robin with
the reference in one window, for the final re-measurement of a Pareto front.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn

from archdsl.quant import DEPLOY_DTYPE, LOW_FLOAT_DTYPES

REFERENCE_INPUT = (1, 40)
SETTLE = 2  # untimed pairs before each timed one in a round-robin: 2 brought the ratios back to a lone run's


def reference_module() -> nn.Module:
    """The fixed reference workload: conv(32, k=5, stride 2) >> relu >> conv(32, k=5) >> relu >> linear(10),
    weights from a fixed seed (a network of the size the bundled search finds, run at the same batch)."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 32, 5, stride=2, padding=2), nn.ReLU(), nn.Conv1d(32, 32, 5, padding=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 20, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net.eval()


@contextmanager
def threads(n: int | None):
    """Run with `n` intra-op threads (the deployment's), then restore the caller's."""
    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != old:
            torch.set_num_threads(old)


def _forward(module: nn.Module, input_shape, batch: int, device: str, precision: str):
    """A zero-argument callable timing one forward pass (seconds)."""
    dtype = LOW_FLOAT_DTYPES.get(DEPLOY_DTYPE.get(precision), torch.float32)
    module = module.eval().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> float:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            sync()
            t0 = time.perf_counter()
            module(x)
            sync()
            return time.perf_counter() - t0
    return run


def measure_together(modules: dict, batch: int = 1, device: str = "cpu", precision: str = "fp32",
                     runs: int = 30, warmup: int = 5, n_threads: int | None = 1, max_seconds: float = 5.0,
                     reference: nn.Module | None = None) -> dict:
    """{key: {"ms", "reference_ms", "ratio"}} for `modules` = {key: (module, input_shape)}, each forward
    paired with one of the reference workload, round-robin over the modules (each timed pair after SETTLE
    untimed ones: timed right after the other networks, a network ran up to twice as slow). Stops early after `max_seconds`
    of timed runs (5 rounds at least)."""
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    ref = _forward(reference if reference is not None else reference_module(), REFERENCE_INPUT, batch, device, "fp32")
    runners = {k: _forward(m, shape, batch, device, precision) for k, (m, shape) in modules.items()}
    times = {k: ([], []) for k in modules}
    spent = 0.0
    with threads(n_threads):
        for i in range(warmup + runs):
            for k, run in runners.items():
                for _ in range(SETTLE if len(runners) > 1 else 0):  # the other networks ran since: warm up again
                    ref(), run()
                r, t = ref(), run()
                if i >= warmup:
                    times[k][0].append(t)
                    times[k][1].append(r)
                    spent += r + t
            if i >= warmup + 4 and spent > max_seconds:
                break
    return {k: {"ms": statistics.median(t) * 1e3, "reference_ms": statistics.median(r) * 1e3,
                "ratio": statistics.median(a / b for a, b in zip(t, r))} for k, (t, r) in times.items()}


def measure_paired(module: nn.Module, input_shape, **kw) -> dict:
    """One network against the reference: {"ms", "reference_ms", "ratio"}."""
    return measure_together({0: (module, input_shape)}, **kw)[0]


def calibrate(batch: int = 1, device: str = "cpu", n_threads: int | None = 1, rounds: int = 3) -> float:
    """The reference workload's time in ms (the fastest of a few medians): what one unit of ratio is worth."""
    ref = reference_module()
    return min(measure_paired(ref, REFERENCE_INPUT, batch=batch, device=device, n_threads=n_threads,
                              reference=ref)["reference_ms"] for _ in range(rounds))


def measure(module: nn.Module, input_shape, batch: int = 1, device: str = "cpu", precision: str = "fp32",
            runs: int = 30, warmup: int = 5, max_seconds: float = 5.0) -> float:
    """Median forward time in milliseconds, unpaired (for a quiet machine). Stops early after `max_seconds`
    of timed runs (5 at least)."""
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    run = _forward(module, input_shape, batch, device, precision)
    times = []
    for i in range(warmup + runs):
        t = run()
        if i >= warmup:
            times.append(t)
            if len(times) >= 5 and sum(times) > max_seconds:
                break
    return statistics.median(times) * 1e3
