"""Checks on a study's storage before Optuna opens it, and a lock for processes sharing one SQLite file.

- A `--storage` value that is not a database URL, or names a database SQLAlchemy does not know, is a clear
  error (the URL itself is never echoed: it may hold a password).
- A damaged SQLite file (not a database, truncated, malformed) is a clear error saying how to recover,
  instead of a traceback from deep inside SQLAlchemy.
- Processes that start on one SQLite study together take turns to create its tables and register
  themselves (SQLite otherwise answers the second CREATE TABLE with "table studies already exists"), and
  to write a report into one folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from pathlib import Path

from archdsl.errors import ArchError

RECOVER = ("move it away to start a new study in this folder, restore it from a copy, or try to save its "
           "trials with `sqlite3 study.db .recover | sqlite3 fixed.db`")


def check_url(url: str) -> Path | None:
    """Refuse a storage URL SQLAlchemy cannot open; returns the database file of a sqlite:/// URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    hint = "give e.g. postgresql://user@host/db or sqlite:///path/to/study.db"
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        raise ArchError("--storage is not a database URL", hint=hint) from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ArchError(f"--storage names an unknown kind of database '{parsed.drivername}'", hint=hint) from None
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise ArchError("--storage sqlite:// needs a file: a study in memory is lost when the search ends",
                        hint="give sqlite:///path/to/study.db, or leave --storage out (OUT/study.db)")
    return Path(parsed.database)


def check_sqlite(db: Path) -> None:
    """A clear error when `db` exists but is not a sound SQLite database (an empty file is fine: Optuna
    creates its tables)."""
    if db.is_dir():
        raise ArchError(f"{db} is a folder, where the study database (a file) belongs",
                        hint="move the folder away or choose another --out")
    if not db.exists() or db.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, timeout=60)
        try:
            verdict = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        verdict = str(e)
    if verdict != "ok":
        raise ArchError(f"{db} is damaged and cannot be read as a study database ({verdict})", hint=RECOVER)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on `path` (created when missing), held for the `with` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_for(db: Path | None):
    """The lock that serialises opening the SQLite study `db`; a no-op for a database server."""
    return file_lock(db.with_name(f".{db.name}.lock")) if db is not None else contextlib.nullcontext()


def sqlite_file(url: str | None, out: Path) -> Path | None:
    """The SQLite file a study lives in: OUT/study.db without --storage, the file of a sqlite:/// URL, or
    None for a database server. A bad URL is an ArchError."""
    return Path(out) / "study.db" if url is None else check_url(url)
