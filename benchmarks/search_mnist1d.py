"""The bundled search against its bar, in one run on this machine.

    python benchmarks/search_mnist1d.py [--trials 60] [--out runs/bench_search] [--samplers nsga2,random]

1. The MNIST-1D paper's CNN (searchspaces/models/mnist1d_cnn.arch): its deploy-graph latency (batch 1, CPU,
   same measurement as the search; taken before and after each search, the fastest is the bar) and its test
   accuracy with the search's training recipe.
2. `archdsl search searchspaces/mnist1d_mixers.arch` with NSGA-II, seed 0, --trials N: wall time, the
   Pareto front with test accuracy, the best test accuracy at a latency no worse than the CNN's.
3. The same budget with random sampling, same seed; hypervolume of both fronts against one reference point
   (accuracy 0, and 1.1x the worst latency seen in either run).
Each sampler's study goes to OUT/<sampler>; a study already there would be resumed, not rerun, so the script
refuses an OUT that holds one.
Prints a markdown section for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

import archdsl
from archdsl.search.data import load
from archdsl.search.latency import measure
from archdsl.search.report import _losses, hypervolume, write_report
from archdsl.search.spec import load_spec
from archdsl.search.study import run_search
from archdsl.search.train import evaluate, train
from archdsl.search.trial import _deploy

SPACE = "searchspaces/mnist1d_mixers.arch"
CNN = "searchspaces/models/mnist1d_cnn.arch"


def recipe(epochs: int | None) -> dict:
    """The search space's training recipe (its accuracy(...) objective), epochs overridden when given."""
    o = load_spec(archdsl.parse(SPACE)).objective("accuracy")
    args = dict(o.args if o else {})
    kw = {"epochs": int(args.get("epochs", 10)), "batch": int(args.get("batch", 128)),  # a trial's defaults (trial.py)
          "lr": float(args.get("lr", 1e-2)), "weight_decay": float(args.get("weight_decay", 1e-4))}
    if epochs is not None:
        kw["epochs"] = epochs
    return kw


def baseline(kw: dict):
    data = load("mnist1d")
    G = archdsl.build(archdsl.parse(CNN))
    torch.manual_seed(0)
    module = archdsl.compile(G)
    t0 = time.perf_counter()
    train(module, data, **kw)
    seconds = time.perf_counter() - t0
    deploy = _deploy(G, module)
    shape = G.nodes[G.graph["input"]]["shape"]

    def latency():  # measured exactly as a search trial measures latency: the deploy graph, batch 1, CPU
        return measure(deploy, shape, batch=1)

    return {"test_accuracy": evaluate(module, data.x_test, data.y_test), "latencies_ms": [latency()],
            "measure": latency, "train_seconds": seconds, "params": sum(p.numel() for p in module.parameters())}


def run(sampler: str, trials: int, out: Path):
    program = archdsl.parse(SPACE)
    t0 = time.perf_counter()
    study, spec, data, _ = run_search(program, trials=trials, sampler=sampler, seed=0, out=out, progress=False)
    seconds = time.perf_counter() - t0
    summary = write_report(study, out, data, program)
    return study, summary, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--out", default="runs/bench_search")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train the CNN this many epochs instead of the search space's accuracy(epochs = ...)")
    ap.add_argument("--samplers", default="nsga2,random",
                    help="comma-separated; the first one's Pareto front is printed")
    args = ap.parse_args()
    out = Path(args.out)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for sampler in samplers:
        if (out / sampler / "study.db").exists():
            raise SystemExit(f"{out / sampler / 'study.db'} exists: a rerun would resume that study; "
                             f"give another --out or remove it")
    kw = recipe(args.epochs)
    base = baseline(kw)
    results = {}
    for sampler in samplers:
        results[sampler] = run(sampler, args.trials, out / sampler)
        # The CNN again after each search: on a shared machine one measurement can be slowed by other work, and
        # the bar is the fastest CNN measurement (the strictest one).
        base["latencies_ms"].append(base["measure"]())
    base["latency_ms"] = min(base["latencies_ms"])
    worst = max(float(_losses(s, [t for t in s.get_trials() if t.values])[:, 1].max()) for s, _, _ in results.values())
    ref = np.array([0.0, worst * 1.1])
    print(f"## Search on MNIST-1D ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})")
    extra = f" --samplers {args.samplers}" if samplers != ["nsga2", "random"] else ""
    print(f"command: `python benchmarks/search_mnist1d.py --trials {args.trials}{extra}`\n")
    shown = f"{kw['epochs']} epochs, batch {kw['batch']}, lr {kw['lr']:g}"
    print(f"Paper CNN ({base['params']:,} params) with the search's recipe ({shown}): test accuracy "
          f"{base['test_accuracy']:.4f}, latency {base['latency_ms']:.4f} ms (batch 1; the fastest of "
          f"{', '.join(f'{v:.4f}' for v in base['latencies_ms'])} ms, measured before and after each search), "
          f"trained in {base['train_seconds']:.1f} s.\n")
    print("| sampler | trials (complete / pruned or infeasible / failed) | wall time | hypervolume | best test acc | "
          "best test acc at latency <= CNN |")
    print("|---|---|---|---|---|---|")
    for sampler, (study, summary, seconds) in results.items():
        done = [t for t in study.get_trials() if t.values]
        hv = hypervolume(_losses(study, done), ref) if done else 0.0
        accs = [m.get("test_accuracy") or 0 for m in summary["pareto"]]
        fast = [m.get("test_accuracy") or 0 for m in summary["pareto"] if m["latency_ms"] <= base["latency_ms"]]
        c = summary["trials"]
        print(f"| {sampler} | {c.get('complete', 0)} / {c.get('pruned', 0)} / {c.get('fail', 0)} | {seconds / 60:.1f} min "
              f"| {hv:.4g} | {max(accs, default=0):.4f} | {max(fast, default=0):.4f} |")
    print(f"\nHypervolume reference point: accuracy 0, latency {ref[1]:.4f} ms (objectives: val accuracy, latency).")
    first = samplers[0]
    study, summary, _ = results[first]
    print(f"\n{first} Pareto front:\n\n| trial | val acc | test acc | latency ms | params | choices |\n|---|---|---|---|---|---|")
    for m in summary["pareto"]:
        choices = ", ".join(f"{k}={v}" for k, v in m["params_choice"].items())
        print(f"| {m['number']} | {m['accuracy']:.4f} | {m.get('test_accuracy') or 0:.4f} | {m['latency_ms']:.4f} | "
              f"{m['params']:,} | {choices} |")


if __name__ == "__main__":
    main()
