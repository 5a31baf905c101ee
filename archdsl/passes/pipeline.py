"""The deploy pipeline: a flat, named, ordered list of passes, the IR verified after each one.

    archdsl compile net.arch --mode deploy -o net.py --dump-ir ir/   # ir/01_eliminate_identities.ir, ...
    archdsl check net.arch --mode deploy --passes fold_bn,group_fusion --json

Each pass is ``pass_name(G, weights) -> PassResult`` (archdsl/passes/result.py), one per module.
"""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from archdsl.errors import ArchError, did_you_mean
from archdsl.ir.printer import dump
from archdsl.ir.verify import verify
from archdsl.passes.cse import cse
from archdsl.passes.eliminate_identities import eliminate_identities
from archdsl.passes.fold_affine import fold_affine
from archdsl.passes.fold_bn import fold_bn
from archdsl.passes.fold_grn_bias import fold_grn_bias
from archdsl.passes.fold_kernels import fold_kernels
from archdsl.passes.fold_un import fold_un
from archdsl.passes.group_fusion import group_fusion
from archdsl.passes.lower_precision import lower_precision
from archdsl.passes.reparam_branches import reparam_branches
from archdsl.passes.result import PassResult
from archdsl.passes.select_kernels import select_kernels
from archdsl.passes.sparse_kernels import sparse_kernels
from archdsl.passes.weights import check_weights

DEPLOY_PIPELINE = [
    eliminate_identities,  # identity, dropout, droppath -> x; dead nodes go
    fold_kernels,          # dcls, wconv -> conv (dense kernel)
    reparam_branches,      # replk, dilreparam, add(conv [+ bn] branches of x, x) -> conv
    fold_bn,               # conv >> bn, bn >> padding-free conv -> conv (bias)
    fold_un,               # un >> linear, linear >> un -> linear (bias)
    fold_affine,           # conv >> layerscale | resscale | scale -> conv
    fold_grn_bias,         # grn >> linear -> grn(bias = false) >> linear (bias + W beta)
    cse,                   # f(x) twice -> once
    select_kernels,        # large depthwise conv -> dwconv_cl (channels-last, oneDNN)
    sparse_kernels,        # magnitude-pruned 1x1 conv -> CSR matmul when sparse enough, else dense conv
    lower_precision,       # bf16/fp16 -> that dtype + casts; int8 -> int8 kernels or quantize-dequantize
    group_fusion,          # conv/linear/norm + elementwise epilogue -> fused
]
PASSES = {p.__name__: p for p in DEPLOY_PIPELINE}


def describe() -> list[tuple[str, str]]:
    """(name, one-line summary) of each pass, in pipeline order (`--list-passes`)."""
    return [(p.__name__, (p.__doc__ or "").strip().splitlines()[0]) for p in DEPLOY_PIPELINE]


def selected(select=None, disable=()) -> list:
    """The passes to run, in pipeline order: all of them, or `select`, minus `disable` (names checked)."""
    for name in [*(select or ()), *disable]:
        if name not in PASSES:
            raise ArchError(f"unknown pass '{name}'",
                            hint=did_you_mean(name, PASSES) or f"passes: {', '.join(PASSES)}")
    wanted = set(select) if select else set(PASSES)
    return [p for p in DEPLOY_PIPELINE if p.__name__ in wanted and p.__name__ not in set(disable)]


def run_pipeline(G: nx.DiGraph, weights: dict | None, select=None, disable=(), dump_dir=None, log=None):
    """Run the (selected) deploy passes on a copy of G and of the weights dict.

    Returns ``(graph, weights, results)``: the deploy IR, its weights (None when none were given: then only
    the structure is rewritten) and one PassResult per pass run. With `dump_dir`, writes ``NN_pass.ir`` (NN:
    the pass's place in DEPLOY_PIPELINE) after each pass; `log` receives one line per pass and per decline.
    """
    G = G.copy()  # node and edge dicts are copied; passes replace attrs, never mutate them
    weights = {n: dict(state) for n, state in weights.items()} if weights is not None else None
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
    results = []
    for fn in selected(select, disable):
        result = fn(G, weights) or PassResult()
        result.name = fn.__name__
        try:
            verify(G)
            if weights is not None:
                check_weights(G, weights)
        except ArchError as e:
            raise ArchError(f"after pass {fn.__name__}: {e.message}", e.span,
                            hint="this is a bug in the pass; rerun with --disable-pass " + fn.__name__) from None
        if dump_dir is not None:
            index = DEPLOY_PIPELINE.index(fn) + 1
            (Path(dump_dir) / f"{index:02d}_{fn.__name__}.ir").write_text(dump(G))
        if log is not None:
            log(result.summary())
            for node, reason in result.declined:
                log(f"  declined {node}: {reason}")
        results.append(result)
    return G, weights, results
