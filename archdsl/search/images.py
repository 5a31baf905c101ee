"""An image folder (FOLDER/<class>/<image>) as a lazily decoded split, with Pillow doing the decoding.

Only the file list is read up front (each file's header: its size, so a decompression bomb or a file that
is no image is an error before the study starts); pixels are decoded batch by batch in the loader workers.

Transforms (all to `size` x `size`, RGB, then normalised per channel with `mean` / `std`):
- eval (validation, test, and `augment = none` in training): resize the shorter side to `size` (bilinear),
  then crop the centre;
- train with `augment = standard`: for an image not much larger than `size` (shorter side at most 1.25x), the
  eval transform, then zero-pad by size/8 and take a random `size` x `size` crop (the CIFAR recipe); for a larger
  image a random resized crop (25%..100% of the area, aspect 3/4..4/3) scaled to `size`; then a
  horizontal flip with probability 1/2.
Randomness comes from a torch.Generator the loader seeds per batch (see loaders.py).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from archdsl.errors import ArchError, Span

MAX_SIZE = 1024
AUGMENTS = ("standard", "none")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ArchError("image folders need Pillow", hint="pip install pillow (or pip install 'archdsl[search]')") \
            from None
    return Image


def index_folder(folder: str, span: Span | None) -> tuple[list[str], np.ndarray, list[str]]:
    """(image paths, labels, class names) of FOLDER/<class>/<file>, classes in name order. Files whose
    extension Pillow does not know are skipped; an image file Pillow cannot open, or one over Pillow's
    pixel limit (a decompression bomb), is an error naming it."""
    Image = _pil()
    root = Path(folder)
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise ArchError(f"{root} is not a folder of class folders (found {len(classes)})", span,
                        hint="lay images out as FOLDER/<class name>/<image files>, two classes at least")
    known = {ext.lower() for ext in Image.registered_extensions()}
    files, labels = [], []
    for label, cdir in enumerate(classes):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in known or not f.is_file():
                continue
            w, h = _header_size(f, span)
            if w < 1 or h < 1:
                raise ArchError(f"{f} is an empty image ({w}x{h})", span, hint="remove it from the folder")
            files.append(str(f))
            labels.append(label)
    if len(files) < 10:
        raise ArchError(f"{root}: found {len(files)} images; need 10 at least", span)
    return files, np.asarray(labels, dtype=np.int64), [c.name for c in classes]


def _header_size(path: Path, span) -> tuple[int, int]:
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ArchError(f"{path} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels: "
                        f"a decompression bomb?)", span, hint="remove it, or resize it first") from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's UnidentifiedImageError is an OSError
        raise ArchError(f"{path} is not a readable image: {e}", span, hint="remove or replace the file") from None
    if _too_large(path, w, h):
        raise ArchError(_too_large(path, w, h), span, hint="resize it first")
    return w, h


def _too_large(path, w: int, h: int) -> str | None:
    """Why an image of w x h pixels is not decoded (over Pillow's decompression-bomb limit), or None."""
    limit = _pil().MAX_IMAGE_PIXELS
    return f"{path} is {w}x{h}, over Pillow's limit of {limit:,} pixels" if w * h > limit else None


def decode(path: str):
    """The image as RGB. Its size is checked from the header before any pixel is decoded (the folder's headers
    were checked when it was indexed; this catches a file replaced since), so a decompression bomb never
    decodes. Called per image in the loader workers: no warnings machinery, no copy of an RGB image."""
    Image = _pil()
    with Image.open(path) as img:
        if _too_large(path, *img.size):
            raise ValueError(_too_large(path, *img.size))
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")


def eval_transform(img, size: int):
    """Shorter side to `size`, centre crop: a PIL image of `size` x `size`."""
    Image = _pil()
    w, h = img.size
    if w == h == size:
        return img  # already the eval view (the common case for a folder of small images)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _randint(g, n: int) -> int:
    return int(torch.randint(0, n, (1,), generator=g))


def _uniform(g, a: float, b: float) -> float:
    return a + (b - a) * float(torch.rand(1, generator=g))


def train_transform(img, size: int, g: torch.Generator) -> np.ndarray:
    """The `augment = standard` train-time transform (see the module docstring): HWC uint8 pixels. Padding,
    cropping and flipping are array slices (a few microseconds an image, where Pillow's paste / crop / transpose
    cost tens)."""
    Image = _pil()
    w, h = img.size
    if min(w, h) <= 1.25 * size:
        pad = max(1, size // 8)
        canvas = np.zeros((size + 2 * pad, size + 2 * pad, 3), dtype=np.uint8)
        canvas[pad:pad + size, pad:pad + size] = np.asarray(eval_transform(img, size), dtype=np.uint8)
        x, y = _randint(g, 2 * pad + 1), _randint(g, 2 * pad + 1)
        out = canvas[y:y + size, x:x + size]
    else:
        out = None
        for _ in range(10):
            area = w * h * _uniform(g, 0.25, 1.0)
            ratio = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = _randint(g, w - cw + 1), _randint(g, h - ch + 1)
                out = np.asarray(img.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch)), dtype=np.uint8)
                break
        if out is None:
            out = np.asarray(eval_transform(img, size), dtype=np.uint8)
    if float(torch.rand(1, generator=g)) < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def to_tensor(img) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


