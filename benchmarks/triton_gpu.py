"""Our generated Triton kernels on one NVIDIA GPU: correctness first, then median latency against eager PyTorch
(cuDNN / cuBLAS) and torch.compile (default and mode="max-autotune"), per kernel and for a whole ConvNeXt block
(N=64, 96 x 56 x 56, bf16, channels-last), each also as a fraction of the copy bandwidth measured in the same run.

    python benchmarks/triton_gpu.py [--budget 420] [--batch 64] [--size 56] [--out results.json]

Writes a markdown table to stdout and JSON to $OUT/triton_gpu.json when $OUT is set, else to
benchmarks/results/triton_gpu.json. Without a GPU it says so and exits 0. A failure to compile or run one kernel
or one torch.compile mode is recorded in the JSON and the table, and the run goes on. Phases stop starting new
work when the time budget (default 7 minutes) is spent; what was skipped says so.

Bandwidth: "bytes" of a case is the least memory traffic its op needs (each input read once, output written
once, weights ignored); "% copy" = bytes / time / (copy bandwidth), the copy bandwidth being 2 x size / time of
a plain 512 MiB tensor copy. Compute-bound cases (large depthwise kernels) stay well below 100% by design.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: this script measures compiled kernels only
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


# ---- the ConvNeXt block -------------------------------------------------------------------------------------

class EagerConvNeXtBlock(torch.nn.Module):
    """The ConvNeXt block as the reference implementation writes it (dwconv 7x7 -> LN -> 4x MLP -> layer scale
    -> residual), channels-last in between."""

    def __init__(self, dim=96):
        super().__init__()
        self.dwconv = torch.nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = torch.nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = torch.nn.Linear(dim, 4 * dim)
        self.act = torch.nn.GELU()
        self.pwconv2 = torch.nn.Linear(4 * dim, dim)
        self.gamma = torch.nn.Parameter(torch.full((dim,), 0.5))  # not 1e-6: the branch must show in the check

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


CONVNEXT_MEMBERS = [("dwconv", {"k": 7}, (), "dw"), ("ln", {"eps": 1e-6}, (), "ln"),
                    ("linear", {"out": 384}, (), "fc1"), ("gelu",), ("linear", {"out": 96}, (), "fc2"),
                    ("layerscale", {}, (), "ls"), ("add", {}, (0,))]


def block_weights(block):
    return {"dw": {"weight": block.dwconv.weight, "bias": block.dwconv.bias},
            "ln": {"weight": block.norm.weight, "bias": block.norm.bias},
            "fc1": {"weight": block.pwconv1.weight, "bias": block.pwconv1.bias},
            "fc2": {"weight": block.pwconv2.weight, "bias": block.pwconv2.bias}, "ls": {"gamma": block.gamma}}


def block_cases(device, dtype, n=64, size=56):
    from codegen.triton.lower import lower_group

    torch.manual_seed(0)
    block = EagerConvNeXtBlock().to(device=device, dtype=dtype).eval().requires_grad_(False)
    group = lower_group(CONVNEXT_MEMBERS, [(96, size, size)], precision="bf16", name="convnext_block")
    log("ConvNeXt block plan:\n" + group.describe())
    weights = block_weights(block)
    out = []
    for lay, fmt in (("channels-last", torch.channels_last), ("channels-first", torch.contiguous_format)):
        x = torch.randn(n, 96, size, size, device=device, dtype=dtype).contiguous(memory_format=fmt)
        ours = lambda x=x: group(x, weights=weights)  # noqa: E731
        eager = lambda x=x: block(x)  # noqa: E731
        out.append((f"convnext block ({lay})", ours, eager, 2 * x.numel() * x.element_size()))
    return out


# ---- measuring ----------------------------------------------------------------------------------------------

def bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth(device) -> float:
    """Bytes per ms of a plain copy (read + write) of 512 MiB."""
    src = torch.empty(256 * 2 ** 20, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms


def compare(got, want, dtype):
    from codegen.triton.common import close

    ok, worst = close(got.float(), want.float(), dtype)
    return ok, worst


def correctness(device, budget_end):
    """Each kernel file's self-test (odd shapes, NaN-poisoned outputs, float64 references) in fp32 / bf16 / fp16,
    and lowered groups against the op registry's float64 references; first autotune config only."""
    from codegen.triton import dwconv, elementwise, matmul, mlp, norm
    from codegen.triton.common import single_config

    results = []
    with single_config():
        for mod in (elementwise, norm, dwconv, matmul, mlp):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                name = f"{mod.__name__.rsplit('.', 1)[-1]} {str(dtype)[6:]}"
                if time.time() > budget_end:
                    results.append({"name": name, "ok": None, "error": "skipped: time budget"})
                    continue
                try:
                    worst = mod.self_test(device, dtype)
                    results.append({"name": name, "ok": True, "worst_over_tolerance": worst})
                except Exception as e:
                    results.append({"name": name, "ok": False, "error": short_error(e)})
                    traceback.print_exc(limit=4)
                log(f"correctness {name}: {results[-1].get('ok')} {results[-1].get('error', '')}")
        try:
            checks = group_checks(device)
        except Exception as e:
            checks = [("lowered groups", lambda e=e: (_ for _ in ()).throw(e))]
        for name, fn in checks:
            try:
                ok, worst = fn()
                results.append({"name": name, "ok": ok, "worst_over_tolerance": worst})
            except Exception as e:
                results.append({"name": name, "ok": False, "error": short_error(e)})
                traceback.print_exc(limit=4)
            log(f"correctness {name}: {results[-1].get('ok')} {results[-1].get('error', '')}")
    return results


