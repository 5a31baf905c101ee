"""Deploy latency and model size at fp32, bf16 and int8, against fp32 and against torch.ao's own int8, all
measured in the same run, interleaved.

    python benchmarks/precision.py --models conv_stack,resnet50,convnext_t,mnist1d_cnn --batches 8 --size 112
    python benchmarks/precision.py --models mnist1d_cnn --batches 1,256 --runs 50

Each model is compiled with `@precision(P)` on the whole model, given one train-mode pass over a fixed
N(0, 1) batch (`--calib` samples; every variant the same pass, so the same BatchNorm statistics), its int8
observers then calibrated on that batch in eval mode (archdsl.ptq.calibrate), and deployed: bf16 runs in
bf16 weights and activations, int8 runs on PyTorch's quantized kernels where the x86 backend has one
(lower_precision's notice names the rest). The
peer: the fp32 deploy graph (without group_fusion, so torch sees plain nn modules) quantized by torch.ao
directly (FX graph mode, `prepare_fx` / `convert_fx` with the x86 default qconfig), calibrated on the same
batch. Size: the IR's bytes at each node's precision, and the bytes the deploy module's state_dict holds.
Deviation: the largest difference from the fp32 deploy output, relative to its largest magnitude (untrained
weights). `--compile` adds torch.compile of each deploy module.
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch
from deploy import MODELS, machine, measure

import archdsl
from archdsl.ir.cost import size_bytes
from archdsl.ptq import calibrate

PRECISIONS = ("fp32", "bf16", "int8")
HERE_MODELS = Path(__file__).resolve().parent / "models"
KERNELS = ("QConv", "QLinear", "QAdd", "Int8Linear", "Int8Conv")


def model_file(name: str) -> Path:
    for folder in (MODELS, HERE_MODELS):
        if (folder / f"{name}.arch").exists():
            return folder / f"{name}.arch"
    raise SystemExit(f"unknown model '{name}' (looked in {MODELS} and {HERE_MODELS})")


def variant(file: Path, precision: str, size: int | None, x_cal: torch.Tensor):
    """(train IR, calibrated train module, deploy module) of the model with every node at `precision`."""
    text = file.read_text()
    if precision != "fp32":
        text = re.sub(r"^model ", f"@precision({precision})\nmodel ", text, count=1, flags=re.M)
    program = archdsl.parse(text, file=str(file))
    params = {p.name for p in program.model().params}
    torch.manual_seed(0)
    module = archdsl.compile(program, **({"size": size} if size and "size" in params else {}))
    with torch.no_grad():
        module.train()(x_cal)  # the same BatchNorm statistics for every variant
    calibrate(module, [x_cal])  # int8: observers see the eval-mode activations, as torch.ao's calibration does
    deploy = module.eval().deploy(log=lambda msg: None)  # the simulated nodes are counted from the pass result
    return module.archdsl_ir, module, deploy


def torch_ao_peer(module, x_cal):
    """The fp32 model quantized by torch.ao itself (x86 backend), from its plain deploy graph."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    from archdsl.ops.norms import ChannelLayerNorm

    plain = as_torch_modules(module.deploy(disable=["group_fusion"], log=lambda msg: None))
    # LayerNorm over channels: a leaf torch.ao leaves in fp32 (it branches on the input's rank, which FX
    # cannot trace), as archdsl's int8 deploy does
    custom = PrepareCustomConfig().set_non_traceable_module_classes([ChannelLayerNorm])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(plain, get_default_qconfig_mapping("x86"), (x_cal,), prepare_custom_config=custom)
        with torch.no_grad():
            prepared(x_cal)
        return convert_fx(prepared)


def as_torch_modules(deploy):
    """archdsl's channel-axis Linear (nn.Linear on (N, C), a matmul over dim 1 otherwise) as the torch module
    torch.ao knows: nn.Linear, or a 1x1 nn.Conv1d / nn.Conv2d."""
    from torch import nn

    G = deploy.archdsl_ir
    for node, d in G.nodes(data=True):
        if d["op"] != "linear":
            continue
        old = deploy.get_submodule(node)
        rank = len(G.nodes[next(iter(G.predecessors(node)))]["shape"])
        new = (nn.Linear, nn.Conv1d, nn.Conv2d)[rank - 1](old.in_features, old.out_features,
                                                          *([1] if rank > 1 else []), bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(old.weight.reshape(new.weight.shape))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        parent, _, leaf = node.rpartition(".")
        setattr(deploy.get_submodule(parent) if parent else deploy, leaf, new)
    return deploy


def state_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if torch.is_tensor(t))


