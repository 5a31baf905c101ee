"""The `archdsl` command: check, compile, show, bench, ops.

Every error in a user's file or command line is printed as ``file:line:col: error: ...`` with the line, a
caret and a hint, and exits with status 2. A Python traceback means a bug in archdsl (status 3); set
ARCHDSL_DEBUG=1 to see it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from archdsl.errors import ArchError


def _overrides(program, pairs: list[str]) -> dict:
    from archdsl.frontend.elaborate import eval_override

    out = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ArchError(f"--set expects name=value, got {pair!r}", hint="e.g. --set k=5 or --set mixer='pool(3)'")
        out[name] = eval_override(program, text.strip(), name)
    return out


def _load(args):
    import archdsl

    program = archdsl.parse(Path(args.file))
    graph = archdsl.build(program, args.model, **_overrides(program, args.set))
    return program, graph


def cmd_check(args) -> int:
    from archdsl.ir.cost import block_table, summary
    from archdsl.ir.printer import dump, ir_hash

    if args.samples:
        return _check_samples(args)
    _, G = _load(args)
    G, results = _deploy_graph(args, G)
    info = summary(G) | {"ir_hash": ir_hash(G), "blocks": block_table(G, args.depth), "mode": args.mode}
    if results is not None:
        info["passes"] = [{"pass": r.name, "changed": len(r.changed),
                           "declined": [{"node": n, "reason": why} for n, why in r.declined]} for r in results]
    if G.graph.get("space"):
        info["space"] = G.graph["space"]
        info["choices"] = {k: _plain(v) for k, v in G.graph["choices"].items()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if args.ir:
        print(dump(G, spans=args.spans), end="")
        return 0
    _print_table(info, args.file)
    for r in results or ():
        print(r.summary())
    return 0


def _deploy_mode(args) -> bool:
    flags = [f for f, on in (("--passes", args.passes), ("--disable-pass", args.disable_pass),
                             ("--dump-ir", args.dump_ir)) if on]
    if args.mode != "deploy" and flags:
        raise ArchError(f"{', '.join(flags)}: deploy-graph options, but the mode is train", hint="add --mode deploy")
    return args.mode == "deploy"


def _deploy_graph(args, G):
    """(graph, pass results): the IR as `--mode` asks; in deploy mode, after the passes (structure only)."""
    if not _deploy_mode(args):
        return G, None
    from archdsl.passes import run_pipeline

    G, _, results = run_pipeline(G, None, select=_names(args.passes), disable=_names(args.disable_pass) or (),
                                 dump_dir=args.dump_ir)
    return G, results


def _names(values) -> list[str] | None:
    """Pass names from comma-separated and/or repeated flags."""
    if not values:
        return None
    values = values if isinstance(values, list) else [values]
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


class _ListPasses(argparse.Action):
    """--list-passes: print the deploy pipeline and exit (no file needed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from archdsl.passes import describe

        for i, (name, doc) in enumerate(describe(), 1):
            print(f"{i:02d} {name:22s} {doc}")
        parser.exit()


def _deploy_flags(c) -> None:
    c.add_argument("--mode", choices=["train", "deploy"], default="train",
                   help="train graph, or the deploy graph after the optimization passes")
    c.add_argument("--passes", metavar="A,B", help="with --mode deploy: run only these passes (in pipeline order)")
    c.add_argument("--disable-pass", action="append", default=[], metavar="NAME",
                   help="with --mode deploy: skip this pass (repeatable, or comma-separated)")
    c.add_argument("--dump-ir", metavar="DIR", help="with --mode deploy: write DIR/NN_pass.ir after each pass")
    c.add_argument("--list-passes", action=_ListPasses, help="list the deploy passes in order and exit")


def _check_samples(args) -> int:
    """Build N random points of the space; report which choices lead to invalid architectures."""
    import random
    from collections import Counter

    import archdsl
    from archdsl.frontend.values import show
    from archdsl.search.space import RandomResolver

    program = archdsl.parse(Path(args.file))
    fixed = _overrides(program, args.set)
    rng = random.Random(args.seed)
    ok, failures = 0, []
    for _ in range(args.samples):
        resolver = RandomResolver(rng, fixed)
        try:
            archdsl.build(program, args.model, resolver=resolver)
            ok += 1
        except ArchError as e:
            failures.append((e, {k: show(v) for k, v in resolver.values.items()}))
    by_error = Counter((str(e.span), e.message) for e, _ in failures)
    blame = Counter((k, v) for _, vals in failures for k, v in vals.items())
    report = {"samples": args.samples, "valid": ok, "invalid": len(failures),
              "errors": [{"where": w, "message": m, "count": c} for (w, m), c in by_error.most_common()],
              "suspects": [{"choice": k, "value": v, "in_failures": c} for (k, v), c in blame.most_common(10)
                           if c == len(failures) or c > 1]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{ok}/{args.samples} sampled architectures are valid")
        for row in report["errors"]:
            print(f"  {row['count']:4d} x {row['where']}: {row['message']}")
        if failures:
            print("values present in the most failures:")
            for row in report["suspects"][:6]:
                print(f"  {row['choice']} = {row['value']}  ({row['in_failures']}/{len(failures)})")
    return 0


def _plain(v):
    from archdsl.frontend.values import Closure, OpValue, show

    return show(v) if isinstance(v, (OpValue, Closure)) else v


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _print_table(info: dict, file: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['model']}  ({file})", title_justify="left")
    for col, justify in (("block", "left"), ("ops", "right"), ("output shape", "left"), ("params", "right"),
                         ("MACs", "right")):
        table.add_column(col, justify=justify)
    for row in info["blocks"]:
        table.add_row(row["name"], str(row["ops"]), str(row["shape"]), f"{row['params']:,}", _human(row["macs"]))
    table.add_section()
    table.add_row("total", str(info["nodes"]), str(info["output_shape"]), f"{info['params']:,}", _human(info["macs"]))
    console = Console()
    console.print(table)
    console.print(f"input {info['input_shape']} -> output {info['output_shape']};  IR hash {info['ir_hash']}")
    if info.get("space"):
        console.print("search space: " + "; ".join(f"{k} = {v} -> {info['choices'][k]}" for k, v in info["space"].items()))


def cmd_compile(args) -> int:
    import torch

    import archdsl
    from codegen.python_source import emit

    _, G = _load(args)
    from archdsl.passes.lower_precision import simulated_notice

    module, results = None, None
    if (args.calibrate or args.load) and not args.weights:
        raise ArchError("--calibrate / --load change the weights, and only --weights saves them",
                        hint="add --weights OUT.pt (the deploy module's state dict, loaded by the emitted module)")
    if args.calibrate and not _deploy_mode(args):
        raise ArchError("--calibrate quantizes for deployment, but the mode is train", hint="add --mode deploy")
    if args.weights:
        module = archdsl.compile(G)
        if args.load:
            from archdsl.ptq import load_weights

            load_weights(module, args.load)
        if args.calibrate:
            from archdsl.ptq import calibrate, calibration_batches

            if not any(d["precision"] == "int8" for _, d in G.nodes(data=True)):
                raise ArchError("--calibrate: the model has no int8 region, so there is nothing to calibrate",
                                hint="put @precision(int8) on the model (or a block) to quantize it after training")

            data = calibration_batches(args.calibrate, G.nodes[G.graph["input"]]["shape"], args.calibrate_batches, 64)
            seen = calibrate(module, data)
            print(f"calibrated {seen} int8 observer(s) on {sum(len(b) for b in data)} samples of {args.calibrate}",
                  file=sys.stderr)
        elif _deploy_mode(args) and not args.load:
            archdsl.api.calibrate(module)  # fresh weights: give int8 observers a range, as compile(mode="deploy")
        if _deploy_mode(args):
            module = module.deploy(select=_names(args.passes), disable=_names(args.disable_pass) or (),
                                   dump_dir=args.dump_ir, log=lambda msg: None)
            G, results = module.archdsl_ir, module.pass_results
    else:
        G, results = _deploy_graph(args, G)
    notice = simulated_notice(results or [])
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    source = emit(G)
    out = Path(args.output)
    out.write_text(source)
    msg = f"wrote {out} ({len(source.splitlines())} lines)"
    if args.weights:
        torch.save(module.state_dict(), args.weights)
        msg += f" and {args.weights}"
    print(msg)
    return 0


def cmd_show(args) -> int:
    from archdsl.ir.show import render

    _, G = _load(args)
    print(render(G, Path(args.output), args.depth))
    return 0


def cmd_bench(args) -> int:
    import statistics

    import torch

    import archdsl

    _, G = _load(args)
    mode = "deploy" if args.backend == "triton" else getattr(args, "mode", "train")
    module = archdsl.compile(G, mode=mode, backend=args.backend,
                             log=lambda msg: print(f"note: {msg}", file=sys.stderr)).eval()
    shape = (args.batch, *G.nodes[G.graph["input"]]["shape"])
    x = torch.randn(shape)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            y = module(x)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"model": G.graph["name"], "input": list(shape), "output": list(y.shape),
                      "median_ms": round(med * 1e3, 3), "runs": args.runs, "threads": torch.get_num_threads()}))
    return 0


