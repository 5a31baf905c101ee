"""How long `check` and `compile` take on a reference model, beside torch.compile's first call.

    python benchmarks/check_compile.py [searchspaces/models/convnext_t.arch] [--runs 7]

Measured in one process after imports (interpreter and torch start-up excluded), median of --runs:
parse + build (the IR with shapes, params, MACs: `archdsl check`), lowering to a torch.fx GraphModule
(what `archdsl.compile` adds: allocating and initialising the weights), emitting Python source
(`archdsl compile -o`), and, for scale, torch.compile's first call on the same module at batch 1.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import archdsl
from codegen.python_source import emit


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?", default="searchspaces/models/convnext_t.arch")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    archdsl.build(archdsl.parse(args.file))  # warm the grammar and registry caches
    build_s = median_time(lambda: archdsl.build(archdsl.parse(args.file)), args.runs)
    G = archdsl.build(archdsl.parse(args.file))
    lower_s = median_time(lambda: archdsl.compile(G), args.runs)
    emit_s = median_time(lambda: emit(G), args.runs)
    module = archdsl.compile(G).eval()
    x = torch.randn(1, *G.nodes[G.graph["input"]]["shape"])
    compiled = torch.compile(module)
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(x)
    tc_first = time.perf_counter() - t0
    with torch.inference_mode():
        eager_s = median_time(lambda: module(x), args.runs)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| {args.file} | check (parse+build) {build_s * 1e3:.1f} ms | lower to fx {lower_s * 1e3:.1f} ms | "
          f"emit .py {emit_s * 1e3:.1f} ms | check+compile -o {(build_s + emit_s) * 1e3:.1f} ms | "
          f"torch.compile first call {tc_first:.1f} s | eager forward b=1 {eager_s * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
