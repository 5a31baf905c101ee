"""Dense vs CSR 1x1 convolutions at 70 / 80 / 90 % magnitude sparsity, as ratios measured in one run.

    python benchmarks/sparse_pw.py [--runs 30] [--warmup 5] [--batch 1] [--threads 1]

The 1x1 convs of MobileNet v1 at 224 x 224 (the network Fast Sparse ConvNets prunes) from 56 x 56 on: each is
deployed from a one-op .arch program, `sparsepw(out, sparsity = s)`, trained weights random. The dense form is what
the deploy pass `sparse_kernels` emits below its threshold (a 1x1 conv with the pruned weights); the CSR form
what it emits above (sparsepw_csr, torch's CSR matmul). Each round times every layer's dense and CSR forms once,
interleaved, so load changes hit both; the table gives the median CSR time over the median dense time of the same
layer and sparsity (below 1: the CSR kernel is faster), and the geometric mean over the layers. The deploy pass's
MIN_SPARSITY is set from this table.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import warnings

import torch

import archdsl
from archdsl.passes.sparse_kernels import MIN_SPARSITY

# (in, out, size): MobileNet v1's pointwise layers from the 56 x 56 stage on
LAYERS = [(128, 128, 56), (128, 256, 28), (256, 256, 28), (256, 512, 14), (512, 512, 14), (512, 1024, 7),
          (1024, 1024, 7)]
SPARSITIES = (0.7, 0.8, 0.9)


def _deployed(cin, cout, size, sparsity, dense: bool):
    src = f"model m() {{ input image[{cin}, {size}, {size}]\n sparsepw({cout}, sparsity = {sparsity}) }}"
    torch.manual_seed(0)
    train = archdsl.compile(src).eval()
    # the pass decides by MIN_SPARSITY; force each form by disabling the pass (dense: fold by hand) or not
    d = train.deploy(select=["sparse_kernels"])
    op = d.archdsl_ir.nodes["sparsepw"]["op"]
    if dense and op != "conv" or not dense and op != "sparsepw_csr":
        import archdsl.passes.sparse_kernels as sk

        keep, sk.MIN_SPARSITY = sk.MIN_SPARSITY, (1.0 if dense else 0.0)
        try:
            d = train.deploy(select=["sparse_kernels"])
        finally:
            sk.MIN_SPARSITY = keep
    return d


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    cases = []
    for cin, cout, size in LAYERS:
        x = torch.randn(args.batch, cin, size, size)
        for s in SPARSITIES:
            cases.append(((cin, cout, size, s), x, _deployed(cin, cout, size, s, True),
                          _deployed(cin, cout, size, s, False)))
    times = {key: ([], []) for key, *_ in cases}
    with torch.inference_mode():
        for _, x, dense, csr in cases:
            for _ in range(args.warmup):
                dense(x), csr(x)
        for _ in range(args.runs):
            for key, x, dense, csr in cases:
                for i, m in enumerate((dense, csr)):
                    t = time.perf_counter()
                    m(x)
                    times[key][i].append(time.perf_counter() - t)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {args.threads}, batch {args.batch}, runs {args.runs}; pass threshold MIN_SPARSITY = "
          f"{MIN_SPARSITY}")
    print("| layer (in -> out, size) | dense ms | " + " | ".join(f"CSR / dense at {s:.0%}" for s in SPARSITIES) + " |")
    print("|---|---|" + "---|" * len(SPARSITIES))
    ratios = {s: [] for s in SPARSITIES}
    for cin, cout, size in LAYERS:
        row, dense_ms = [], None
        for s in SPARSITIES:
            d, c = (statistics.median(t) for t in times[(cin, cout, size, s)])
            dense_ms = dense_ms or d * 1e3
            ratios[s].append(c / d)
            row.append(f"{c / d:.2f}")
        print(f"| {cin} -> {cout}, {size}x{size} | {dense_ms:.3f} | " + " | ".join(row) + " |")
    gm = [math.exp(statistics.mean(math.log(r) for r in ratios[s])) for s in SPARSITIES]
    print("| geometric mean | | " + " | ".join(f"{g:.2f}" for g in gm) + " |")


if __name__ == "__main__":
    main()
