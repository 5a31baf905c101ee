"""The output folder of `archdsl search --out` and `archdsl report --out`: checked before any work starts, so
a typo or an unwritable place is one clear error instead of a traceback after an hour of training; and
errors writing into it later (disk full, a file deleted under us) are clear errors too."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from archdsl.errors import ArchError

# What archdsl writes into an output folder: a folder where one of these files belongs (or the reverse)
# would fail only at the end of a search.
FILES = ("study.db", "pareto.json", "pareto.png", "hypervolume.png")
FOLDERS = ("pareto", "weights")


def prepare(out, option: str = "--out") -> Path:
    """Create the folder `out` when missing and make sure archdsl can write what it writes there."""
    if not str(out).strip():
        raise ArchError(f"{option} is empty", hint=f"give a folder, e.g. {option} runs/search")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ArchError(f"{option} {path} is not a folder", hint="give a folder (it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArchError(f"cannot create the {option} folder {path}: {_why(e)}",
                        hint="give a folder under a writable directory") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".archdsl-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArchError(f"cannot write in the {option} folder {path}: {_why(e)}",
                        hint="give a folder you can write to") from None
    for name in FILES:
        if (path / name).is_dir():
            raise ArchError(f"{path / name} is a folder, where archdsl writes a file",
                            hint=f"move it away or choose another {option}")
    for name in FOLDERS:
        if (path / name).exists() and not (path / name).is_dir():
            raise ArchError(f"{path / name} is a file, where archdsl writes a folder",
                            hint=f"move it away or choose another {option}")
    return path


@contextlib.contextmanager
def write_errors():
    """OSError (disk full, read-only file system, a folder removed) and a failing database write become a
    clear ArchError naming the file. Looked for along the exception's chain: Optuna wraps a failed commit
    in StorageInternalError, and may replace it with an AssertionError of its own while cleaning up."""
    try:
        yield
    except ArchError:
        raise
    except Exception as e:
        problem = _write_problem(e)
        if problem is None:
            raise
        raise problem from None


def _write_problem(e: BaseException) -> ArchError | None:
    import sqlalchemy.exc

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            where = f" {e.filename}" if e.filename else ""
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            return ArchError(f"cannot write{where}: {_why(e)}",
                             hint="free some space or choose another --out; the search resumes from what was saved"
                             if full else None)
        if isinstance(e, sqlalchemy.exc.OperationalError):
            return ArchError(f"the study database failed: {str(e.orig or e).strip()}",
                             hint="free some space if the disk is full; the search resumes from what was saved")
        e = e.__cause__ or e.__context__
    return None


def _why(e: OSError) -> str:
    return e.strerror or str(e)
