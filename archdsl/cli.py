"""The `archdsl` command: check, compile, show, bench, ops (search, worker and report: cli_search.py).

Every error in a user's file or command line is printed as ``file:line:col: error: ...`` with the line, a
caret and a hint, and exits with status 2. A Python traceback means a bug in archdsl (status 3); set
ARCHDSL_DEBUG=1 to see it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from archdsl.cli_args import count as _count, overrides as _overrides
from archdsl.cli_ops import cmd_ops
from archdsl.cli_search import add_search_commands
from archdsl.errors import ArchError
from archdsl.outputs import output_dir, output_file, write


def _load(args):
    import archdsl

    program = _scaled(archdsl.parse(Path(args.file)), args)
    graph = archdsl.build(program, args.model, **_overrides(program, args.set))
    return program, graph


def _scaled(program, args):
    from archdsl.frontend.scaling import with_scale

    return with_scale(program, args.model, args.scale) if args.scale else program


def cmd_check(args) -> int:
    from archdsl.ir.cost import block_table, summary
    from archdsl.ir.printer import dump, ir_hash

    if args.samples:
        return _check_samples(args)
    _deploy_mode(args)  # option errors before the work
    _, G = _load(args)
    G, results = _deploy_graph(args, G)
    info = summary(G) | {"ir_hash": ir_hash(G), "blocks": block_table(G, args.depth), "mode": args.mode}
    if results is not None:
        info["passes"] = [{"pass": r.name, "changed": len(r.changed),
                           "declined": [{"node": n, "reason": why} for n, why in r.declined]} for r in results]
    if G.graph.get("scaling"):
        info["scaling"] = G.graph["scaling"]
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
    if args.dump_ir is not None:
        output_dir(args.dump_ir, "--dump-ir")
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
    from archdsl.search.trial_choices import RandomResolver

    program = _scaled(archdsl.parse(Path(args.file)), args)
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
    # markup off: a list in a choice's source text, `f(dim, [h, w])`, would read as a rich style tag and vanish
    console.print(f"input {info['input_shape']} -> output {info['output_shape']};  IR hash {info['ir_hash']}",
                  markup=False)
    if info.get("scaling"):
        sc = info["scaling"]
        console.print(f"scaled by rule {sc['rule']} (s = {sc['s']:.4g}) to {_human(sc['macs'])} of "
                      f"{_human(sc['budget'])} MACs: {_values(sc['values'])}; the next step "
                      f"({_values(sc['next']['values'])}) has "
                      f"{_human(sc['next']['macs'])}", markup=False)
    if info.get("space"):
        dims = "; ".join(f"{k} = {v} -> {info['choices'][k]}" for k, v in info["space"].items())
        console.print("search space: " + dims, markup=False)


def _values(values: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in values.items())


def cmd_compile(args) -> int:
    import torch

    import archdsl
    from codegen.python_source import emit

    out = output_file(args.output, "-o", keep=[args.file])  # before the work: a bad path should not cost a build
    if args.backend == "triton":  # as archdsl.compile(backend="triton"): Triton takes large kernels itself
        if args.mode != "deploy":
            raise ArchError("--backend triton emits the deploy graph (its kernels are inference-only)",
                            hint="add --mode deploy")
        args.disable_pass = list(args.disable_pass) + ["select_kernels"]
    weights = output_file(args.weights, "--weights", keep=[args.file, out]) if args.weights is not None else None
    _deploy_mode(args)
    _, G = _load(args)
    from archdsl.passes.lower_precision import simulated_notice

    module, results = None, None
    if (args.calibrate or args.load or args.act_bits != 8) and not args.weights:
        raise ArchError("--calibrate / --load / --act-bits change the weights, and only --weights saves them",
                        hint="add --weights OUT.pt (the deploy module's state dict, loaded by the emitted module)")
    if args.calibrate and not _deploy_mode(args):
        raise ArchError("--calibrate quantizes for deployment, but the mode is train", hint="add --mode deploy")
    if weights:
        module = archdsl.compile(G)
        if args.load:
            from archdsl.ptq import load_weights

            load_weights(module, args.load)
        if args.act_bits != 8:
            from archdsl.quant import set_activation_bits

            set_activation_bits(module, args.act_bits)
            G = module.archdsl_ir  # it records the bits: a train-mode file emitted from it keeps them
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
    source = emit(G, backend=args.backend)
    write(out, source, "-o")
    msg = f"wrote {out} ({len(source.splitlines())} lines)"
    if weights:
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        write(weights, buffer.getvalue(), "--weights")
        msg += f" and {weights}"
    print(msg)
    return 0


def cmd_show(args) -> int:
    from archdsl.ir.show import render

    out = output_file(args.output, "-o", keep=[args.file])
    _, G = _load(args)
    print(render(G, out, args.depth))
    return 0


def cmd_bench(args) -> int:
    import statistics

    import torch

    import archdsl
    from archdsl.ir.memory import check

    _, G = _load(args)
    check(G, batch=args.batch, what=f"run the model at batch {args.batch}")
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archdsl", description="Architecture-search compiler for .arch files.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("file", help="an .arch file")
        sp.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                        help="override a model parameter or search choice (repeatable)")
        sp.add_argument("--model", help="which model of the file (default: the last one)")
        sp.add_argument("--scale", metavar="ARGS", help="scale the model to a MAC budget, as @scale(ARGS) before it "
                        "would: \"macs = 2M, rule = fast, width = dims, depth = depths\"")

    c = sub.add_parser("check", help="build the IR and report shapes, params and MACs")
    common(c)
    c.add_argument("--json", action="store_true", help="machine-readable summary")
    c.add_argument("--ir", action="store_true", help="print the IR text dump")
    c.add_argument("--spans", action="store_true", help="with --ir: show the source position of each node")
    c.add_argument("--depth", type=_count(0), default=1, help="group the table by this many name levels")
    c.add_argument("--samples", type=_count(0), default=0, help="build N random points of the search space instead")
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
    c.add_argument("--act-bits", type=int, choices=[7, 8], default=8,
                   help="int8 activations on 7 bits (0..127, as torch.ao's reduce_range): the int8 kernels then "
                        "run exactly on CPUs without AVX-512 VNNI (with --calibrate, or --load of a model trained "
                        "with accuracy(act_bits = 7))")
    c.add_argument("--backend", choices=["torch", "triton"], default="torch",
                   help="triton (with --mode deploy): the fused groups run as archdsl's Triton kernels, imported")
    _deploy_flags(c)
    c.set_defaults(fn=cmd_compile)

    c = sub.add_parser("show", help="draw the graph (svg/png with graphviz, else dot text)")
    common(c)
    c.add_argument("-o", "--output", required=True, help="graph.svg, graph.png or graph.dot")
    c.add_argument("--depth", type=_count(0), default=0, help="collapse nodes below this many name levels (0: none)")
    c.set_defaults(fn=cmd_show)

    c = sub.add_parser("bench", help="median CPU forward latency of the compiled module")
    common(c)
    c.add_argument("--batch", type=_count(1), default=1, help="samples per forward pass (1 or more)")
    c.add_argument("--runs", type=_count(1), default=20, help="timed forward passes (1 or more)")
    c.add_argument("--warmup", type=_count(0), default=3, help="untimed forward passes first (0 or more)")
    c.add_argument("--backend", choices=["torch", "triton"], default="torch",
                   help="triton runs the deploy graph's fused groups as Triton kernels (needs a GPU)")
    c.set_defaults(fn=cmd_bench)

    add_search_commands(sub, common)

    c = sub.add_parser("ops", help="list the registered ops; `ops NAME` prints one op (or library block) in full")
    c.add_argument("name", nargs="?", help="an op or a block of the library (archdsl/lib)")
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
    except OSError as e:  # the machine, not archdsl: a full disk, a read-only or vanished directory
        if e.filename is None or os.environ.get("ARCHDSL_DEBUG"):
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug in archdsl, not in the user's file
        if os.environ.get("ARCHDSL_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\n  this is a bug in archdsl; rerun with ARCHDSL_DEBUG=1 "
              f"for the traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
