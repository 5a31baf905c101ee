"""Latency of the deploy graph against the train graph (both in eval mode), eager and under torch.compile.

    python benchmarks/deploy.py                                   # every reference model, batch 1 and 32, 224
    python benchmarks/deploy.py --models resnet50,replknet_31b --batches 1 --size 160 --runs 20

For each model and batch the four modules are measured in one process, interleaved round by round (so drift
in clock speed hits all four alike): the train-mode module in eval mode, the deploy module (`.deploy()`: BN
folded, branches re-parameterized, ops grouped), and torch.compile of each. Latency is the median of --runs
calls after --warmup calls (torch.compile compiles during the warm-up). Prints a markdown table with the
machine's name; ratios are train-eager time over the other time (higher is faster).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import archdsl
from archdsl.errors import ArchError

MODELS = Path(__file__).resolve().parent.parent / "searchspaces" / "models"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.node()} ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def reference_models(names: list[str] | None) -> list[Path]:
    files = sorted(MODELS.glob("*.arch"))
    if names:
        by_name = {f.stem: f for f in files}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; have {sorted(by_name)}")
        return [by_name[n] for n in names]
    return [f for f in files if archdsl.parse(f).models]


def build(file: Path, size: int):
    program = archdsl.parse(file)
    params = {p.name for p in program.model().params}
    try:
        return archdsl.compile(program, **({"size": size} if "size" in params else {})).eval()
    except ArchError as e:
        raise SystemExit(f"{file.name}: {e.format()}") from None


def measure(modules: dict, x: torch.Tensor, warmup: int, runs: int) -> dict:
    """Median seconds per call of each module, interleaved: every round calls each module once."""
    times = {name: [] for name in modules}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in modules.values():
                m(x)
        for _ in range(runs):
            for name, m in modules.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated model names (file stems); default: every reference model")
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=224, help="input size (models with a `size` parameter)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile columns")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    files = reference_models(args.models.split(",") if args.models else None)

    print(f"machine: {machine()}\n")
    print("| model | batch | train ms | deploy ms | compiled train ms | compiled deploy ms | deploy x "
          "| compiled train x | compiled deploy x | compiled deploy / compiled train x |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for file in files:
        train = build(file, args.size)
        deploy = train.deploy()
        modules = {"train": train, "deploy": deploy}
        if not args.no_compile:
            torch._dynamo.reset()
            modules |= {"ctrain": torch.compile(train), "cdeploy": torch.compile(deploy)}
        shape = train.archdsl_ir.nodes[train.archdsl_ir.graph["input"]]["shape"]
        for batch in batches:
            x = torch.randn(batch, *shape)
            t = measure(modules, x, args.warmup, args.runs)
            ms = {k: f"{v * 1e3:.2f}" for k, v in t.items()}
            ratio = {k: f"{t['train'] / v:.2f}" for k, v in t.items()}
            both = f"{t['ctrain'] / t['cdeploy']:.2f}" if "cdeploy" in t else "-"
            print(f"| {file.stem} | {batch} | {ms['train']} | {ms['deploy']} | {ms.get('ctrain', '-')} | "
                  f"{ms.get('cdeploy', '-')} | {ratio['deploy']} | {ratio.get('ctrain', '-')} | "
                  f"{ratio.get('cdeploy', '-')} | {both} |", flush=True)


if __name__ == "__main__":
    main()
