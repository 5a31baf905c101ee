"""Issue 13, as a user (or an attacker) hits it: every bad input or bad path is a clear error from the CLI
(status 2, file:line:col when there is a line), never a traceback or a hang; names and ops a file must not
reach are mangled or refused; sizes that cannot be allocated are refused before allocating."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.cli import main
from archdsl.errors import ArchError

ROOT = Path(__file__).resolve().parents[1]
HEAD = "model m() {\n  input x[4]\n"  # the statement under test is on line 3


def run(capsys, *argv) -> tuple[int, str]:
    """`archdsl ARGV` in-process: (status, stdout + stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "internal error" not in text, text
    return code, text


def arch(tmp_path, body: str, name: str = "net.arch") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + body + "\n}\n")
    return path


# ---- input files -----------------------------------------------------------------------------------------

def test_a_file_that_is_not_utf8_is_an_error_at_the_bad_byte(tmp_path, capsys):
    path = tmp_path / "net.arch"
    path.write_bytes(b"model m() {\n  input x[4]\n  relu  # caf\xe9\n}\n")
    code, text = run(capsys, "check", path)
    assert code == 2
    assert f"{path}:3:14: error: {path} is not UTF-8 text (byte 0xe9)" in text


def test_an_import_that_is_not_utf8_is_an_error_in_that_file(tmp_path, capsys):
    (tmp_path / "lib.arch").write_bytes(b"block b() {\n  \xff relu\n}\n")
    path = tmp_path / "net.arch"
    path.write_text('import "lib.arch"\n' + HEAD + "  b\n}\n")
    code, text = run(capsys, "check", path)
    assert code == 2 and f"{tmp_path / 'lib.arch'}:2:3: error:" in text and "not UTF-8" in text


def test_importing_a_non_arch_file_never_echoes_its_content(tmp_path, capsys):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:TOPSECRET:/root:/bin/bash\n")
    path = tmp_path / "net.arch"
    path.write_text(f'import "{secret}"\n' + HEAD + "  relu\n}\n")
    code, text = run(capsys, "check", path)
    assert code == 2
    assert f"{path}:1:1: error: cannot import '{secret}': only .arch files can be imported" in text
    assert "TOPSECRET" not in text


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_importing_a_device_is_refused_at_once(tmp_path, capsys, target):
    path = tmp_path / "net.arch"
    path.write_text(f'import "{target}"\n' + HEAD + "  relu\n}\n")
    code, text = run(capsys, "check", path)
    assert code == 2 and "only .arch files can be imported" in text


def test_a_device_or_fifo_named_like_an_arch_file_never_blocks(tmp_path):
    fifo = tmp_path / "blocks.arch"
    os.mkfifo(fifo)
    (tmp_path / "dev.arch").symlink_to("/dev/zero")
    main_file = tmp_path / "net.arch"
    main_file.write_text('import "blocks.arch"\n' + HEAD + "  relu\n}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for target in (main_file, tmp_path / "dev.arch", tmp_path):
        done = subprocess.run([sys.executable, "-m", "archdsl.cli", "check", str(target)], capture_output=True,
                              text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert ("not a regular file" in done.stderr) or ("is a directory" in done.stderr), done.stderr


def test_an_import_path_with_a_nul_character(tmp_path, capsys):
    path = tmp_path / "net.arch"
    path.write_text('import "a\x00b.arch"\n' + HEAD + "  relu\n}\n")
    code, text = run(capsys, "check", path)
    assert code == 2 and f"{path}:1:1: error:" in text and "NUL character" in text


def test_a_file_over_the_size_limit(tmp_path, capsys, monkeypatch):
    path = arch(tmp_path, "  relu" + " " * 500)
    monkeypatch.setenv("ARCHDSL_MAX_SOURCE_BYTES", "200")
    code, text = run(capsys, "check", path)
    assert code == 2 and "larger than 200 bytes" in text and "ARCHDSL_MAX_SOURCE_BYTES" in text


# ---- nesting, numbers, lists -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "if true {\n" * 300 + "relu\n" + "}\n" * 300,
    "  if false { relu }" + " else if false { relu }" * 400 + " else { relu }",
    "  y = " + "**".join(["1"] * 600) + "\n  relu",
    "  y = " + "[" * 400 + "1" + "]" * 400 + "\n  relu",
    "  " + "{ " * 400 + "relu" + " }" * 400,
])
def test_deep_nesting_is_an_error_not_a_recursion_crash(tmp_path, capsys, body):
    code, text = run(capsys, "check", arch(tmp_path, body))
    assert code == 2 and "nested too deeply" in text
    assert f"{tmp_path / 'net.arch'}:" in text.splitlines()[0]


