"""Write a generated image-folder data set: N small RGB images of procedurally drawn classes (shapes and
textures on a noisy background, random colours, positions and sizes), laid out FOLDER/<class>/<n>.png --
the layout `images("FOLDER")` reads. Tests use a tiny one; the benchmark a 10k-image one.

    python benchmarks/make_images.py runs/shapes --count 10000 [--size 32] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "hstripes", "vstripes", "checker", "ring")


def _colour(rng) -> tuple:
    return tuple(int(c) for c in rng.integers(60, 256, 3))


def draw(cls: str, size: int, rng: np.random.Generator) -> Image.Image:
    noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    d = ImageDraw.Draw(img)
    fg = _colour(rng)
    r = int(rng.integers(size // 5, size // 2.5))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if cls == "circle":
        d.ellipse(box, fill=fg)
    elif cls == "square":
        d.rectangle(box, fill=fg)
    elif cls == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif cls == "cross":
        w = max(1, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
    elif cls == "ring":
        d.ellipse(box, outline=fg, width=max(1, r // 3))
    else:  # textures over the whole image
        step = int(rng.integers(3, 7))
        for i in range(0, size, 2 * step):
            if cls == "hstripes":
                d.rectangle((0, i, size, i + step - 1), fill=fg)
            elif cls == "vstripes":
                d.rectangle((i, 0, i + step - 1, size), fill=fg)
            else:
                for j in range(0, size, 2 * step):
                    d.rectangle((i, j, i + step - 1, j + step - 1), fill=fg)
                    d.rectangle((i + step, j + step, i + 2 * step - 1, j + 2 * step - 1), fill=fg)
    return img


def make(root: Path, count: int, size: int = 32, seed: int = 0, classes: int = len(CLASSES)) -> Path:
    """Write `count` images (round-robin over the first `classes` classes) under `root`."""
    rng = np.random.default_rng(seed)
    names = CLASSES[:classes]
    for name in names:
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = names[i % len(names)]
        draw(name, size, rng).save(Path(root) / name / f"{i:06d}.png")
    return Path(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=len(CLASSES))
    a = ap.parse_args()
    make(Path(a.folder), a.count, a.size, a.seed, a.classes)
    print(f"wrote {a.count} images of {a.classes} classes under {a.folder}")


if __name__ == "__main__":
    main()
