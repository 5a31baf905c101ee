"""Deploy latency and model size at fp32, bf16 and int8, as ratios to fp32 measured in the same run.

    python benchmarks/precision.py                                    # ConvNeXt-T (224) and the MNIST-1D CNN
    python benchmarks/precision.py --models mnist1d_cnn --batches 1,256 --runs 50

Each model is compiled three times with `@precision(P)` on the whole model (int8: the observers calibrated on
one random batch of 64, like `archdsl.compile(mode="deploy")` does) and deployed: bf16 runs in bf16 weights and
activations, int8 runs its convs / linears as int8 x int8 -> int32 kernels (torch._int_mm) and simulates the
rest with quantize-dequantize (lower_precision's notice names those nodes). The three deploy modules, and
torch.compile of each (which can fuse the quantize arithmetic eager PyTorch runs op by op), are timed
interleaved, round by round. Size: the IR's bytes at each node's precision, and the bytes the deploy module's
state_dict really holds (simulated int8 nodes keep quantized values in fp32 tensors). Deviation: the largest
difference from the fp32 deploy output, relative to its largest magnitude (untrained weights).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from deploy import MODELS, machine, measure

import archdsl
from archdsl.api import calibrate
from archdsl.ir.cost import size_bytes

PRECISIONS = ("fp32", "bf16", "int8")


def variant(file: Path, precision: str, size: int | None):
    """(train IR, deploy module) of the model with every node at `precision`."""
    text = file.read_text()
    if precision != "fp32":
        text = re.sub(r"^model ", f"@precision({precision})\nmodel ", text, count=1, flags=re.M)
    program = archdsl.parse(text, file=str(file))
    params = {p.name for p in program.model().params}
    torch.manual_seed(0)
    module = archdsl.compile(program, **({"size": size} if size and "size" in params else {}))
    calibrate(module, batch=64)  # observers see the benchmark's input distribution (N(0, 1))
    deploy = module.eval().deploy(log=lambda msg: None)  # the simulated nodes are counted from the pass result
    simulated = next((r.declined for r in deploy.pass_results if r.name == "lower_precision"), [])
    return module.archdsl_ir, deploy, simulated


def state_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def bench(file: Path, batch: int, size: int, runs: int, warmup: int, compiled: bool) -> list[dict]:
    built = {p: variant(file, p, size) for p in PRECISIONS}
    G = built["fp32"][0]
    x = torch.randn(batch, *G.nodes[G.graph["input"]]["shape"], generator=torch.Generator().manual_seed(1))
    modules = {(p, False): built[p][1] for p in PRECISIONS}
    if compiled:
        modules.update({(p, True): torch.compile(built[p][1]) for p in PRECISIONS})
    with torch.inference_mode():
        outs = {key: m(x).float() for key, m in modules.items()}  # torch.compile compiles here
    ms = {key: t * 1e3 for key, t in measure(modules, x, warmup - 1, runs).items()}
    rows = []
    for p in PRECISIONS:
        G, deploy, simulated = built[p]
        dev = ((outs[p, False] - outs["fp32", False]).abs().max() / outs["fp32", False].abs().max()).item()
        kernels = sum(d["op"] in ("int8_linear", "int8_conv") for _, d in deploy.archdsl_ir.nodes(data=True))
        rows.append(dict(model=file.stem, batch=batch, precision=p, ms=ms[p, False],
                         speedup=ms["fp32", False] / ms[p, False],
                         cms=ms.get((p, True)), cspeedup=ms["fp32", True] / ms[p, True] if compiled else None,
                         ir_bytes=size_bytes(G), state_bytes=state_bytes(deploy), deviation=dev,
                         int8_kernels=kernels, simulated=len(simulated)))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="convnext_t,mnist1d_cnn", help="comma-separated names in searchspaces/models")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--size", type=int, default=224, help="input size for models with a `size` parameter")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile columns")
    args = ap.parse_args(argv)
    print(f"machine: {machine()}\n")
    print("| model | batch | precision | deploy ms | x fp32 speed | compiled ms | x compiled fp32 | IR size (bytes) "
          "| x fp32 size | state_dict bytes | int8 kernels | simulated nodes | max deviation from fp32 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            rows = bench(MODELS / f"{name}.arch", batch, args.size, args.runs, args.warmup, not args.no_compile)
            fp32 = rows[0]
            for r in rows:
                compiled = (f"{r['cms']:.3f} | {r['cspeedup']:.2f}" if r["cms"] is not None else "- | -")
                print(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['ms']:.3f} | {r['speedup']:.2f} | "
                      f"{compiled} | {r['ir_bytes']:,} | {r['ir_bytes'] / fp32['ir_bytes']:.2f} | "
                      f"{r['state_bytes']:,} | {r['int8_kernels']} | {r['simulated']} | {r['deviation']:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