@pytest.mark.parametrize("body, message", [
    ("  y = " + "1" * 5000 + "\n  relu", "(5000 characters) is too large"),
    ("  ln(eps = 1" + "0" * 400 + ")", "(401 characters) is too large"),
    ("  ln(eps = 1" + "0" * 400 + ".0)", "is too large"),
    ("  upsample(1" + "0" * 30 + ")", "number too large"),
    ("  y = round(1e300)\n  relu", "number too large: round(...)"),
    ("  y = float(0, 10 ** 400)\n  relu", "number too large: 10 ** 400"),
    ("  layerscale(1e300)", "layerscale(): attribute 'init' = 1e+300 does not fit in a 32-bit float"),
    ("  y = [1]\n  for i in 0..100 { y = y + y }\n  relu", "a list or string of 1048576 items is too long"),
    ('  y = "ab"\n  for i in 0..100 { y = y + y }\n  relu', "a list or string of 1048576 items is too long"),
])
def test_numbers_and_lists_that_do_not_fit_are_errors_at_their_line(tmp_path, capsys, body, message):
    code, text = run(capsys, "check", arch(tmp_path, body))
    assert code == 2 and message in text, text
    assert text.startswith(f"{tmp_path / 'net.arch'}:")


def test_a_huge_integer_through_set(tmp_path, capsys):
    path = tmp_path / "net.arch"
    path.write_text("model m(k = 1) {\n  input x[4]\n  relu\n}\n")
    code, text = run(capsys, "check", path, "--set", "k=" + "9" * 5000)
    assert code == 2 and text.startswith("<--set k>:1:1: error: number 9999") and "too large" in text


def test_a_long_line_is_quoted_around_the_error_only(tmp_path, capsys):
    code, text = run(capsys, "check", arch(tmp_path, "  y = " + "1" * 5000 + "\n  relu"))
    assert code == 2 and max(len(line) for line in text.splitlines()) < 150


def test_naming_is_linear_in_the_number_of_nodes(monkeypatch):
    """`repeat 200000 { relu }` took an hour: every name searched relu, relu_1, ... from the start again.
    Counted, not timed: name lookups per node must stay constant as the model grows."""
    from archdsl.frontend import elaborate

    lookups = []

    class Counting(set):
        def __contains__(self, item):
            lookups.append(1)
            return super().__contains__(item)

    real = elaborate.Elaborator.__init__

    def init(self, *a, **k):
        real(self, *a, **k)
        self.taken = Counting()

    monkeypatch.setattr(elaborate.Elaborator, "__init__", init)
    per_node = []
    for n in (500, 4000):
        lookups.clear()
        archdsl.build(archdsl.parse(HEAD + f"  repeat {n} {{ relu }}\n  b: repeat {n} {{ relu }}\n}}\n"))
        per_node.append(len(lookups) / (2 * n))
    assert per_node[1] <= per_node[0] + 0.01 and per_node[1] < 3, per_node


# ---- sizes -----------------------------------------------------------------------------------------------

def test_a_model_too_large_to_allocate_checks_but_does_not_compile(tmp_path, capsys):
    path = arch(tmp_path, "  relu\n  linear(1000000000000)")
    code, _ = run(capsys, "check", path)
    assert code == 0  # check only counts
    code, text = run(capsys, "compile", path, "-o", tmp_path / "m.py", "--weights", tmp_path / "w.pt")
    assert code == 2, text
    assert f"{path}:4:3: error: cannot build the model: it needs about 18.2 TiB" in text
    assert "'linear' (linear, 5,000,000,000,000 parameters)" in text and "ARCHDSL_MAX_MEMORY" in text
    code, text = run(capsys, "bench", path)
    assert code == 2 and "cannot run the model at batch 1" in text


