"""Where the CLI writes: every output path is checked before any work, and every write failure is an error.

`-o`, `--weights`, `--dump-ir` (and any other output option) may name a missing directory, a path under a
file, a directory, an empty string or a device such as /dev/full; the disk may fill up or be read-only.
Each is reported as an ArchError naming the option, never as a traceback.
"""
from __future__ import annotations

from pathlib import Path

from archdsl.errors import ArchError


def _path(value, flag: str) -> Path:
    if value is None or str(value) == "":
        raise ArchError(f"{flag} needs a path, got an empty string")
    if "\x00" in str(value):
        raise ArchError(f"{flag}: the path contains a NUL character")
    return Path(value)


def _existing_ancestor(p: Path) -> Path:
    for parent in p.parents:
        if parent.exists():
            return parent
    return Path(".")


def output_file(value, flag: str, keep=()) -> Path:
    """A file the command will write: its directory exists, it is not a directory, and it is none of `keep`
    (the command's input files: `compile net.arch -o net.arch` must not destroy the source)."""
    p = _path(value, flag)
    if any(p.resolve() == Path(k).resolve() for k in keep):
        raise ArchError(f"{flag} {p} would overwrite a file this command reads or writes",
                        hint="write the output to another path")
    if p.is_dir():
        raise ArchError(f"{flag} {p} is a directory", hint=f"name a file, e.g. {flag} {p / 'model.py'}"
                        if flag != "--weights" else f"name a file, e.g. {flag} {p / 'weights.pt'}")
    parent = p.parent
    if not parent.is_dir():
        bad = _existing_ancestor(p)
        why = f"{bad} is not a directory" if not bad.is_dir() else f"the directory {parent} does not exist"
        raise ArchError(f"{flag} {p}: {why}", hint=f"create the directory first (mkdir -p {parent}) or pick another path")
    return p


def output_dir(value, flag: str) -> Path:
    """A directory the command will create if needed: nothing on the way to it is a file."""
    p = _path(value, flag)
    if p.exists() and not p.is_dir():
        raise ArchError(f"{flag} {p} is a file, not a directory", hint="name a directory (it is created if needed)")
    bad = _existing_ancestor(p)
    if not p.exists() and not bad.is_dir():
        raise ArchError(f"{flag} {p}: {bad} is not a directory", hint="pick another directory")
    return p


def write(path: Path, data: str | bytes, flag: str) -> None:
    try:
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    except OSError as e:
        raise ArchError(f"cannot write {flag} {path}: {e.strerror or e}",
                        hint="check that the disk has space and the directory is writable") from None
