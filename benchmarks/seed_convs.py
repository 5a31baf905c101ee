"""CPU forward latency of the seed papers' convolutions (docs/seed_convs.md), as ratios to dwconv(7) and to a
dense conv of the same shape, all measured in the same interleaved rounds.

    python benchmarks/seed_convs.py [--runs 20] [--warmup 3] [--batch 1] [--threads 1] [--dims 2,1]

Each op is a one-op .arch program compiled with archdsl.compile (benchmarks/mixers.py's `build`), in eval mode
under torch.inference_mode; "deployed" rows run `module.deploy()` (the sparse 1x1 conv's CSR kernel). 2-D: 64
channels at 56 x 56; 1-D: 64 x 1024. The dense conv of the same shape has the op's channels, kernel size and groups
(conv(64, k = 3) for a full 3x3 op, dwconv(3) for a depthwise one, conv(64, k = 1) for a 1x1 one).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixers import SHAPES, build, call_ms, human  # noqa: E402

from archdsl.ir.graph import totals  # noqa: E402

BASELINE = "dwconv(7)"
# (call, the dense conv of the same shape, deployed?)
ENTRIES = [
    ("deform(64, k = 3)", "conv(64, k = 3)", False),
    ("deform(64, k = 3, groups = 64, max_offset = 1.0)", "dwconv(3)", False),
    ("bcos(64, k = 3)", "conv(64, k = 3)", False),
    ("orthoconv(3)", "conv(64, k = 3)", False),
    ("arconv(3)", "conv(64, k = 3)", False),
    ("fdconv(64, k = 3)", "conv(64, k = 3)", False),
    ("cconv(32, k = 3)", "conv(64, k = 3)", False),  # 32 complex channels = 64 planes
    ("tdconv(64, k = 3, rank = 16)", "conv(64, k = 3)", False),
    ("tdconv(64, k = 3, rank = 16, form = \"tucker\")", "conv(64, k = 3)", False),
    ("sparsepw(64, sparsity = 0.9)", "conv(64, k = 1)", False),
    ("sparsepw(64, sparsity = 0.9)", "conv(64, k = 1)", True),
]


def table(nd: int, args) -> list[str]:
    calls = [BASELINE] + sorted({dense for _, dense, _ in ENTRIES}) + [c for c, _, _ in ENTRIES]
    deployed = [False] * (len(calls) - len(ENTRIES)) + [d for _, _, d in ENTRIES]
    built = []
    for call, dep in zip(calls, deployed):
        b, err = build(call, nd)
        if b is None:
            print(f"skipped `{call}` ({nd}-D): {err}", file=sys.stderr)
            continue
        module, G = b
        if dep:
            module = module.deploy()
            G = module.archdsl_ir
        built.append(((call, dep), module, G))
    x = torch.randn(args.batch, *built[0][2].nodes[built[0][2].graph["input"]]["shape"])
    times = {key: [] for key, *_ in built}
    with torch.inference_mode():
        for key, module, _ in built:
            for _ in range(args.warmup):
                module(x)
        for _ in range(args.runs):  # interleaved: load changes hit every op alike
            for key, module, _ in built:
                times[key].append(call_ms(module, x))
    med = {key: statistics.median(t) for key, t in times.items()}
    lines = [f"### {nd}-D: input {args.batch} x {SHAPES[nd].replace(', ', ' x ')}", "",
             "| op | form | params | MACs / sample | median ms | x dwconv(7) | dense conv of the same shape | x dense |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for (call, dep), _, G in built:
        dense = next((d for c, d, _ in ENTRIES if c == call), None)
        t = totals(G)
        ratio = f"{med[(call, dep)] / med[(dense, False)]:.2f}" if dense and (dense, False) in med else ""
        lines.append(f"| `{call}` | {'deployed' if dep else 'train'} | {t['params']:,} | {human(t['macs'])} | "
                     f"{med[(call, dep)]:.3f} | {med[(call, dep)] / med[(BASELINE, False)]:.2f} | "
                     f"{'`' + dense + '`' if dense else ''} | {ratio} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dims", default="2,1")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; median of {args.runs} interleaved rounds after {args.warmup} "
          f"warm-up calls, batch {args.batch}, eval mode, torch.inference_mode.")
    for nd in [int(d) for d in args.dims.split(",") if d.strip()]:
        print()
        print("\n".join(table(nd, args)), flush=True)


if __name__ == "__main__":
    main()