def cmd_search(args) -> int:
    import archdsl
    from archdsl.search.report import write_report
    from archdsl.search.spec import override_program
    from archdsl.search.study import run_search

    program = archdsl.parse(Path(args.file))
    override_program(program, args.search, args.objective, args.constraint)
    out = Path(args.out)
    study, spec, data, seconds = run_search(
        program, search=args.search, trials=args.trials, timeout=args.timeout, jobs=args.jobs,
        storage=args.storage, study_name=args.study, sampler=args.sampler, seed=args.seed, out=out,
        fixed=_overrides(program, args.set), progress=not args.quiet)
    summary = write_report(study, out, data, program)
    _print_front(summary, out, seconds)
    return 0


def _print_front(summary: dict, out: Path, seconds: float | None = None) -> None:
    counts = summary["trials"]
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    print(f"study {summary['study']}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned or "
          f"infeasible, {counts.get('fail', 0)} failed{took}")
    for m in summary["pareto"]:
        objs = ", ".join(f"{k} = {v:.4g}" for k, v in m["objectives"].items())
        test = f", test accuracy {m['test_accuracy']:.4f}" if m.get("test_accuracy") is not None else ""
        print(f"  trial {m['number']}: {objs}, params {m.get('params', 0):,}{test} -> {m.get('arch', '-')}")
    if "hypervolume" in summary:
        print(f"hypervolume {summary['hypervolume']:.4g} (reference {summary['hypervolume_reference']})")
    print(f"wrote {out / 'pareto.json'}")


