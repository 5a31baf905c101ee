"""The `archdsl` command line: check (table, --json, --ir), compile, show, bench, ops, and its errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import archdsl.cli as cli

GOLDEN = Path(__file__).resolve().parent / "golden"
TINY = str(GOLDEN / "tiny.arch")
TINY_PARAMS = 112 + 8 + 40 + 20 + 8 + 70  # hand-counted in test_ir.py
TINY_MACS = 1728 + 576 + 256 + 128 + 60


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def bad(tmp_path):
    path = tmp_path / "bad.arch"
    path.write_text("model m() {\n  input x[4]\n  linear(8) >> dwcov(3)\n}\n")
    return path


@pytest.fixture()
def space(tmp_path):
    path = tmp_path / "space.arch"
    path.write_text("model s(mixer = choice(poolmix(3), dwconv(3)), k = int(1, 3), classes = 4) {\n"
                    "  input x[4, 8, 8]\n  mixer >> conv(k) >> gap >> linear(classes)\n}\n")
    return path


# ---- check ---------------------------------------------------------------------------------------------

def test_check_prints_a_table(capsys):
    rc, out, err = run(capsys, "check", TINY)
    assert rc == 0 and err == ""
    assert "tiny" in out and "total" in out and "stem" in out and "head" in out
    assert f"{TINY_PARAMS:,}" in out
    assert "input [3, 8, 8] -> output [10]" in out
    assert "IR hash" in out


def test_check_prints_list_arguments_of_choices(capsys, tmp_path):
    """Source text with a list, `dwconv([k, 1])`, is printed as written (not taken for a rich style tag)."""
    path = tmp_path / "lists.arch"
    path.write_text("model s(k = 3, mixer = choice(dwconv(3), dwconv([k, 1]))) {\n  input x[4, 8, 8]\n  mixer\n}\n")
    rc, out, _ = run(capsys, "check", str(path))
    assert rc == 0 and "dwconv([k, 1])" in " ".join(out.split())


def test_check_json(capsys):
    rc, out, _ = run(capsys, "check", TINY, "--json")
    assert rc == 0
    info = json.loads(out)
    assert {"params", "macs", "input_shape", "output_shape", "ir_hash", "blocks", "nodes"} <= set(info)
    assert info["params"] == TINY_PARAMS and info["macs"] == TINY_MACS
    assert info["input_shape"] == [3, 8, 8] and info["output_shape"] == [10]
    assert sum(b["params"] for b in info["blocks"]) == TINY_PARAMS
    assert [b["name"] for b in info["blocks"]][0] == "stem"


def test_check_json_with_overrides_and_a_search_space(capsys, space):
    rc, out, _ = run(capsys, "check", str(space), "--json", "--set", "mixer=dwconv(3)", "--set", "k=2",
                     "--set", "classes=7")
    assert rc == 0
    info = json.loads(out)
    assert info["space"] == {"mixer": "choice(poolmix(3), dwconv(3))", "k": "int(1, 3)"}
    assert info["choices"] == {"mixer": "dwconv(3)", "k": 2}
    assert info["output_shape"] == [7]
    # dwconv(3) on 4 channels: 4*9+4; conv(2): 4*2+2; linear(7): 2*7+7
    assert info["params"] == 40 + 10 + 21


def test_check_set_choice_by_source_text(capsys, space):
    # `--set mixer='poolmix(3)'` in a shell reaches us as mixer=poolmix(3): an .arch expression
    rc, out, _ = run(capsys, "check", str(space), "--json", "--set", "mixer=poolmix(3)")
    assert rc == 0 and json.loads(out)["choices"]["mixer"] == "poolmix(3)"
    # a string holding the option's source text works too
    rc, out, _ = run(capsys, "check", str(space), "--json", "--set", 'mixer="dwconv(3)"')
    assert rc == 0 and json.loads(out)["choices"]["mixer"] == "dwconv(3)"


def test_check_ir_is_the_golden_dump(capsys):
    rc, out, _ = run(capsys, "check", TINY, "--ir")
    assert rc == 0
    assert out == (GOLDEN / "tiny.ir").read_text()


def test_check_ir_with_spans(capsys):
    rc, out, _ = run(capsys, "check", TINY, "--ir", "--spans")
    assert rc == 0 and f"@ {TINY}:4:9" in out


def test_check_model_selection(capsys, tmp_path):
    path = tmp_path / "two.arch"
    path.write_text("model a() { input x[4]\n linear(2) }\nmodel b() { input x[4]\n linear(3) }\n")
    assert json.loads(run(capsys, "check", str(path), "--json")[1])["output_shape"] == [3]
    assert json.loads(run(capsys, "check", str(path), "--json", "--model", "a")[1])["output_shape"] == [2]
    rc, _, err = run(capsys, "check", str(path), "--model", "c")
    assert rc == 2 and "has no model 'c'" in err


# ---- compile / show / bench / ops ----------------------------------------------------------------------

def test_compile_writes_python_and_weights(capsys, tmp_path):
    out_py, weights = tmp_path / "net.py", tmp_path / "net.pt"
    rc, out, _ = run(capsys, "compile", TINY, "-o", str(out_py), "--weights", str(weights))
    assert rc == 0 and f"wrote {out_py}" in out and str(weights) in out
    source = out_py.read_text()
    ns: dict = {}
    exec(compile(source, str(out_py), "exec"), ns)
    model = ns["Model"]()
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    assert sum(p.numel() for p in model.parameters()) == TINY_PARAMS
    assert model.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_show_writes_dot(capsys, tmp_path):
    dot = tmp_path / "x.dot"
    rc, out, _ = run(capsys, "show", TINY, "-o", str(dot))
    assert rc == 0 and f"wrote {dot}" in out
    text = dot.read_text()
    assert text.startswith('digraph "tiny"') and '"stem.conv" -> "stem.bn";' in text
    assert "cluster_stem" in text
    rc, _, _ = run(capsys, "show", TINY, "-o", str(tmp_path / "y.dot"), "--depth", "1")
    assert rc == 0 and '"stem" -> "dwconv";' in (tmp_path / "y.dot").read_text()


def test_show_refuses_an_unknown_format(capsys, tmp_path):
    rc, _, err = run(capsys, "show", TINY, "-o", str(tmp_path / "x.jpg"))
    assert rc == 2 and "cannot draw to" in err


def test_bench(capsys):
    rc, out, _ = run(capsys, "bench", TINY, "--runs", "2", "--warmup", "0", "--batch", "3")
    assert rc == 0
    info = json.loads(out)
    assert info["input"] == [3, 3, 8, 8] and info["output"] == [3, 10] and info["runs"] == 2
    assert info["median_ms"] > 0


def test_ops_lists_the_registry(capsys):
    rc, out, _ = run(capsys, "ops")
    assert rc == 0
    for name in ("conv", "dwconv", "linear", "mhsa", "gelu", "ln2d"):
        assert name in out


def test_ops_name_prints_one_op_in_full(capsys):
    from archdsl.ops.registry import get_op

    rc, out, _ = run(capsys, "ops", "einsum")
    assert rc == 0 and out.startswith("einsum(equation)\n")
    assert get_op("einsum").doc in out  # the whole doc, not the table's first line
    assert "equation (str, required)" in out and "triton: none" in out
    rc, out, _ = run(capsys, "ops", "add")
    assert "value (float, default None)" in out and "triton: rule 'binary'" in out and "fuses" in out
    rc, out, _ = run(capsys, "ops", "seqpool")  # a block of the library: its comment and source
    assert rc == 0 and 'import "tokens"' in out and "block seqpool()" in out and "CCT sequence pooling" in out
    rc, _, err = run(capsys, "ops", "sqpool")
    assert rc == 2 and "no op or library block 'sqpool'" in err and "seqpool" in err


# ---- errors --------------------------------------------------------------------------------------------

def test_error_exit_status_and_location(capsys, bad):
    rc, out, err = run(capsys, "check", str(bad))
    assert rc == 2 and out == ""
    assert err.startswith(f"{bad}:3:16: error: unknown op 'dwcov'")
    assert "      linear(8) >> dwcov(3)" in err and "hint: did you mean 'dwconv'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", [["compile", "-o", "unused.py"], ["show", "-o", "unused.dot"], ["bench"]])
def test_every_command_reports_file_errors(capsys, bad, cmd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, cmd[0], str(bad), *cmd[1:])
    assert rc == 2 and f"{bad}:3:16: error:" in err
    assert not (tmp_path / "unused.py").exists()


def test_set_errors(capsys, space):
    rc, _, err = run(capsys, "check", str(space), "--set", "mixr=dwconv(3)")
    assert rc == 2 and "no model parameter or search choice is called 'mixr'" in err and "'mixer'" in err
    rc, _, err = run(capsys, "check", str(space), "--set", "k")
    assert rc == 2 and "--set expects name=value" in err
    rc, _, err = run(capsys, "check", str(space), "--set", "k=1 +")
    assert rc == 2 and "<--set k>:1:" in err
    rc, _, err = run(capsys, "check", str(space), "--set", "k=9")
    assert rc == 2 and "outside the range of 'k'" in err and f"{space}:1:" in err


def test_missing_file(capsys, tmp_path):
    rc, _, err = run(capsys, "check", str(tmp_path / "missing.arch"))
    assert rc == 2 and "cannot read" in err


def test_internal_errors_exit_3_without_a_traceback(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_check", boom)
    monkeypatch.delenv("ARCHDSL_DEBUG", raising=False)
    rc, _, err = run(capsys, "check", TINY)
    assert rc == 3 and "internal error: RuntimeError: boom" in err and "Traceback" not in err


def test_real_process_exit_codes_and_stderr(bad):
    """`python -m archdsl.cli` as a user runs it: status 2, file:line:col on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "archdsl.cli", "check", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{bad}:3:16: error: unknown op 'dwcov'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    proc = subprocess.run([sys.executable, "-m", "archdsl.cli", "check", TINY, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["params"] == TINY_PARAMS