def group_checks(device):
    """Small ConvNeXt / MetaFormer groups through lower_group against the registry's references."""
    import copy

    from archdsl.ops.registry import get_op
    from codegen.triton.lower import lower_group, member_modules
    from codegen.triton.plan import as_member

    def check(members, shapes, dtype, channels_last):
        modules = member_modules(members, shapes, dtype)
        xs = [torch.randn(2, *s).to(dtype) for s in shapes]
        want = xs[0].double()
        for i, m in enumerate(members):
            m = as_member(m, i)
            want = get_op(m.op).reference(copy.deepcopy(modules[m.name]).double(), want,
                                          *[xs[j].double() for j in m.inputs])
        dev = [x.to(device) for x in xs]
        if channels_last:
            dev = [x.contiguous(memory_format=torch.channels_last) for x in dev]
        weights = {n: {k: v.detach().to(device) for k, v in {**dict(mod.named_parameters()),
                                                              **dict(mod.named_buffers())}.items()}
                   for n, mod in modules.items()}
        group = lower_group(members, shapes, precision={torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype])
        return compare(group(*dev, weights=weights).cpu(), want, dtype)

    small = [("dwconv", {"k": 7}, (), "dw"), ("ln", {"eps": 1e-6}, (), "ln"), ("linear", {"out": 20}, (), "fc1"),
             ("gelu",), ("linear", {"out": 5}, (), "fc2"), ("layerscale", {}, (), "ls"), ("add", {}, (0,))]
    meta = [("ln", {"bias": False}), ("linear", {"out": 20}), ("starrelu",), ("linear", {"out": 5}),
            ("resscale",), ("add", {}, (1,))]
    return [("group convnext 5x7x9 fp32 channels-first", lambda: check(small, [(5, 7, 9)], torch.float32, False)),
            ("group convnext 5x7x9 bf16 channels-last", lambda: check(small, [(5, 7, 9)], torch.bfloat16, True)),
            ("group metaformer mlp 5x7x9 fp32", lambda: check(meta, [(5, 7, 9), (5, 7, 9)], torch.float32, False))]


def all_cases(device, dtype, n, size):
    from codegen.triton import dwconv, elementwise, matmul, mlp, norm

    cases = []
    sources = [lambda: block_cases(device, dtype, n, size)]
    sources += [lambda m=m: m.benchmark_cases(device, dtype, n, size) for m in (dwconv, norm, matmul, mlp, elementwise)]
    for source in sources:
        try:
            cases += source()
        except Exception as e:  # building the inputs failed: record and go on
            cases.append((f"(case setup failed: {short_error(e)})", None, None, 0))
    return cases


MODES = ("default", "max-autotune")
COMPILE_COST_S = {"default": 30.0, "max-autotune": 120.0}  # do not start one with less time than this left