def test_the_memory_limit_is_overridable(tmp_path, capsys, monkeypatch):
    path = arch(tmp_path, "  linear(1000)")  # 5,000 parameters: 20,000 bytes
    monkeypatch.setenv("ARCHDSL_MAX_MEMORY", "10k")
    code, text = run(capsys, "compile", path, "-o", tmp_path / "m.py", "--weights", tmp_path / "w.pt")
    assert code == 2 and "more than the 10.0 KiB allowed" in text
    monkeypatch.setenv("ARCHDSL_MAX_MEMORY", "1M")
    code, text = run(capsys, "compile", path, "-o", tmp_path / "m.py", "--weights", tmp_path / "w.pt")
    assert code == 0, text
    assert sum(t.numel() for t in torch.load(tmp_path / "w.pt").values()) == 5000
    code, text = run(capsys, "bench", path, "--batch", "1000", "--runs", "1")  # 2 x 1000 x 1000 x 4 bytes
    assert code == 2 and "activations at batch 1000" in text
    monkeypatch.setenv("ARCHDSL_MAX_MEMORY", "lots")
    code, text = run(capsys, "bench", path)
    assert code == 2 and "ARCHDSL_MAX_MEMORY='lots' is not a size" in text


# ---- names -----------------------------------------------------------------------------------------------

NAMES = [  # (source, the emitted class's name)
    ("model none() {\n  input torch[4]\n  linear(4) >> gelu\n}\n", "NoneNet"),
    ("model true() {\n  input self[4]\n  forward: linear(4) >> gelu\n  training: linear(3)\n}\n", "TrueNet"),
    ("model f() {\n  input F[4]\n  to = { linear(4) }\n  to\n  __class__: linear(3) >> gelu\n}\n", "FNet"),
    ("model linear() {\n  input nn[4]\n  state_dict: @precision(bf16) linear(4)\n  class: linear(2)\n}\n",
     "LinearNet"),  # the file defines archdsl's own Linear class
    ("block eval() { linear(4) }\nblock cuda() { eval >> eval }\n"
     "model precision() {\n  input math[4]\n  _modules: cuda\n  __init__: { type: @precision(bf16) linear(4) }\n"
     "  relu\n}\n", "PrecisionNet"),  # the file defines archdsl's Precision wrapper class
]


