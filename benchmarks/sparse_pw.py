"""Dense vs sparse 1x1 convolutions at 70 / 80 / 90 % magnitude sparsity, as ratios measured in one run.

    python benchmarks/sparse_pw.py [--runs 30] [--warmup 5] [--threads 1]

Layers: the 1x1 convs of MobileNet v1 at 224 x 224 (the network Fast Sparse ConvNets prunes) from 56 x 56 on, at
batch 1, and expanding / projecting 1x1 convs of a mobile block (128 <-> 512 channels at 28 x 28 and 14 x 14) at
batch 1 and 8. Each is deployed from a one-op .arch program, `sparsepw(out, sparsity = s)`, trained weights random.
Three forms of each: the dense 1x1 conv the deploy pass `sparse_kernels` emits below its threshold, and the
`sparsepw_csr` it emits above, timed on its C kernel (archdsl.ops.native, what float32 inference runs) and on
torch's CSR product (the fallback without a C compiler). Each round times every case's forms once, interleaved,
so load changes hit all of them; the table gives each sparse form's median over the dense median of the same case
(below 1: sparse faster), and the geometric mean over the cases. The pass's thresholds are set from this table.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings

import torch

import archdsl
import archdsl.passes.sparse_kernels as sk
from archdsl.ops import native

# (in, out, size, batch): MobileNet v1's pointwise layers from the 56 x 56 stage on, then a mobile block's 1x1s
LAYERS = [(128, 128, 56, 1), (128, 256, 28, 1), (256, 256, 28, 1), (256, 512, 14, 1), (512, 512, 14, 1),
          (512, 1024, 7, 1), (1024, 1024, 7, 1)]
LAYERS += [(cin, cout, size, batch) for batch in (1, 8) for size in (28, 14) for cin, cout in ((128, 512), (512, 128))]
SPARSITIES = (0.7, 0.8, 0.9)


def _deployed(cin, cout, size, sparsity, dense: bool):
    """The deployed 1x1 module in the form asked for: the pass's threshold forced to 1 (dense) or 0 (CSR)."""
    src = f"model m() {{ input image[{cin}, {size}, {size}]\n sparsepw({cout}, sparsity = {sparsity}) }}"
    torch.manual_seed(0)
    train = archdsl.compile(src).eval()
    real, sk.threshold = sk.threshold, lambda: (1.0 if dense else 0.0, "forced by the benchmark")
    try:
        d = train.deploy(select=["sparse_kernels"])
    finally:
        sk.threshold = real
    assert d.archdsl_ir.nodes["sparsepw"]["op"] == ("conv" if dense else "sparsepw_csr")
    return d.get_submodule("sparsepw")


def _timed(cases, runs, warmup):
    times = {key: [[] for _ in forms] for key, _, forms in cases}
    with torch.inference_mode():
        for _, x, forms in cases:
            for _ in range(warmup):
                for f in forms:
                    f(x)
        for _ in range(runs):
            for key, x, forms in cases:
                for i, f in enumerate(forms):
                    t = time.perf_counter()
                    f(x)
                    times[key][i].append(time.perf_counter() - t)
    return {key: [statistics.median(t) for t in ts] for key, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if not native.available():
        raise SystemExit("the C sparse kernel did not build (no C compiler?): nothing to compare")
    cases = []
    for cin, cout, size, batch in LAYERS:
        x = torch.randn(batch, cin, size, size)
        for s in SPARSITIES:
            dense, csr = _deployed(cin, cout, size, s, True), _deployed(cin, cout, size, s, False)
            cases.append(((cin, cout, size, batch, s), x, (dense, csr, csr.torch_forward)))
    medians = _timed(cases, args.runs, args.warmup)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (1 min); "
          f"torch {torch.__version__}, threads {args.threads}, runs {args.runs}; thresholds: C kernel "
          f"{sk.MIN_SPARSITY:.0%}, torch CSR {sk.MIN_SPARSITY_TORCH:.0%}")
    head = " | ".join(f"C / dense at {s:.0%}" for s in SPARSITIES) + " | "
    head += " | ".join(f"torch CSR / dense at {s:.0%}" for s in SPARSITIES)
    print(f"| layer (in -> out, size, batch) | dense ms | {head} |")
    print("|---|---|" + "---|" * 2 * len(SPARSITIES))
    ratios = {(s, k): [] for s in SPARSITIES for k in (1, 2)}
    for cin, cout, size, batch in LAYERS:
        cells = {}
        for s in SPARSITIES:
            m = medians[(cin, cout, size, batch, s)]
            for k in (1, 2):
                ratios[(s, k)].append(m[k] / m[0])
                cells[(s, k)] = f"{m[k] / m[0]:.2f}"
        dense_ms = statistics.median(medians[(cin, cout, size, batch, s)][0] for s in SPARSITIES) * 1e3
        row = " | ".join(cells[(s, k)] for k in (1, 2) for s in SPARSITIES)
        print(f"| {cin} -> {cout}, {size}x{size}, {batch} | {dense_ms:.3f} | {row} |")
    gm = [math.exp(statistics.mean(math.log(r) for r in ratios[(s, k)])) for k in (1, 2) for s in SPARSITIES]
    worst = [max(ratios[(s, k)]) for k in (1, 2) for s in SPARSITIES]
    print("| geometric mean | | " + " | ".join(f"{g:.2f}" for g in gm) + " |")
    print("| worst case | | " + " | ".join(f"{w:.2f}" for w in worst) + " |")


if __name__ == "__main__":
    main()
