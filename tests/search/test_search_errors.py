"""Mistakes a user makes with `archdsl search` and `archdsl report` are clear errors (status 2, what is wrong,
where, what to do) before any study exists: bad objective arguments and constraints in the .arch file, bad
options, unusable output folders, bad storage URLs, a damaged study.db."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from searchutil import REPO, cli, write_arch

MODEL = """
model net(width = choice(4, 8)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  head: gap >> linear(10)
}
"""


def _space(tmp_path, body: str = "maximize accuracy(epochs = 1)\n  trials = 2"):
    return write_arch(tmp_path, MODEL + f"\nsearch s over digits {{\n  {body}\n}}\n")


def _clear(rc: int, stderr: str, *needles: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    for n in needles:
        assert n in stderr, stderr


@pytest.mark.parametrize("body, needle, column_of", [
    ("maximize accuracy(batch = 0)", "accuracy(batch = ...) is 0, expected at least 1", "0"),
    ("maximize accuracy(epochs = 0)", "accuracy(epochs = ...) is 0, expected at least 1", "0"),
    ("maximize accuracy(epochs = 2.5)", "is 2.5, expected a whole number", "2.5"),
    ('maximize accuracy(lr = "x")', 'accuracy(lr = ...) is "x", expected a number', '"x"'),
    ("maximize accuracy(lr = 0)", "expected above 0", "0"),
    ("maximize accuracy(weight_decay = -1)", "expected at least 0", "-"),
    ("minimize latency(runs = 0)", "latency(runs = ...) is 0, expected at least 1", "0"),
    ('minimize latency(precision = "int4")', "expected one of fp32, bf16, fp16", '"int4"'),
    ('maximize accuracy(epochs = 1)\n  constraint params < "x"', "cannot apply '<'", "params"),
    ("maximize accuracy(epochs = 1)\n  constraint params + 1", "must be a comparison", "params"),
    ("maximize accuracy(epochs = 1)\n  trials = 0", "search setting trials is 0", "trials"),
    ("maximize accuracy(epochs = 1)\n  timeout = -1", "search setting timeout is -1", "timeout"),
])
def test_bad_objective_argument_or_constraint_points_at_its_line(tmp_path, body, needle, column_of):
    arch = _space(tmp_path, body)
    out = tmp_path / "out"
    rc, _, stderr = cli("search", arch, "--out", out, "--quiet")
    _clear(rc, stderr, needle)
    lines = arch.read_text().splitlines()
    bad = next(i for i, line in enumerate(lines, 1) if line.strip() == body.splitlines()[-1].strip())
    col = lines[bad - 1].index(column_of) + 1  # the caret sits on the offending value
    assert stderr.startswith(f"{arch}:{bad}:{col}: error:"), stderr
    assert not (out / "study.db").exists()


@pytest.mark.parametrize("option, value, needle", [
    ("--jobs", "-3", "must be 1 or more, got -3"),
    ("--jobs", "0", "must be 1 or more, got 0"),
    ("--trials", "-1", "must be 1 or more, got -1"),
    ("--trials", "0", "must be 1 or more, got 0"),
    ("--trials", "many", "expected a whole number, got 'many'"),
    ("--timeout", "-1", "not a positive number of seconds"),
    ("--timeout", "0", "not a positive number of seconds"),
])
def test_bad_numeric_option_is_a_usage_error(tmp_path, capsys, option, value, needle):
    from archdsl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["search", str(_space(tmp_path)), "--out", str(tmp_path / "out"), option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and needle in err, err


@pytest.mark.parametrize("url, needle", [
    ("bogus://x", "unknown kind of database 'bogus'"),
    ("not a url", "--storage is not a database URL"),
    ("", "--storage is not a database URL"),
    ("sqlite://", "needs a file"),
])
def test_bad_storage_url(tmp_path, url, needle):
    rc, _, stderr = cli("search", _space(tmp_path), "--out", tmp_path / "out", "--quiet", "--storage", url)
    _clear(rc, stderr, needle, "hint: give ")
    rc, _, stderr = cli("report", "s", "--storage", url, "--out", tmp_path / "rep")
    _clear(rc, stderr, needle)


def test_search_model_that_does_not_exist(tmp_path):
    rc, _, stderr = cli("search", _space(tmp_path), "--out", tmp_path / "out", "--quiet", "--model", "nope")
    _clear(rc, stderr, "no model 'nope'")
    assert not (tmp_path / "out" / "study.db").exists()


def _file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


@pytest.mark.parametrize("make_out, needle", [
    (lambda tmp: "", "--out is empty"),
    (lambda tmp: _file(tmp), "is not a folder"),
    (lambda tmp: _file(tmp) / "sub", "cannot create the --out folder"),
    (lambda tmp: "/dev/full", "--out /dev/full is not a folder"),
    (lambda tmp: (tmp / "o" / "study.db").mkdir(parents=True) or tmp / "o", "study.db is a folder"),
    (lambda tmp: (tmp / "o" / "pareto.json").mkdir(parents=True) or tmp / "o", "pareto.json is a folder"),
])
def test_unusable_out_folder(tmp_path, make_out, needle):
    out = make_out(tmp_path)
    rc, _, stderr = cli("search", _space(tmp_path), "--out", out, "--quiet")
    _clear(rc, stderr, needle)
    assert not (tmp_path / "o" / "study.db").is_file()


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A tiny finished search (2 trials, 1 epoch) to report on."""
    tmp = tmp_path_factory.mktemp("done")
    out = tmp / "out"
    rc, _, stderr = cli("search", _space(tmp), "--out", out, "--quiet", "--sampler", "random")
    assert rc == 0, stderr
    return out


