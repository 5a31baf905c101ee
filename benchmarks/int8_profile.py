"""Why archdsl's int8 deploy and torch.ao's differ: op tables, per-layer times, per-layer exactness.

    python benchmarks/int8_profile.py --model conv_stack --threads 1
    python benchmarks/int8_profile.py --model resnet50 --size 112 --threads 2 --kernels-as-is

Both modules are built as in benchmarks/precision.py (archdsl's int8 deploy; the fp32 deploy quantized by
torch.ao with the x86 qconfig) and run on the same input. Printed:
1. torch.profiler's op times of both side by side (self time per call, calls per call), `--calls` calls
   profiled per module in each of `--rounds` alternating rounds, so a burst of load on a shared machine hits
   both;
2. each layer of archdsl's deploy next to the torch.ao layer of the same name, each timed on the input it
   received (captured by hooks), interleaved, median of `--reps`, with the grids (scale / zero point / layout)
   of its input and output; `--cpu-time` times the thread's CPU time instead of the wall clock (one thread:
   what other processes take from the core is not counted);
3. the readers that requantize their input at run time (its grid reaches past their observer's range, see
   archdsl/ops/quantized.py `_input`): a dequantize and a quantize torch.ao's graph does not have;
4. how far each of archdsl's quantized convs is from a float64 reference of its own integer arithmetic (levels
   off by more than one: the kernel saturated).
`--kernels-as-is` runs PyTorch's quantized kernels even where the probe found they saturate (fbgemm without
AVX-512 VNNI), to compare kernel speed; by default such CPUs run archdsl's exact float fallback.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from precision import model_file, torch_ao_peer, variant

import archdsl
from archdsl.ops.quantized import QConv, QLinear, _QuantizedOp


def build(name: str, size: int, batch: int):
    file = model_file(name)
    program = archdsl.parse(file.read_text(), file=str(file))
    G0 = archdsl.build(program, **({"size": size} if "size" in {p.name for p in program.model().params} else {}))
    shape = G0.nodes[G0.graph["input"]]["shape"]
    x_cal = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    ours = variant(file, "int8", size, x_cal)[2]
    peer = torch_ao_peer(variant(file, "fp32", size, x_cal)[1], x_cal)
    return ours, peer, torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))


def op_tables(modules: dict, x, calls: int, rounds: int, rows: int = 16) -> None:
    from torch.profiler import ProfilerActivity, profile

    ms, count = ({label: collections.Counter() for label in modules} for _ in range(2))
    for _ in range(rounds):
        for label, m in modules.items():
            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(calls):
                    m(x)
            for e in p.key_averages():
                ms[label][e.key] += e.self_cpu_time_total / 1e3 / (calls * rounds)
                count[label][e.key] += e.count / (calls * rounds)
    a, b = modules
    print(f"\n| op ({calls} x {rounds} calls each) | {a} ms / call | {b} ms / call | calls / call |")
    print("|---|---:|---:|---|")
    for key in sorted(set(ms[a]) | set(ms[b]), key=lambda k: -(ms[a][k] + ms[b][k]))[:rows]:
        print(f"| {key} | {ms[a][key]:.3f} | {ms[b][key]:.3f} | {count[a][key]:g} / {count[b][key]:g} |")
    print(f"| total | {sum(ms[a].values()):.2f} | {sum(ms[b].values()):.2f} | |")


def grid(t) -> str:
    if not torch.is_tensor(t):
        return type(t).__name__
    layout = "NHWC" if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else "dense"
    if t.is_quantized:
        return f"quint8 s={t.q_scale():.4f} z={t.q_zero_point()} {layout}"
    return f"{str(t.dtype)[6:]} {layout}"


def leaves(m) -> dict:
    return {n: s for n, s in m.named_modules() if n and not list(s.children())}


def captured(m, x) -> dict:
    """name -> (args, result) of every leaf module in one call."""
    seen, hooks = {}, []
    for n, s in leaves(m).items():
        hooks.append(s.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, (a, out))))
    m(x)
    for h in hooks:
        h.remove()
    return seen


def once_ms(fn, args, clock=time.perf_counter) -> float:
    t0 = clock()
    fn(*args)
    return (clock() - t0) * 1e3


def per_layer(ours, peer, x, reps: int, clock=time.perf_counter) -> None:
    a, p = captured(ours, x), captured(peer, x)
    mods_a, mods_p = leaves(ours), leaves(peer)
    print("\n| layer | archdsl op | ms | torch.ao op | ms | torch.ao / archdsl time | archdsl in -> out | torch.ao in -> out |")
    print("|---|---|---:|---|---:|---:|---|---|")
    total_a = total_p = 0.0
    for n, (args, out) in a.items():
        times_a, times_p = [], []
        for _ in range(reps):  # interleaved: a burst of load hits both
            times_a.append(once_ms(mods_a[n], args, clock))
            if n in p:
                times_p.append(once_ms(mods_p[n], p[n][0], clock))
        ta = statistics.median(times_a)
        tp = statistics.median(times_p) if times_p else float("nan")
        total_a += ta
        total_p += tp if n in p else 0.0
        theirs = f"{grid(p[n][0][0])} -> {grid(p[n][1])}" if n in p else "-"
        print(f"| {n} | {type(mods_a[n]).__name__} | {ta:.3f} | {type(mods_p.get(n)).__name__ if n in p else '-'} | "
              f"{tp:.3f} | {tp / ta:.2f} | {grid(args[0])} -> {grid(out)} | {theirs} |")
    print(f"\nsum of layers: archdsl {total_a:.2f} ms, torch.ao {total_p:.2f} ms (same-named layers; torch.ao's "
          f"quantize / dequantize calls in its graph are not leaves)")


def requantized_inputs(ours, x) -> None:
    """The quantized readers whose input grid reaches past their observer's range, as `_input` decides."""
    print("\n| reader | input grid | its observer's grid | shape |\n|---|---|---|---|")
    for n, (args, _) in captured(ours, x).items():
        m, q = ours.get_submodule(n), args[0]
        if not isinstance(m, (QConv, QLinear)) or not q.is_quantized:
            continue
        _, xs, xz, _, _ = m._prepared()
        if m._input(q, xs, xz).q_scale() != q.q_scale():
            print(f"| {n} | {grid(q)} | s={xs:.4f} z={xz} | {tuple(q.shape)} |")


