"""A user's .npz (arrays x, y and optionally x_test, y_test) as memory-mapped, validated arrays.

np.load cannot memory-map the arrays inside an .npz (a zip archive), so the first use streams each array, in
chunks, into a .npy file of the cache (ARCHDSL_CACHE/npz/<key>/, the key made of the file's path, size and
modification time) and later runs -- and every loader worker -- memory-map those read-only: a data set larger
than memory trains without being loaded. Nothing is ever unpickled (arrays of Python objects are refused).

The arrays are checked while extracting, so bad data is an error before the study starts: features must be
numbers (not strings or complex), finite, with a sample axis and a feature axis; labels one class number per
sample (whole, non-negative; one-hot rows are recognised and refused with the fix).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from archdsl.errors import ArchError, Span

ARRAYS = ("x", "y", "x_test", "y_test")
CHUNK = 1 << 24  # bytes per read while extracting or scanning


def open_npz(path: str, span: Span | None, cache: Path) -> dict:
    """{name: array} for x, y[, x_test, y_test]: features memory-mapped, labels as int64 in memory."""
    p = Path(path)
    if not p.is_file():
        raise ArchError(f"cannot read data set {p}: no such file", span, hint="give an .npz file with arrays x and y (paths are relative "
                                                        "to the .arch file)")
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:20]
    d = cache / "npz" / key
    if not (d / "ok.json").exists():
        _extract(p, d, span)
    names = json.loads((d / "ok.json").read_text())["arrays"]
    arrays = {k: np.load(d / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in names}
    for k in ("y", "y_test"):
        if k in arrays:
            arrays[k] = np.asarray(arrays[k], dtype=np.int64)
    return arrays


def _extract(p: Path, d: Path, span) -> None:
    tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            with zipfile.ZipFile(p) as z:
                members = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
                missing = {"x", "y"} - set(members)
                if missing:
                    raise ArchError(f"{p} has no array(s) {', '.join(sorted(missing))}", span,
                                    hint="save with np.savez(path, x=inputs, y=labels[, x_test=..., y_test=...])")
                if ("x_test" in members) != ("y_test" in members):
                    have, lack = ("x_test", "y_test") if "x_test" in members else ("y_test", "x_test")
                    raise ArchError(f"{p} has {have} but no {lack}", span,
                                    hint="save both test arrays, or neither (a test split is then held out)")
                names = [k for k in ARRAYS if k in members]
                for k in names:
                    _copy(z, members[k], tmp / f"{k}.npy", p, span)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
            raise ArchError(f"cannot read data set {p}: {e} (a truncated or damaged file?)", span,
                            hint="save it again with np.savez(path, x=inputs, y=labels)") from None
        arrays = {k: np.load(tmp / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in names}
        validate(arrays, str(p), span)
        del arrays
        (tmp / "ok.json").write_text(json.dumps({"arrays": names, "source": str(p)}))
        try:
            tmp.rename(d)
        except OSError:  # another worker extracted it first
            if not (d / "ok.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy(z: zipfile.ZipFile, member: str, dest: Path, p: Path, span) -> None:
    """Stream one .npy member of the archive into `dest` without holding it in memory."""
    fmt = np.lib.format
    with z.open(member) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ArchError(f"{p}: array {member[:-4]} holds Python objects, which are never loaded (unpickled)",
                            span, hint="save plain numeric arrays (labels as integers 0..C-1)")
        mm = fmt.open_memmap(dest, mode="w+", dtype=dtype, shape=shape, fortran_order=fortran)
        buf = memoryview(mm.reshape(-1, order="A").view(np.uint8)) if mm.size else memoryview(b"")
        at = 0
        while at < len(buf):
            n = f.readinto(buf[at:at + CHUNK])
            if not n:
                raise ArchError(f"{p}: array {member[:-4]} ends early ({at:,} of {len(buf):,} bytes)", span,
                                hint="the file is truncated; save it again")
            at += n
        mm.flush()
        del buf, mm


def validate(arrays: dict, file: str, span: Span | None) -> None:
    """Bad data is an error naming the array and what to do."""
    x, y = arrays["x"], arrays["y"]
    _features(x, "x", file, span)
    _labels(y, "y", file, span)
    if len(x) != len(y) or len(x) < 10:
        raise ArchError(f"{file}: x has {len(x)} rows and y {len(y)}; they must match (10 rows at least)", span)
    if "x_test" in arrays:
        xt, yt = arrays["x_test"], arrays["y_test"]
        _features(xt, "x_test", file, span)
        _labels(yt, "y_test", file, span)
        if len(xt) != len(yt) or len(xt) < 1:
            raise ArchError(f"{file}: x_test has {len(xt)} rows and y_test {len(yt)}; they must match", span)
        if xt.shape[1:] != x.shape[1:]:
            raise ArchError(f"{file}: x_test samples have shape {list(xt.shape[1:])} but x samples "
                            f"{list(x.shape[1:])}", span)
    if len(np.unique(np.asarray(y))) < 2:
        raise ArchError(f"{file}: y holds a single class; a classifier needs two at least", span)


def _kind_problem(a: np.ndarray) -> str | None:
    k = a.dtype.kind
    return {"U": "strings", "S": "byte strings", "c": "complex numbers", "V": "structured records",
            "M": "dates", "m": "time spans", "O": "Python objects"}.get(k)


def _features(a, name: str, file: str, span) -> None:
    if a.ndim == 0:
        raise ArchError(f"{file}: {name} is a 0-d array (one value), not samples", span,
                        hint=f"save {name} with shape (samples, features...)")
    if a.ndim == 1:
        raise ArchError(f"{file}: {name} has shape {list(a.shape)}: it needs a sample axis and a feature axis", span,
                        hint=f"for one feature per sample save {name}.reshape(-1, 1)")
    problem = _kind_problem(a)
    if problem:
        raise ArchError(f"{file}: {name} holds {problem} ({a.dtype}); features must be numbers", span)
    if a.dtype.kind == "f":
        rows = max(1, CHUNK // max(1, a[0].nbytes))
        for i in range(0, len(a), rows):
            ok = np.isfinite(a[i:i + rows]).reshape(len(a[i:i + rows]), -1).all(axis=1)
            if not ok.all():
                raise ArchError(f"{file}: {name} row {i + int(np.argmin(ok))} holds NaN or infinity", span,
                                hint="drop or repair the rows with missing values")


def _labels(a, name: str, file: str, span) -> None:
    if a.ndim == 0:
        raise ArchError(f"{file}: {name} is a 0-d array (one value), not one label per sample", span)
    problem = _kind_problem(a)
    if problem:
        raise ArchError(f"{file}: {name} holds {problem} ({a.dtype}); labels must be class numbers 0..C-1", span,
                        hint="map class names to numbers, e.g. np.unique(names, return_inverse=True)[1]")
    v = np.asarray(a)
    if v.ndim == 2 and v.shape[1] > 1 and np.isin(v, (0, 1)).all() and (v.sum(axis=1) == 1).all():
        raise ArchError(f"{file}: {name} is one-hot (shape {list(v.shape)}); give one class number per sample", span,
                        hint=f"save {name}.argmax(1)")
    if v.ndim != 1:
        raise ArchError(f"{file}: {name} has shape {list(v.shape)}; labels are one class number per sample", span)
    if v.dtype.kind == "f":
        if not np.isfinite(v).all():
            raise ArchError(f"{file}: {name} holds NaN or infinity; labels must be class numbers 0..C-1", span)
        if (v != np.round(v)).any():
            raise ArchError(f"{file}: {name} holds fractional values (e.g. {v[v != np.round(v)][0]}); labels must be "
                            f"whole class numbers 0..C-1", span, hint="this is classification; regression targets "
                                                                     "are not supported")
    if len(v) and v.min() < 0:
        raise ArchError(f"{file}: {name} holds negative values (e.g. {v.min()}); labels must be class numbers 0..C-1",
                        span)