@pytest.mark.parametrize("make_out, needle", [
    (lambda tmp: "", "--out is empty"),
    (lambda tmp: _file(tmp) / "sub", "cannot create the --out folder"),
    (lambda tmp: "/dev/full", "is not a folder"),
    (lambda tmp: (tmp / "r" / "pareto").mkdir(parents=True) or (tmp / "r" / "pareto" / "x").write_text("")
     or (tmp / "r" / "pareto.png").mkdir() or tmp / "r", "pareto.png is a folder"),
])
def test_report_to_unusable_out_folder(tmp_path, finished_study, make_out, needle):
    rc, _, stderr = cli("report", finished_study, "--out", make_out(tmp_path), "--no-test")
    _clear(rc, stderr, needle)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_study_db_says_how_to_recover(tmp_path, finished_study, damage):
    out = tmp_path / "out"
    shutil.copytree(finished_study, out)
    db = out / "study.db"
    if damage == "garbage":
        db.write_bytes(b"this is not an sqlite file at all\n" * 100)
    else:
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    rc, _, stderr = cli("search", _space(tmp_path), "--out", out, "--quiet")
    _clear(rc, stderr, f"{db} is damaged", "hint: move it away")
    rc, _, stderr = cli("report", out, "--out", tmp_path / "rep", "--no-test")
    _clear(rc, stderr, f"{db} is damaged", "hint: move it away")


def _in_mount_namespace(tmp_path, mount: str, argv: list[str], run: str = "") -> subprocess.CompletedProcess:
    """Run `archdsl ARGV` (or the shell text RUN, with $ARCHDSL for the command) with MOUNT (a `mount`
    command's options and target) set up in a private mount namespace: a read-only or tiny file system
    without touching the machine's. Skips where that is not allowed (not root, or no unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a private file system")
    archdsl = f"{sys.executable} -m archdsl.cli \"$@\""
    script = f"mount {mount} && " + (run.replace("$ARCHDSL", archdsl) if run else f"exec {archdsl}")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here: {probe.stderr.decode().strip()}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_read_only_out_folder(tmp_path):
    arch = _space(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # an ordinary user: permissions are enough
        ro.chmod(0o555)
        rc, _, stderr = cli("search", arch, "--out", ro / "out", "--quiet")
        ro.chmod(0o755)
        _clear(rc, stderr, "cannot create the --out folder", "Permission denied")
        return
    (ro / "out").mkdir()
    p = _in_mount_namespace(tmp_path, f"-t tmpfs -o ro tmpfs {ro / 'out'}",
                            ["search", str(arch), "--out", str(ro / "out"), "--quiet"])
    _clear(p.returncode, p.stderr, "cannot write in the --out folder", "Read-only file system")


def test_disk_full_while_searching(tmp_path):
    """The disk fills up once the first trial is saved: the search stops with a clear error (not a
    traceback, not every later trial failing one by one)."""
    arch = _space(tmp_path, "maximize accuracy(epochs = 2)\n  trials = 12")
    out = tmp_path / "small"
    out.mkdir()
    fill_up = (f"$ARCHDSL & pid=$!; for i in $(seq 1200); do [ -s {out}/weights/trial0.pt ] && break; sleep 0.1; "
               f"done; dd if=/dev/zero of={out}/filler bs=4k 2>/dev/null; wait $pid")
    p = _in_mount_namespace(tmp_path, f"-t tmpfs -o size=4m tmpfs {out}",
                            ["search", str(arch), "--out", str(out), "--quiet", "--sampler", "random"], run=fill_up)
    _clear(p.returncode, p.stderr)
    assert "No space left on device" in p.stderr or "database or disk is full" in p.stderr, p.stderr