def exactness(ours, x) -> None:
    """Levels off by more than one from a float64 reference of the same integer arithmetic, per conv."""
    bad = total = 0
    for n, (args, out) in captured(ours, x).items():
        m = ours.get_submodule(n)
        if not isinstance(m, QConv) or not out.is_quantized:
            continue
        xs, xz = float(m.x_scale), int(m.x_zero)
        q = m._input(args[0], xs, xz)
        w = m.qweight.double() * m.wscale.double().view(-1, *([1] * (m.qweight.dim() - 1)))
        conv = torch.nn.functional.conv1d if q.dim() == 3 else torch.nn.functional.conv2d
        y = conv(q.dequantize().double(), w, m.bias.double() if m.bias is not None else None, m.stride, m.padding,
                 m.dilation, m.groups)
        y = torch.relu(y) if m.relu else y
        ref = torch.clamp(torch.round(y / out.q_scale()) + out.q_zero_point(), 0, 255)
        off = (out.int_repr().double() - ref).abs()
        bad, total = bad + int((off > 1).sum()), total + off.numel()
        if off.max() > 1:
            print(f"  {n}: largest input level {int(q.int_repr().max())}, {int((off > 1).sum()):,} of {off.numel():,} "
                  f"outputs off by > 1 level (worst {int(off.max())})")
    print(f"\nconvs' outputs off by more than one level: {bad:,} of {total:,}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="conv_stack")
    ap.add_argument("--size", type=int, default=112, help="input size for models with a `size` parameter")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=3, help="calls profiled per module and round")
    ap.add_argument("--rounds", type=int, default=4, help="alternating profiling rounds")
    ap.add_argument("--cpu-time", action="store_true", help="per-layer times in thread CPU time")
    ap.add_argument("--reps", type=int, default=9, help="interleaved timings per layer")
    ap.add_argument("--kernels-as-is", action="store_true", help="PyTorch's quantized kernels even if they saturate")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"quantized kernels exact here: {_QuantizedOp.kernels_exact()}; engine {torch.backends.quantized.engine}; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; {args.threads} thread(s)")
    if args.kernels_as_is:
        _QuantizedOp._exact[torch.backends.quantized.engine, 255] = True
    ours, peer, x = build(args.model, args.size, args.batch)
    with torch.inference_mode():
        for m in (ours, peer):
            m(x)
        op_tables({"archdsl int8": ours, "torch.ao": peer}, x, args.calls, args.rounds)
        per_layer(ours, peer, x, args.reps, time.thread_time if args.cpu_time else time.perf_counter)
        requantized_inputs(ours, x)
        exactness(ours, x)


if __name__ == "__main__":
    main()
