"""Elaboration time against model size: `repeat n { relu }` for growing n (issue 13: it was quadratic).

    python benchmarks/elaborate_scaling.py [--sizes 5000 20000 80000] [--runs 3]

Times archdsl.build (elaboration, naming and the IR verifier) after a warm-up build, median of --runs, and
prints microseconds per node: flat across sizes means linear.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import archdsl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 80000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    archdsl.build("model m() { input x[4] relu }")  # imports and op registry loaded before timing
    print(f"# {platform.machine()}, {platform.python_version()}")
    print("| nodes | build (median) | per node |\n|---:|---:|---:|")
    for n in args.sizes:
        program = archdsl.parse(f"model m() {{\n  input x[4]\n  repeat {n} {{ relu }}\n}}\n")
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            archdsl.build(program)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"| {n:,} | {med:.2f} s | {med / n * 1e6:.0f} us |")


if __name__ == "__main__":
    main()
