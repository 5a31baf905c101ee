"""CPU forward latency of every registered (and library) token mixer, relative to a plain 7x7 depthwise conv.

    python benchmarks/mixers.py [--runs 20] [--warmup 3] [--batch 1] [--threads N] [--only dcls,replk]

Each mixer is built the way users get it: a one-op .arch program (`model m() { input x[64, 56, 56]; MIXER }`)
compiled with archdsl.compile, in eval mode under torch.inference_mode. 2-D mixers run on 64 channels at
56 x 56 (the first stage of a ConvNeXt-T-sized network), 1-D mixers on 64 channels x length 1024. Every op is
warmed up with --warmup calls, then timed in --runs interleaved rounds (each round calls every op once, the
baseline included, so changes in the machine's load hit all ops alike); the table gives each op's median
and minimum, and the ratio of its median to the median of the baseline, dwconv(7) of the same
dimensionality, measured in the same rounds. Params and MACs come from the IR (MACs of the FFT mixers leave
the FFTs out, as their op docs say).

The call used per op is its paper's setting where there is one (replk(31, 5): RepLKNet-31B's first stage;
dcls(17, count = 34): ConvNeXt-dcls), else its defaults. Mixers registered later without an entry in CALLS
are benchmarked with their defaults when they have no required arguments. Token mixers of the block library
(LIBRARY) are timed the same way, their library imported.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

import archdsl
from archdsl.ir.graph import totals
from archdsl.ops.registry import REQUIRED, all_ops

BASELINE = "dwconv(7)"
# op name -> the call benchmarked (its paper's setting, or what a user would write)
CALLS = {
    "aff": "aff",
    "cvtattn": "cvtattn",
    "convshare": "convshare",
    "dcls": "dcls(17, count = 34)",
    "dilreparam": "dilreparam(13)",
    "globalfilter": "globalfilter",
    "glmix": "glmix(64, k = 5)",
    "gnconv": "gnconv(3, 7)",
    "grn": "grn",
    "inceptiondw": "inceptiondw(3, 11)",
    "lsconv": "lsconv(7, 3)",
    "mbconv": "mbconv",
    "mhsa": "mhsa(head_dim = 32)",
    "moat": "moat",
    "msaconv": "msaconv(3)",
    "poolmix": "poolmix(3)",
    "randmix": "randmix(seed = 0)",
    "relattn": "relattn",
    "replk": "replk(31, 5)",
    "se": "se",
    "sepconv": "sepconv(7)",
    "sgconv": "sgconv",
    "subpixel": "subpixel(16, r = 2)",
    "wconv": "wconv(64, k = 3)",
    "winattn": "winattn(7)",
}
NOTES = {
    "wconv": "a dense k=3 conv 64->64",
    "subpixel": "upsamples: 16 channels at 2x resolution",
    "replk": "k=31 + k=5 branches, train-time form",
    "dilreparam": "k=13 + dilated branches, train-time form",
    "un": "a normalisation; eval form, folded away at deploy",
    "dico": "DiCo compact channel attention",
    "convshare": "global attention, shared depthwise projections",
    "msaconv": "attention in each 3x3 window + 3x3 conv C -> C",
    "ninformer_gate": "library block; MLP-Mixer gate, token MLP over all positions",
    "gpsa": "library block; ConViT's gated positional attention over all 3136 positions",
    "raft_token_mixer": "library block; vertical + horizontal raft MLPs, own residuals",
    "spartan_spatial": "library block; SpaRTAN's multi-order spatial mixer",
    "spartan_wave": "library block; SpaRTAN's wave channel aggregation",
    "winattn_shifted": "Swin's shifted windows: roll + mask",
    "glmix": "64 slots + pw/dw5/pw local branch",
    "dcls": "17-wide span, 34 taps",
    "randmix": "an N x N matrix over the positions",
    "relattn": "global attention",
    "mhsa": "global attention",
    "cvtattn": "global attention, strided k/v",
    "moat": "MBConv + global attention",
    "mbconv": "a whole inverted-residual block",
    "grn": "a normalisation, not a mixer",
    "se": "a channel gate",
    "globalfilter": "MACs leave out the FFTs",
    "aff": "MACs leave out the FFTs",
    "sgconv": "MACs leave out the FFTs",
}
SHAPES = {2: "64, 56, 56", 1: "64, 1024"}
# Token mixers of the block library (archdsl/lib), timed like the ops: name -> (library, call per input rank);
# library None: another setting of a registered op.
LIBRARY = {"ninformer_gate": ("gating", {2: "ninformer_gate(64, [56, 56])", 1: "ninformer_gate(64, [1024])"}),
           "gpsa": ("attention", {2: "flatten(1) >> gpsa(64, 2, [56, 56]) >> unflatten(1, [56, 56])"}),
           "raft_token_mixer": ("raft", {2: "raft_token_mixer(64, 4, 56, 56)"}),  # 1-D at 1024: a 4096-wide MLP
           "spartan_spatial": ("spartan", {2: "spartan_spatial(64)", 1: "spartan_spatial(64, nd = 1)"}),
           "spartan_wave": ("spartan", {2: "spartan_wave(64)", 1: "spartan_wave(64, nd = 1)"}),
           "winattn_shifted": (None, {2: "winattn(7, shift = 3)", 1: "winattn(7, shift = 3)"})}


def mixer_calls() -> dict[str, str]:
    """Every registered mixer-like op (categories mixer / block / norm, plus mhsa) and library mixer -> the call
    to time."""
    out = {}
    for spec in all_ops():
        if spec.category not in ("mixer", "block", "norm") and spec.name != "mhsa":
            continue
        if spec.name in CALLS:
            out[spec.name] = CALLS[spec.name]
        elif all(a.default is not REQUIRED for a in spec.attrs):
            out[spec.name] = spec.name
        else:
            print(f"note: no representative call for '{spec.name}' (it has required arguments); skipped",
                  file=sys.stderr)
    out.update({name: name for name in LIBRARY})  # the call depends on the input's rank: see table()
    return out


def build(call: str, nd: int):
    """The compiled one-op model, its input and its IR totals; None when the op does not take this input."""
    imports = "".join(f'import "{lib}"\n' for lib in sorted({lib for lib, _ in LIBRARY.values() if lib}))
    src = f"{imports}model m() {{\n  input x[{SHAPES[nd]}]\n  {call}\n}}\n"
    try:
        G = archdsl.build(archdsl.parse(src))
    except archdsl.ArchError as e:
        return None, str(e).splitlines()[0]
    module = archdsl.compile(G).eval()
    return (module, G), None


def call_ms(module, x) -> float:
    t0 = time.perf_counter()
    module(x)
    return (time.perf_counter() - t0) * 1e3


def human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def table(nd: int, calls: dict[str, str], args) -> list[str]:
    spatial_ok = {s.name: nd in s.spatial_dims for s in all_ops()}
    entries, skipped = [("dwconv", BASELINE)], []
    for name, call in calls.items():
        if name in LIBRARY and nd in LIBRARY[name][1]:
            entries.append((name, LIBRARY[name][1][nd]))
        elif spatial_ok.get(name, False) and name != "dwconv":
            entries.append((name, call))
    built = []
    for name, call in entries:
        b, err = build(call, nd)
        if b is None:
            skipped.append(f"`{call}`: {err}")
        else:
            built.append((name, call, *b))
    x = torch.randn(args.batch, *built[0][3].nodes[built[0][3].graph["input"]]["shape"])
    times = {name: [] for name, *_ in built}
    with torch.inference_mode():
        for _ in range(20):  # the first convolutions of a process pay one-off library set-up
            built[0][2](x)
        for name, call, module, G in built:
            for _ in range(args.warmup):
                module(x)
        # Interleaved rounds: every op once per round, so load changes on the machine hit all ops alike.
        for _ in range(args.runs):
            for name, call, module, G in built:
                times[name].append(call_ms(module, x))
    base = statistics.median(times["dwconv"])
    lines = [f"### {nd}-D mixers: input {args.batch} x {SHAPES[nd].replace(', ', ' x ')}",
             "",
             "| op | call | params | MACs / sample | output | median ms | min ms | x dwconv(7) | note |",
             "|---|---|---:|---:|---|---:|---:|---:|---|"]
    for name, call, module, G in built:
        t = totals(G)
        ms = statistics.median(times[name])
        out_shape = list(G.nodes[G.graph["output"]]["shape"])
        note = "baseline" if name == "dwconv" else NOTES.get(name, "")
        lines.append(f"| {name} | `{call}` | {t['params']:,} | {human(t['macs'])} | {out_shape} | {ms:.3f} | "
                     f"{min(times[name]):.3f} | {ms / base:.2f} | {note} |")
    for s in skipped:
        lines.append(f"\nskipped: {s}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="timed calls per op (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per op first")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--dims", default="2,1", help="which tables: 2 (64 x 56 x 56), 1 (64 x 1024), or both")
    ap.add_argument("--only", default="", help="comma-separated op names to time (default: all mixers)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    calls = mixer_calls()
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        calls = {k: v for k, v in calls.items() if k in wanted}
    print("# Mixer forward latency on CPU (archdsl)")
    print()
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}  ")
    print(f"Median of {args.runs} forward calls (interleaved rounds over all ops) after {args.warmup} warm-up "
          f"calls, batch {args.batch}, eval mode, torch.inference_mode; each op compiled from a one-op .arch "
          f"program with archdsl.compile. Ratio: the op's median over the median of `{BASELINE}` in the same "
          f"rounds.")
    for nd in [int(d) for d in args.dims.split(",") if d.strip()]:
        print()
        print("\n".join(table(nd, calls, args)), flush=True)


if __name__ == "__main__":
    main()
