"""Emitted Python files: their length per reference model (train and deploy), and how long a fresh process takes
to import one and run one forward pass, against compiling the .arch file in memory and running the same.

    python benchmarks/emit_readable.py                 # line counts; ConvNeXt-T start-up and forward (5 rounds)
    python benchmarks/emit_readable.py --rounds 7 --skip-lines
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p for p in (ROOT / "searchspaces" / "models").glob("*.arch") if p.stem != "metaformer")

# Both programs start from a bare interpreter; the timer runs from before `import torch` to after the forward.
EMITTED = """
import sys, time
t0 = time.perf_counter()
import torch
sys.path.insert(0, {dir!r})
import m
torch.manual_seed(0)
model = m.Model().eval()
with torch.no_grad():
    model(torch.randn(1, 3, 224, 224))
print(time.perf_counter() - t0)
"""
IN_MEMORY = """
import sys, time
t0 = time.perf_counter()
import torch
sys.path.insert(0, {root!r})
import archdsl
torch.manual_seed(0)
model = archdsl.compile({arch!r}).eval()
with torch.no_grad():
    model(torch.randn(1, 3, 224, 224))
print(time.perf_counter() - t0)
"""


def line_counts() -> list[tuple[str, int, int]]:
    import archdsl
    from codegen.python_source import emit

    rows = []
    for path in MODELS:
        gm = archdsl.compile(path)
        rows.append((path.stem, len(emit(gm.archdsl_ir).splitlines()), len(emit(gm.deploy().archdsl_ir).splitlines())))
        print(f"{path.stem:20s} train {rows[-1][1]:4d} lines   deploy {rows[-1][2]:4d} lines", flush=True)
    return rows


def _run(program: str) -> float:
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def startup(arch: Path, rounds: int) -> None:
    import archdsl
    from codegen.python_source import emit

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.py").write_text(emit(archdsl.build(archdsl.parse(arch))))
        emitted = EMITTED.format(dir=tmp)
        in_memory = IN_MEMORY.format(root=str(ROOT), arch=str(arch))
        _run(emitted), _run(in_memory)  # warm the file cache
        a, b = [], []
        for _ in range(rounds):  # interleaved, so a change in machine load hits both
            a.append(_run(emitted))
            b.append(_run(in_memory))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{arch.stem}: import m + forward {ma:.2f} s (median of {rounds}), compile .arch + forward {mb:.2f} s; "
          f"ratio emitted / in-memory {ma / mb:.2f}")


def forward_latency(arch: Path, rounds: int, reps: int = 5) -> None:
    """Steady-state forward of the emitted module against the in-memory one, same weights, one process,
    interleaved: the medians of `rounds` x `reps` single forwards after a warm-up."""
    import archdsl
    import torch
    from codegen.python_source import emit

    G = archdsl.build(archdsl.parse(arch))
    gm = archdsl.compile(G).eval()
    ns: dict = {}
    exec(compile(emit(G), "m.py", "exec"), ns)
    emitted = ns["Model"]().eval()
    emitted.load_state_dict(gm.state_dict())
    x = torch.randn(1, 3, 224, 224)
    times = {"emitted": [], "in-memory": []}
    with torch.no_grad():
        for m in (emitted, gm):
            m(x)
        for _ in range(rounds):
            for name, m in (("emitted", emitted), ("in-memory", gm)):
                for _ in range(reps):
                    t = time.perf_counter()
                    m(x)
                    times[name].append(time.perf_counter() - t)
    a, b = (statistics.median(times[k]) * 1e3 for k in ("emitted", "in-memory"))
    print(f"{arch.stem}: forward {a:.0f} ms emitted, {b:.0f} ms in-memory (medians of {rounds * reps}); "
          f"ratio {a / b:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-lines", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    if not args.skip_lines:
        line_counts()
    startup(ROOT / "searchspaces" / "models" / "convnext_t.arch", args.rounds)
    forward_latency(ROOT / "searchspaces" / "models" / "convnext_t.arch", args.rounds)
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
