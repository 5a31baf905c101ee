"""Reading source files safely: every .arch file and every import goes through `read_source`.

A path in a file or on the command line may name anything: a device (`/dev/zero` never ends, `/dev/urandom`
is binary), a FIFO (blocks forever), a huge file, a file that is not UTF-8, or text that is not .arch at all
(`import "/etc/passwd"`). We read only regular files, at most MAX_SOURCE_BYTES, decode them as UTF-8 with an
error at the bad byte's line and column, and let imports name only `.arch` files, so an error never quotes a
line of some other file.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from archdsl.errors import ArchError, Span, did_you_mean, remember_source

MAX_SOURCE_BYTES = 4 * 1024 * 1024  # far above any real .arch file; ARCHDSL_MAX_SOURCE_BYTES raises it


def _limit() -> int:
    raw = os.environ.get("ARCHDSL_MAX_SOURCE_BYTES", "")
    return int(raw) if raw.isdigit() else MAX_SOURCE_BYTES


def read_source(path: str | Path, span: Span | None = None, what: str = "read", shown: str | None = None) -> str:
    """The text of a regular UTF-8 file, or an ArchError at `span` (where the path was written) saying why not;
    messages call the file `shown` (as the user wrote it)."""
    name = str(path)
    shown = shown or name
    fix = "imports are relative to the importing file" if what == "import" else "check the path"
    if "\x00" in name:
        raise ArchError(f"cannot {what} {shown!r}: the path contains a NUL character", span, hint=fix)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; fstat then tells us what we opened.
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ArchError(f"cannot {what} '{shown}': {e.strerror}", span, hint=fix) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise ArchError(f"cannot {what} '{shown}': it is {kind}", span, hint="name an .arch text file")
    with os.fdopen(fd, "rb") as f:
        limit = _limit()
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise ArchError(f"cannot {what} '{shown}': {e.strerror}", span, hint=fix) from None
    if len(data) > limit:
        raise ArchError(f"cannot {what} '{shown}': it is larger than {limit:,} bytes", span,
                        hint="an .arch file is a few kilobytes; set ARCHDSL_MAX_SOURCE_BYTES to allow more")
    return _decode(data, name)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark some editors write is not part of the text
    except UnicodeDecodeError as e:
        remember_source(name, data.decode("utf-8", errors="replace"))  # so the error can quote the line
        before = data[:e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise ArchError(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x})", Span(name, line, col),
                        hint="save the file as UTF-8") from None


LIBRARY = Path(__file__).resolve().parents[1] / "lib"  # blocks written in .arch, shipped with archdsl


def libraries() -> list[str]:
    return sorted(p.stem for p in LIBRARY.glob("*.arch"))


def read_import(rel: str, importer: str, span: Span) -> tuple[Path, str]:
    """(path, text) of `import "rel"` written in file `importer`: only .arch files are imported. A bare name
    (`import "attention"`) is a file of archdsl's block library (archdsl/lib/NAME.arch)."""
    if rel.isidentifier():
        if rel not in libraries():
            raise ArchError(f"no library '{rel}' to import", span,
                            hint=did_you_mean(rel, libraries()) or f"libraries: {', '.join(libraries())}; "
                                 'a file is imported by its path, e.g. import "blocks.arch"')
        path = LIBRARY / f"{rel}.arch"
        return path, read_source(path, span, what="import", shown=rel)
    if not rel.endswith(".arch"):
        raise ArchError(f"cannot import '{rel}': only .arch files can be imported", span,
                        hint='write the path of an .arch file, e.g. import "blocks.arch"')
    path = (Path(importer).parent / rel) if not importer.startswith("<") else Path(rel)
    return path, read_source(path, span, what="import", shown=rel)