def bench(file: Path, batch: int, size: int, runs: int, warmup: int, calib: int, compiled: bool,
          precisions=PRECISIONS) -> list[dict]:
    program = archdsl.parse(file.read_text(), file=str(file))
    G0 = archdsl.build(program, **({"size": size} if size and "size" in {p.name for p in program.model().params} else {}))
    shape = G0.nodes[G0.graph["input"]]["shape"]
    x_cal = torch.randn(calib, *shape, generator=torch.Generator().manual_seed(0))
    built = {p: variant(file, p, size, x_cal) for p in precisions}
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    modules = {(p, False): built[p][2] for p in precisions}
    try:
        modules["torch.ao", False] = torch_ao_peer(built["fp32"][1], x_cal)
    except Exception as e:  # noqa: BLE001 - a model torch.ao cannot trace gets no peer column, and says why
        print(f"  ({file.stem}: no torch.ao peer: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if compiled:
        modules.update({(p, True): torch.compile(built[p][2]) for p in precisions})
    with torch.inference_mode():
        outs = {key: m(x).float() for key, m in modules.items()}  # torch.compile compiles here
    ms = {key: t * 1e3 for key, t in measure(modules, x, warmup - 1, runs).items()}
    rows = []
    ref = outs["fp32", False]
    for p in [*precisions, "torch.ao"]:
        if (p, False) not in modules:
            continue
        deploy = modules[p, False]
        G = built[p][0] if p in built else built.get("int8", built["fp32"])[0]
        simulated = next((r.declined for r in getattr(deploy, "pass_results", []) if r.name == "lower_precision"), [])
        rows.append(dict(model=file.stem, batch=batch, precision=p, ms=ms[p, False],
                         speedup=ms["fp32", False] / ms[p, False],
                         vs_peer=ms["torch.ao", False] / ms[p, False] if ("torch.ao", False) in ms else None,
                         cms=ms.get((p, True)), cspeedup=ms["fp32", True] / ms[p, True] if (p, True) in ms else None,
                         ir_bytes=size_bytes(G), state_bytes=state_bytes(deploy),
                         deviation=((outs[p, False] - ref).abs().max() / ref.abs().max()).item(),
                         kernels=sum(type(k).__name__ in KERNELS for k in deploy.modules()),
                         simulated=len(simulated)))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="conv_stack,resnet50,convnext_t,mnist1d_cnn",
                    help="comma-separated names in searchspaces/models or benchmarks/models")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224, help="input size for models with a `size` parameter")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--calib", type=int, default=8, help="calibration batch size")
    ap.add_argument("--compile", action="store_true", help="add torch.compile columns")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated, fp32 always included (the baseline); e.g. fp32,int8 where bf16 is "
                         "emulated and slow (a CPU without AVX-512 BF16)")
    args = ap.parse_args(argv)
    precisions = tuple(p for p in PRECISIONS if p == "fp32" or p in args.precisions.split(","))
    print(f"machine: {machine()}, quantized engine {torch.backends.quantized.engine}\n")
    print("| model | batch | precision | deploy ms | x fp32 speed | x torch.ao speed | compiled ms | x compiled fp32 "
          "| IR size (bytes) | state_dict bytes | int8 kernels | simulated nodes | max deviation from fp32 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            rows = bench(model_file(name), batch, args.size, args.runs, args.warmup, args.calib, args.compile,
                         precisions)
            for r in rows:
                compiled = (f"{r['cms']:.3f} | {r['cspeedup']:.2f}" if r["cms"] is not None else "- | -")
                peer = f"{r['vs_peer']:.2f}" if r["vs_peer"] is not None else "-"
                print(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['ms']:.3f} | {r['speedup']:.2f} | "
                      f"{peer} | {compiled} | {r['ir_bytes']:,} | {r['state_bytes']:,} | {r['kernels']} | "
                      f"{r['simulated']} | {r['deviation']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