def run(args, device="cuda") -> dict:
    import triton

    dtype = torch.bfloat16
    budget_end = T0 + args.budget
    props = torch.cuda.get_device_properties(0)
    result = {"gpu": torch.cuda.get_device_name(0),
              "capability": ".".join(map(str, torch.cuda.get_device_capability())),
              "memory_gib": round(props.total_memory / 2 ** 30, 1), "torch": torch.__version__,
              "triton": triton.__version__, "python": platform.python_version(), "dtype": "bf16",
              "shape": [args.batch, 96, args.size, args.size]}
    log(f"GPU: {result['gpu']} (sm {result['capability']}), torch {torch.__version__}, triton {triton.__version__}")
    result["copy_gbps"] = copy_bandwidth(device) / 1e6
    log(f"copy bandwidth: {result['copy_gbps']:.0f} GB/s")

    result["correctness"] = correctness(device, T0 + args.budget * 0.35)

    rows = []
    for name, ours, eager, nbytes in all_cases(device, dtype, args.batch, args.size):
        row = {"name": name, "bytes": nbytes, "ms": {}, "errors": {}}
        rows.append(row)
        if ours is None:
            row["errors"]["setup"] = name
            continue
        row["_fns"] = (ours, eager)
        for label, fn in (("ours", ours), ("eager", eager)):
            if time.time() > budget_end:
                row["errors"][label] = "skipped: time budget"
                continue
            try:
                t = time.time()
                fn()
                torch.cuda.synchronize()
                if label == "ours":
                    row["first_call_s"] = round(time.time() - t, 2)  # compile + autotune
                row["ms"][label] = bench(fn)
            except Exception as e:
                row["errors"][label] = short_error(e)
                traceback.print_exc(limit=4)
        if "ours" in row["ms"] and "eager" in row["ms"]:
            try:
                ok, worst = compare(ours(), eager(), dtype)
                row["matches_eager"], row["worst_over_tolerance"] = ok, round(worst, 3)
            except Exception as e:
                row["errors"]["compare"] = short_error(e)
        log(f"{name}: {row['ms']} {row['errors'] or ''}")

    # torch.compile: the block in both modes first (it matters most), then the kernels in default mode, then in
    # max-autotune; a compile is only started when its typical duration still fits the budget.
    blocks = [r for r in rows if "_fns" in r and r["name"].startswith("convnext block")]
    others = [r for r in rows if "_fns" in r and r not in blocks]
    order = [(r, m) for r in blocks for m in MODES] + [(r, m) for m in MODES for r in others]
    for row, mode in order:
        if budget_end - time.time() < COMPILE_COST_S[mode]:
            row["errors"][mode] = "skipped: time budget"
            continue
        try:
            torch._dynamo.reset()
            eager = row["_fns"][1]
            compiled = torch.compile(eager) if mode == "default" else torch.compile(eager, mode=mode)
            compiled()
            torch.cuda.synchronize()
            row["ms"][f"compile-{mode}"] = bench(compiled)
        except Exception as e:
            row["errors"][mode] = short_error(e)
            traceback.print_exc(limit=4)
        log(f"{row['name']} torch.compile {mode}: {row['ms'].get(f'compile-{mode}')} {row['errors'].get(mode, '')}")

    for row in rows:
        row.pop("_fns", None)
        row["copy_fraction"] = {k: (row["bytes"] / (v * 1e-3) / 1e9) / result["copy_gbps"]
                                for k, v in row["ms"].items() if v and row["bytes"]}
    result["cases"] = rows
    result["elapsed_s"] = round(time.time() - T0, 1)
    return result


def table(result) -> str:
    cols = ("ours", "eager", "compile-default", "compile-max-autotune")
    lines = [f"### archdsl Triton kernels on {result['gpu']} (sm {result['capability']}), bf16, "
             f"torch {result['torch']}, triton {result['triton']}; copy bandwidth {result['copy_gbps']:.0f} GB/s", "",
             "| case | " + " | ".join(f"{c} ms" for c in cols) + " | eager / ours | " +
             " | ".join(f"{c} % copy" for c in cols) + " | notes |",
             "|" + "---|" * (2 * len(cols) + 3)]
    for row in result["cases"]:
        ms, frac = row["ms"], row.get("copy_fraction", {})
        speed = f"{ms['eager'] / ms['ours']:.2f}x" if "ours" in ms and "eager" in ms else "-"
        notes = "; ".join(f"{k}: {v}" for k, v in row["errors"].items())
        if row.get("matches_eager") is False:
            notes = f"MISMATCH vs eager ({row.get('worst_over_tolerance')} x tol); " + notes
        lines.append(f"| {row['name']} | " + " | ".join(f"{ms[c]:.3f}" if c in ms else "-" for c in cols) +
                     f" | {speed} | " + " | ".join(f"{100 * frac[c]:.0f}%" if c in frac else "-" for c in cols) +
                     f" | {notes} |")
    bad = [c for c in result["correctness"] if c.get("ok") is False]
    lines += ["", f"correctness: {sum(1 for c in result['correctness'] if c.get('ok'))} passed, {len(bad)} failed"
              + "".join(f"\n- FAILED {c['name']}: {c.get('error', c.get('worst_over_tolerance'))}" for c in bad)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before phases stop starting new work")
    ap.add_argument("--batch", type=int, default=64, help="batch of every case (ConvNeXt-T stage 1: 64)")
    ap.add_argument("--size", type=int, default=56, help="feature map height = width (ConvNeXt-T stage 1: 56)")
    ap.add_argument("--out", default="", help="JSON path (default $OUT/triton_gpu.json or benchmarks/results/)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("triton_gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure. "
              "Run it on a machine with an NVIDIA GPU; the CPU tests are `pytest tests/triton` (interpreter).")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError as e:
        print(f"triton_gpu: triton is not importable ({e}); install triton>=3.0")
        return 0
    result = run(args)
    text = table(result)
    print(text, flush=True)
    path = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "triton_gpu.json" if os.environ.get("OUT")
                                            else Path(__file__).resolve().parent / "results" / "triton_gpu.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    result["table"] = text
    path.write_text(json.dumps(result, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                               else str(v)))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
