"""How much one architecture's latency moves between measurements on this machine, raw and normalised.

    python benchmarks/latency_spread.py [--repeats 20] [--gap 3]

Times the MNIST-1D paper CNN's deploy graph (batch 1, one thread) REPEATS times, GAP seconds apart, each time
as a search trial does (archdsl.search.latency.measure_paired: 30 forwards, each paired with the reference
workload). Prints median, min-max and the relative spread ((max - min) / median) of the raw milliseconds and of
the ratio to the reference: the ratio is what the search compares.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import archdsl
from archdsl.search.latency import measure_paired
from archdsl.search.trial import _deploy

CNN = Path(__file__).resolve().parent.parent / "searchspaces/models/mnist1d_cnn.arch"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--gap", type=float, default=3.0, help="seconds between measurements")
    args = ap.parse_args()
    G = archdsl.build(archdsl.parse(CNN))
    deploy = _deploy(G, archdsl.compile(G))
    shape = G.nodes[G.graph["input"]]["shape"]
    raw, ratio = [], []
    for i in range(args.repeats):
        r = measure_paired(deploy, shape, batch=1, n_threads=1)
        raw.append(r["ms"])
        ratio.append(r["ratio"])
        time.sleep(args.gap)
    print(f"command: `python benchmarks/latency_spread.py --repeats {args.repeats} --gap {args.gap:g}`\n")
    print("| paper CNN, batch 1, 1 thread | median | min-max | (max - min) / median |\n|---|---|---|---|")
    for name, xs in (("raw ms", raw), ("ratio to the reference", ratio)):
        med = statistics.median(xs)
        print(f"| {name} | {med:.4f} | {min(xs):.4f}-{max(xs):.4f} | {(max(xs) - min(xs)) / med:.1%} |")


if __name__ == "__main__":
    main()