def cmd_report(args) -> int:
    import optuna

    from archdsl.search.report import write_report
    from archdsl.search.study import make_storage

    storage = make_storage(args.storage, Path(args.out)) if args.storage else None
    if storage is None:
        db = Path(args.study_path) / "study.db" if Path(args.study_path).is_dir() else Path(args.study_path)
        if not db.exists():
            raise ArchError(f"no study database at {db}", hint="give the --out folder of a search, or --storage URL")
        storage = f"sqlite:///{db.resolve()}"
        name = args.study
    else:
        name = args.study or args.study_path
    names = optuna.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            raise ArchError(f"the storage holds {len(names)} studies: {', '.join(names)}", hint="pick one with --study")
        name = names[0]
    if name not in names:
        from archdsl.errors import did_you_mean

        raise ArchError(f"no study '{name}' in the storage", hint=did_you_mean(name, names) or ", ".join(names))
    study = optuna.load_study(study_name=name, storage=storage)
    data = None
    if not args.no_test:
        from archdsl.search.data import load

        data = load(study.user_attrs.get("dataset", "mnist1d"), tuple(study.user_attrs.get("dataset_args", ())))
    summary = write_report(study, Path(args.out), data)
    _print_front(summary, Path(args.out))
    return 0


def cmd_ops(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from archdsl.ops.registry import all_ops

    table = Table(title="registered ops")
    table.add_column("op")
    table.add_column("signature")
    table.add_column("what it is")
    for spec in all_ops():
        name = spec.name + (f" ({', '.join(spec.aliases)})" if spec.aliases else "")
        table.add_row(name, spec.signature(), spec.doc.split("\n")[0])
    Console().print(table)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archdsl", description="Architecture-search compiler for .arch files.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("file", help="an .arch file")
        sp.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                        help="override a model parameter or search choice (repeatable)")
        sp.add_argument("--model", help="which model of the file (default: the last one)")

    c = sub.add_parser("check", help="build the IR and report shapes, params and MACs")
    common(c)
    c.add_argument("--json", action="store_true", help="machine-readable summary")
    c.add_argument("--ir", action="store_true", help="print the IR text dump")
    c.add_argument("--spans", action="store_true", help="with --ir: show the source position of each node")
    c.add_argument("--depth", type=int, default=1, help="group the table by this many name levels")
    c.add_argument("--samples", type=int, default=0, help="build N random points of the search space instead")
    c.add_argument("--seed", type=int, default=0, help="with --samples: the random seed")
    _deploy_flags(c)
    c.set_defaults(fn=cmd_check)

    c = sub.add_parser("compile", help="emit a self-contained PyTorch module")
    common(c)
    c.add_argument("-o", "--output", required=True, help="the .py file to write")
    c.add_argument("--weights", help="also save the state dict here (.pt): freshly initialised, or --load's, "
                                     "converted for deploy with --mode deploy")
    c.add_argument("--load", metavar="PT", help="start from these trained weights (a train-mode state dict)")
    c.add_argument("--calibrate", metavar="DATA",
                   help="post-training quantization: run DATA (mnist1d, digits, npz(\"f.npz\"), f.npz) through "
                        "the int8 observers before deploying")
    c.add_argument("--calibrate-batches", type=int, default=10, metavar="N", help="batches of 64 (default 10)")
    _deploy_flags(c)
    c.set_defaults(fn=cmd_compile)

    c = sub.add_parser("show", help="draw the graph (svg/png with graphviz, else dot text)")
    common(c)
    c.add_argument("-o", "--output", required=True, help="graph.svg, graph.png or graph.dot")
    c.add_argument("--depth", type=int, default=0, help="collapse nodes below this many name levels (0: none)")
    c.set_defaults(fn=cmd_show)

    c = sub.add_parser("bench", help="median CPU forward latency of the compiled module")
    common(c)
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--runs", type=int, default=20)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--backend", choices=["torch", "triton"], default="torch",
                   help="triton runs the deploy graph's fused groups as Triton kernels (needs a GPU)")
    c.set_defaults(fn=cmd_bench)

    c = sub.add_parser("search", help="multi-objective architecture search with Optuna (resumable)")
    common(c)
    c.add_argument("--search", help="which search section of the file (default: the last one)")
    c.add_argument("--trials", type=int, help="finished trials the study should reach (default: the file's)")
    c.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    c.add_argument("--jobs", type=int, default=1, help="trials run in parallel by this process")
    c.add_argument("--storage", help="an Optuna storage URL, e.g. postgresql://user@host/db (default: OUT/study.db)")
    c.add_argument("--study", help="study name (default: the search section's name)")
    c.add_argument("--sampler", choices=["nsga2", "tpe", "random", "grid"], help="default: nsga2 (several objectives) or tpe")
    c.add_argument("--seed", type=int, default=None, help="sampler seed (default: the file's `seed =`, else 0)")
    c.add_argument("--out", default="runs/search", help="output folder: pareto.json, plots, .arch and modules")
    c.add_argument("--objective", action="append", default=[], metavar="ITEM",
                   help="replace the objectives, e.g. --objective 'maximize accuracy(epochs = 5)' (repeatable)")
    c.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="add a constraint, e.g. --constraint 'params < 20k' (repeatable)")
    c.add_argument("--quiet", action="store_true", help="no live progress display")
    c.set_defaults(fn=cmd_search)

    c = sub.add_parser("report", help="write pareto.json, plots, .arch files and modules for a study")
    c.add_argument("study_path", help="a search's --out folder or its study.db (or a study name with --storage)")
    c.add_argument("--storage", help="an Optuna storage URL instead of a folder")
    c.add_argument("--study", help="study name, when the storage holds several")
    c.add_argument("--out", default="runs/report")
    c.add_argument("--no-test", action="store_true", help="skip measuring test accuracy of the Pareto members")
    c.set_defaults(fn=cmd_report)

    c = sub.add_parser("ops", help="list the registered ops")
    c.set_defaults(fn=cmd_ops)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ArchError as e:
        print(e.format(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in archdsl, not in the user's file
        if os.environ.get("ARCHDSL_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\n  this is a bug in archdsl; rerun with ARCHDSL_DEBUG=1 "
              f"for the traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
