""".ci/postgres.sh leaves nothing behind: `stop` stops the throwaway server and removes its data directory
(and only a PostgreSQL data directory)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from searchutil import REPO

SCRIPT = REPO / ".ci" / "postgres.sh"


def _script(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stop_removes_a_data_directory_and_nothing_else(tmp_path):
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "base").mkdir()
    p = _script("stop", env={"ARCHDSL_PG_DIR": str(data)})
    assert p.returncode == 0, p.stderr
    assert not data.exists()
    assert _script("stop", env={"ARCHDSL_PG_DIR": str(data)}).returncode == 0  # nothing there: nothing to do

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    p = _script("stop", env={"ARCHDSL_PG_DIR": str(other)})
    assert p.returncode != 0 and "not a PostgreSQL data directory" in p.stderr
    assert (other / "notes.txt").read_text() == "keep me"


def test_start_then_stop_leaves_no_server_and_no_files(tmp_path):
    if os.geteuid() != 0 or not glob.glob("/usr/lib/postgresql/*/bin/postgres") or not shutil.which("runuser"):
        pytest.skip("needs root and an installed PostgreSQL server (/usr/lib/postgresql/*/bin)")
    # stand-in driver modules: this test is about the server's life, not the Python driver (none installed)
    drivers = tmp_path / "drivers"
    for name in ("psycopg2", "psycopg"):
        (drivers / name).mkdir(parents=True)
        (drivers / name / "__init__.py").write_text("")
    home = tempfile.mkdtemp(prefix="archdsl-ci-test-")  # under /tmp: pytest's own folder is root's only
    os.chmod(home, 0o755)  # the postgres user walks into it
    data = Path(home) / "pgdata"
    port = _free_port()
    env = {"ARCHDSL_PG_DIR": str(data), "ARCHDSL_PG_PORT": str(port),
           "PYTHONPATH": f"{drivers}:{os.environ.get('PYTHONPATH', '')}"}
    try:
        p = _script(env=env)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == f"postgresql://postgres@127.0.0.1:{port}/archdsl"
        assert (data / "PG_VERSION").is_file()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        p = _script("stop", env=env)
        leftover = os.listdir(home)
        shutil.rmtree(home, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    assert leftover == []
    assert not data.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
