"""Compile the kernels for an NVIDIA GPU on a machine without one: the real wrappers run with CPU tensors,
but every launch is replaced by compiling its specialisation (for every autotune config) down to a cubin with
the ptxas that ships with triton. Catches what the interpreter cannot: compile errors, unsupported ops,
register spills (stack bytes, via the bundled cuobjdump). Nothing is executed, so numbers are not checked here.

    python -m codegen.triton.aot [--arch 90] [--quick]

--quick compiles the first autotune config only (the tests use it); the default compiles all of them, as
autotuning on the GPU will. TRITON_INTERPRET must be unset (this module refuses to run under the interpreter).
Run it in a process of its own: the kernels' per-device caches keep what was compiled for the offline target.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch


class OfflineDriver:
    """Enough of a Triton driver to compile for `target` without a device (no launch ever happens)."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda


@contextlib.contextmanager
def compile_only(arch: int = 90, all_configs: bool = True):
    """Within: kernel launches compile (all autotune configs, or the first) and record, but do not run."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    compiled: list = []
    run, tune = JITFunction.run, Autotuner.run

    def jit_run(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kwargs, kernel))
        return kernel

    def tune_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs)
        for cfg in configs if all_configs else configs[:1]:
            self.fn.run(*args, **{**kwargs, "warmup": True}, **cfg.all_kwargs())
        self.nargs = None

    driver.set_active(OfflineDriver(GPUTarget("cuda", arch, 32)))
    JITFunction.run, Autotuner.run = jit_run, tune_run
    try:
        yield compiled
    finally:
        JITFunction.run, Autotuner.run = run, tune
        driver._active = None  # the next use picks the machine's own driver again (DriverConfig.active)


def resource_usage(cubin: bytes) -> dict:
    """{'REG': n, 'STACK': n, 'SHARED': n, 'LOCAL': n} from the bundled cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def cases():
    """(name, thunk): every specialisation the self-tests, the benchmark and a lowered ConvNeXt group use."""
    from codegen.triton import dwconv, elementwise, matmul, mlp, norm

    out = []
    for mod in (elementwise, norm, dwconv, matmul, mlp):
        short = mod.__name__.rsplit(".", 1)[-1]
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            out.append((f"{short} self-test {str(dtype)[6:]}",
                        lambda m=mod, d=dtype: m.self_test("cpu", d, check=False)))
        out.append((f"{short} benchmark cases", lambda m=mod: [c[1]() for c in m.benchmark_cases("cpu")]))
    out.append(("convnext group", _convnext_group))
    return out


def _convnext_group():
    from codegen.triton.lower import lower_group

    members = [("dwconv", {"k": 7}, (), "dw"), ("ln", {"eps": 1e-6}, (), "ln"), ("linear", {"out": 384}, (), "fc1"),
               ("gelu",), ("linear", {"out": 96}, (), "fc2"), ("layerscale", {}, (), "ls"), ("add", {}, (0,))]
    g = lower_group(members, [(96, 56, 56)], precision="bf16")
    t = lambda *s: torch.zeros(*s, dtype=torch.bfloat16)  # noqa: E731
    weights = {"dw": {"weight": t(96, 1, 7, 7), "bias": t(96)}, "ln": {"weight": t(96), "bias": t(96)},
               "fc1": {"weight": t(384, 96), "bias": t(384)}, "fc2": {"weight": t(96, 384), "bias": t(96)},
               "ls": {"gamma": t(96)}}
    g(t(2, 96, 56, 56).contiguous(memory_format=torch.channels_last), weights=weights)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (80: A100, 90: H100)")
    ap.add_argument("--quick", action="store_true", help="first autotune config only")
    ap.add_argument("--only", default="", help="comma-separated substrings of the case names to run")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot: unset TRITON_INTERPRET (it compiles for a GPU; the interpreter compiles nothing)")
        return 2
    failures, t_all = 0, time.time()
    for name, thunk in cases():
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        t0 = time.time()
        with compile_only(args.arch, all_configs=not args.quick) as compiled:
            try:
                thunk()
                status = "ok"
            except Exception as e:  # a compile error: report it and go on
                failures += 1
                status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                traceback.print_exc(limit=3)
        worst = _worst_usage(compiled)
        print(f"{name:32s} {len(compiled):3d} kernels {time.time() - t0:6.1f}s  {worst}  {status}", flush=True)
    print(f"aot: sm_{args.arch}, {failures} failure(s), {time.time() - t_all:.0f}s")
    return 1 if failures else 0


def _worst_usage(compiled) -> str:
    """Most registers, and the configs that spill (ptxas puts spills on the stack: STACK > 0)."""
    regs, spills = 0, []
    for name, kwargs, kernel in compiled:
        if kernel is None or "cubin" not in kernel.asm:
            continue
        use = resource_usage(kernel.asm["cubin"])
        regs = max(regs, use.get("REG", 0))
        if use.get("STACK", 0) or use.get("LOCAL", 0):
            meta = {k: v for k, v in kwargs.items() if k.startswith("BLOCK")}
            spills.append(f"{name} {meta} warps={kernel.metadata.num_warps} stack={use.get('STACK')}")
    return f"max regs {regs:3d}" + (f"; SPILLS: {'; '.join(spills)}" if spills else "")


if __name__ == "__main__":
    sys.exit(main())
