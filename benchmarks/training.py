"""Trial training throughput: the data loaders against data held in memory, in one run, interleaved.

1. MNIST-1D (the search's default data set): training samples/s of `archdsl.search.train.train` (a DataLoader
   over a batch-indexed split) against a plain loop slicing the tensors (what trials did before loaders).
2. A generated 10k-image folder (benchmarks/make_images.py, 32x32 RGB): training images/s of a small CNN fed by
   the streaming loader (lazy Pillow decoding + standard augmentation) with workers = 0 and 2, against the same
   images decoded once and preloaded as tensors. Goal: streaming with 2 workers >= 0.8x preloaded.
3. A short search (10 trials) on the generated folder with `archdsl search`.
4. On a machine with a GPU: training images/s with bf16 autocast against fp32; otherwise "not measured on GPU".

    python benchmarks/training.py [--images 10000] [--reps 3] [--batches 60] [--folder runs/bench-shapes]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from make_images import make  # noqa: E402

from archdsl.search.data import load  # noqa: E402
from archdsl.search.loaders import ArraySplit, loader  # noqa: E402
from archdsl.search.recipe import Recipe  # noqa: E402
from archdsl.search.train import evaluate, train  # noqa: E402


def cnn1d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 25, 5, padding=2), nn.ReLU(), nn.Conv1d(25, 25, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(25, 25, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(25 * 40, 10))


def cnn2d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 8))


def plain_loop(module, x, y, xv, yv, epochs, batch=128, lr=1e-2):
    """Trials' training before loaders: slicing the tensors with a shuffled order each epoch, validating after
    each epoch (as train() does)."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        module.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = loss_fn(module(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate(module, xv, yv)


def bench_mnist1d(reps: int, epochs: int = 3) -> dict:
    data = load("mnist1d")
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val
    n = len(x) * epochs
    loaders, plain = [], []
    for _ in range(reps):  # interleaved
        t = time.perf_counter()
        train(cnn1d(), data, recipe=Recipe(epochs=epochs))
        loaders.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        plain_loop(cnn1d(), x, y, xv, yv, epochs)
        plain.append(n / (time.perf_counter() - t))
    a, b = statistics.median(loaders), statistics.median(plain)
    return {"loader_samples_per_s": round(a), "plain_samples_per_s": round(b), "ratio": round(a / b, 3)}


def train_images_per_s(split, batches: int, batch: int = 64, workers: int = 0, device: str = "cpu",
                       warm: int = 5) -> float:
    """Steady-state images/s of SGD steps on the CNN fed by `split` through a loader: timed from batch `warm`
    on, so the workers' start-up (once per trial: the train loader's workers persist across epochs) and the
    prefetch queue filling up are not counted; `loader_startup` measures those separately."""
    module = cnn2d().to(device)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    t, seen = None, 0
    for i, (x, y) in enumerate(loader(split, batch, shuffle=True, seed=0, workers=workers)):
        if i == warm:
            t, seen = time.perf_counter(), 0
        if i == warm + batches:
            break
        loss = loss_fn(module(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t)


def loader_startup(split, batch: int = 64, workers: int = 0) -> float:
    """Seconds from creating the loader to its first batch (paid once per trial)."""
    t = time.perf_counter()
    next(iter(loader(split, batch, shuffle=True, seed=0, workers=workers)))
    return time.perf_counter() - t


def bench_images(folder: Path, reps: int, batches: int) -> dict:
    data = load("images", (str(folder),), kwargs={"size": 32, "augment": "standard"})
    t = time.perf_counter()
    x, y = data.val.__class__(data.train.files, data.train.labels, 32, False, data.split["mean"],
                              data.split["std"]).tensors()
    preload_s = time.perf_counter() - t
    preloaded = ArraySplit(x, y)
    results = {"streaming w0": [], "streaming w2": [], "preloaded": []}
    for _ in range(reps):  # interleaved
        results["preloaded"].append(train_images_per_s(preloaded, batches))
        results["streaming w0"].append(train_images_per_s(data.train, batches, workers=0))
        results["streaming w2"].append(train_images_per_s(data.train, batches, workers=2))
    med = {k: statistics.median(v) for k, v in results.items()}
    startup = statistics.median(loader_startup(data.train, workers=2) for _ in range(reps))
    return {"train_images": len(data.train), "preload_seconds": round(preload_s, 1),
            "loader start-up seconds (workers = 2, once per trial)": round(startup, 3),
            **{f"{k} images/s": round(v) for k, v in med.items()},
            "ratio w0/preloaded": round(med["streaming w0"] / med["preloaded"], 3),
            "ratio w2/preloaded": round(med["streaming w2"] / med["preloaded"], 3)}


SPACE = """
model net(width = choice(8, 16, 24), depth = int(1, 3), k = choice(3, 5)) {
  input img[3, 32, 32]
  stem: conv(width, k = 3, stride = 2, padding = 1) >> relu
  body: repeat depth { conv(width, k = k, padding = k // 2) >> bn >> relu }
  head: gap >> linear(8)
}
search shapes over images("FOLDER", size = 32, augment = standard) {
  maximize accuracy(epochs = 2, workers = 2)
  minimize params
  trials = 10
}
"""


def bench_search(folder: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        arch = Path(tmp) / "shapes.arch"
        arch.write_text(SPACE.replace("FOLDER", str(folder.resolve())))
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "archdsl.cli", "search", str(arch), "--out", f"{tmp}/out",
                               "--quiet", "--sampler", "random"], cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        summary = json.loads((Path(tmp) / "out" / "pareto.json").read_text())
    best = max(summary["pareto"], key=lambda m: m["accuracy"])
    return {"seconds": round(seconds), "trials": summary["trials"], "pareto": len(summary["pareto"]),
            "best_val_accuracy": round(best["accuracy"], 4), "best_test_accuracy": best.get("test_accuracy"),
            "best_params": best.get("params")}


def bench_gpu(folder: Path, batches: int) -> dict | str:
    if not torch.cuda.is_available():
        return "not measured on GPU (no GPU on this machine)"
    data = load("images", (str(folder),), kwargs={"size": 32})
    x, y = data.train.tensors()
    out = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        module = cnn2d().cuda()
        opt = torch.optim.SGD(module.parameters(), lr=0.05)
        xs, ys = x[:64 * batches].cuda(), y[:64 * batches].cuda()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, len(xs), 64):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = nn.functional.cross_entropy(module(xs[i:i + 64]).float(), ys[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        out.setdefault(precision, []).append(len(xs) / (time.perf_counter() - t))
    return {k: round(statistics.median(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--folder", default="runs/bench-shapes")
    ap.add_argument("--parts", default="mnist1d,images,search,gpu", help="which measurements to run")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    torch.set_num_threads(1)
    folder = Path(a.folder)
    if not folder.exists() or sum(1 for _ in folder.rglob("*.png")) != a.images:
        make(folder, a.images, size=32)
    report = {}
    for name, fn in (("mnist1d", lambda: bench_mnist1d(a.reps)), ("images", lambda: bench_images(folder, a.reps,
                                                                                                a.batches)),
                     ("search", lambda: bench_search(folder)), ("gpu", lambda: bench_gpu(folder, a.batches))):
        if name in parts:
            report[name] = fn()
            print(json.dumps({name: report[name]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