@pytest.mark.parametrize("src, class_name", NAMES)
def test_reserved_names_are_mangled_alike_in_the_emitted_and_in_memory_module(src, class_name):
    from codegen.python_source import emit

    G = archdsl.build(archdsl.parse(src))
    module = archdsl.compile(G).eval()
    namespace: dict = {}
    exec(compile(emit(G), "<emitted>", "exec"), namespace)  # our own generated file, as a user imports it
    emitted = namespace["Model"]().eval()
    assert list(emitted.state_dict()) == list(module.state_dict())  # same keys, same order
    emitted.load_state_dict(module.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(emitted(x), module(x))
    assert type(emitted).__name__ == class_name


def test_mangled_names_are_the_name_plus_an_underscore():
    G = archdsl.build(archdsl.parse(NAMES[1][0]))
    assert G.graph["input"] == "self_"
    assert {"forward_.linear", "training_.linear"} <= set(G.nodes)


# ---- ops and precisions a file cannot use ----------------------------------------------------------------

def _internal_ops():
    from archdsl.ops.registry import all_ops

    return [s.name for s in all_ops() if s.internal]


def test_the_compiler_internal_ops_are_the_ones_passes_insert():
    assert {"cast", "quantize", "fused", "int8_linear", "int8_conv"} <= set(_internal_ops())


@pytest.mark.parametrize("name", _internal_ops())
def test_a_file_cannot_call_an_internal_op(tmp_path, capsys, name):
    code, text = run(capsys, "check", arch(tmp_path, f"  relu >> {name}"))
    assert code == 2
    assert f"net.arch:3:11: error: '{name}' is internal to the compiler" in text


def test_ops_lists_no_internal_op(capsys):
    code, text = run(capsys, "ops")
    assert code == 0 and "conv" in text
    assert not any(f"\n│ {name} " in text for name in _internal_ops())


def test_a_precision_torch_cannot_run_is_refused_at_check_time(tmp_path, capsys):
    path = tmp_path / "net.arch"
    path.write_text("model m() {\n  input x[2, 4, 4, 4]\n  relu\n  @precision(fp16) poolmix\n}\n")
    code, text = run(capsys, "check", path)
    assert code == 2 and f"{path}:4:20: error: poolmix cannot run at fp16 on a 3-D input" in text


# ---- the CLI's output paths and counts -------------------------------------------------------------------

def _bad_paths(tmp_path):
    (tmp_path / "afile").write_text("x")
    return {"missing directory": tmp_path / "nope" / "out", "under a file": tmp_path / "afile" / "out",
            "a directory": tmp_path, "empty": "", "full disk": "/dev/full"}


@pytest.mark.parametrize("case", ["missing directory", "under a file", "a directory", "empty", "full disk"])
@pytest.mark.parametrize("command", ["compile -o", "compile --weights", "show -o", "check --dump-ir"])
def test_every_bad_output_path_is_an_error(tmp_path, capsys, case, command):
    src = arch(tmp_path, "  linear(4)")
    bad = _bad_paths(tmp_path)[case]
    if command == "check --dump-ir" and case in ("a directory", "missing directory"):
        return  # a directory is what --dump-ir wants (created with its parents when missing)
    verb, flag = command.split()
    argv = [verb, src, flag, bad]
    if verb == "compile" and flag != "-o":
        argv += ["-o", tmp_path / "m.py"]
    if flag == "--dump-ir":
        argv += ["--mode", "deploy"]
    if verb == "show" and case in ("missing directory", "under a file"):
        argv[3] = Path(str(bad) + ".dot")
    code, text = run(capsys, *argv)
    assert code == 2, text
    assert text.startswith("error: ") and (flag in text or "cannot draw to '/dev/full'" in text)


def test_an_output_never_overwrites_the_input(tmp_path, capsys):
    src = arch(tmp_path, "  relu")
    before = src.read_text()
    for argv in (["compile", src, "-o", src], ["compile", src, "-o", tmp_path / "m.py", "--weights", src],
                 ["compile", src, "-o", tmp_path / "m.py", "--weights", tmp_path / "m.py"],
                 ["show", src, "-o", tmp_path / "net.arch.dot"]):
        code, text = run(capsys, *argv)
        if argv[0] == "show":
            assert code == 0  # another file
            continue
        assert code == 2 and "would overwrite a file this command reads or writes" in text
    assert src.read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--runs", "0"], "argument --runs: must be 1 or more, got 0"),
    (["--warmup", "-5"], "argument --warmup: must be 0 or more, got -5"),
    (["--batch", "0"], "argument --batch: must be 1 or more, got 0"),
    (["--batch", "two"], "argument --batch: expected a whole number, got 'two'"),
])
def test_bench_counts_must_make_sense(tmp_path, capsys, argv, message):
    code, text = run(capsys, "bench", arch(tmp_path, "  relu"), *argv)
    assert code == 2 and message in text


# ---- messages --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, shown", [
    ("  linear(relu)", "got relu"),
    ("  linear(dwconv(3, k = 5))", "got dwconv(3, k=5)"),
    ("  a = { relu }\n  linear(a)", "got {...}"),
    ("  ln(eps = gelu)", "got gelu"),
])
def test_messages_show_values_as_arch_source_never_python_reprs(tmp_path, capsys, body, shown):
    code, text = run(capsys, "check", arch(tmp_path, body))
    assert code == 2 and shown in text
    assert "OpValue" not in text and "Closure" not in text and " at 0x" not in text


def test_a_file_without_a_model_gets_a_position(tmp_path, capsys):
    path = tmp_path / "lib.arch"
    path.write_text("block b() { relu }\n")
    code, text = run(capsys, "check", path)
    assert code == 2 and text.startswith(f"{path}:1:1: error: {path} defines no model (only blocks: b)")


def test_library_errors_are_arch_errors_too():
    with pytest.raises(ArchError, match="only .arch files"):
        archdsl.parse('import "/etc/hostname"\nmodel m() { input x[2] }\n')