class ImageSplit(torch.utils.data.Dataset):
    """Images `files` with `labels`, decoded per batch (see loaders.py for the (key, rows) protocol)."""

    def __init__(self, files, labels, size: int, augment: bool, mean, std):
        self.files, self.labels, self.size, self.augment = list(files), np.asarray(labels), size, augment
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int, g: torch.Generator | None = None) -> torch.Tensor:
        """Image i, transformed, as CHW uint8 (normalised per batch, in one go)."""
        img = decode(self.files[i])
        if self.augment and g is not None:
            return torch.from_numpy(train_transform(img, self.size, g)).permute(2, 0, 1)
        return torch.from_numpy(np.array(eval_transform(img, self.size), dtype=np.uint8)).permute(2, 0, 1)

    def __getitem__(self, batch):
        key, idx = batch
        g = torch.Generator().manual_seed(int(key)) if self.augment else None
        rows = [int(i) for i in idx]
        x = torch.stack([self.load(i, g) for i in rows]).float().div_(255).sub_(self.mean).div_(self.std)
        return x, torch.from_numpy(self.labels[rows].astype(np.int64))

    def tensors(self):
        return self[(0, range(len(self)))]

    def sample_shape(self) -> tuple:
        return (3, self.size, self.size)


def channel_stats(files, size: int, limit: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the first `limit` images (eval transform), for normalising."""
    acc = torch.stack([to_tensor(eval_transform(decode(f), size)) for f in files[:limit]])
    mean = acc.mean(dim=(0, 2, 3))
    std = acc.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def options(args: tuple, kwargs: dict, span: Span | None) -> dict:
    """Validate images("folder", size = 32, augment = standard, mean = [...], std = [...])."""
    allowed = {"size", "augment", "mean", "std"}
    for k in kwargs:
        if k not in allowed:
            raise ArchError(f"images() has no argument '{k}'", span, hint=f"it takes {', '.join(sorted(allowed))}")
    if not args or not isinstance(args[0], str) or len(args) > 2:
        raise ArchError('images() takes a folder path: images("folder", size = 32)', span)
    size = args[1] if len(args) == 2 else kwargs.get("size", 32)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SIZE:
        raise ArchError(f"images(size = {size!r}): give a whole number of pixels from 1 to {MAX_SIZE}", span,
                        hint="e.g. size = 32")
    augment = kwargs.get("augment", "standard")
    if augment not in AUGMENTS:
        raise ArchError(f"images(augment = {augment!r}): use standard or none", span)
    out = {"folder": args[0], "size": size, "augment": augment == "standard"}
    for k in ("mean", "std"):
        v = kwargs.get(k)
        if v is None:
            continue
        if not isinstance(v, (list, tuple)) or len(v) != 3 or \
                not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in v):
            raise ArchError(f"images({k} = ...): give three numbers, one per RGB channel", span)
        if k == "std" and min(v) <= 0:
            raise ArchError("images(std = ...): every channel's std must be above 0", span)
        out[k] = [float(a) for a in v]
    if ("mean" in out) != ("std" in out):
        raise ArchError("images(): declare mean and std together (or neither, to compute them from the data)", span)
    return out
