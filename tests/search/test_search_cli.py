"""`archdsl search` on the command line: errors in the file or the options exit with status 2 and
file:line:col before any study exists; --objective, --constraint and --set change the search."""
from __future__ import annotations

import re

import optuna
import pytest
from searchutil import S, cli, cli_process, load_study, write_arch

import archdsl
from archdsl.frontend.choices import DefaultResolver
from archdsl.ir.cost import summary
from archdsl.ir.printer import ir_hash

MODEL = """
model net(width = choice(4, 8), depth = int(1, 2), hidden = 16) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  body: repeat depth { conv(width, k = 3) >> relu }
  head: gap >> linear(hidden) >> relu >> linear(10)
}
"""


def _space(tmp_path, search_body: str, over: str = "digits"):
    return write_arch(tmp_path, MODEL + f"\nsearch s over {over} {{\n{search_body}\n}}\n")


def _line_of(path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _no_study(out):
    assert not (out / "study.db").exists()


def test_unreadable_data_set_is_reported_before_the_study(tmp_path):
    arch = _space(tmp_path, "  maximize accuracy(epochs = 1)\n  trials = 2", over='npz("missing.npz")')
    out = tmp_path / "out"
    rc, stdout, stderr = cli("search", arch, "--out", out, "--quiet")
    assert rc == 2, stderr
    line = _line_of(arch, "search s over")
    # the data path is relative to the .arch file (like an import), and the message names it in full
    missing = re.escape(str(tmp_path / "missing.npz"))
    assert re.match(rf"{re.escape(str(arch))}:{line}:\d+: error: cannot read data set {missing}", stderr), stderr
    assert "Traceback" not in stderr
    _no_study(out)


def test_exit_status_through_the_real_command(tmp_path):
    arch = _space(tmp_path, "  maximize accuracy(epochs = 1)", over='npz("missing.npz")')
    proc = cli_process("search", arch, "--out", tmp_path / "out", "--quiet")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and f"{arch}:" in stderr and "cannot read data set" in stderr


def test_npz_data_set_with_too_few_rows(tmp_path):
    import numpy as np

    np.savez(tmp_path / "tiny.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.zeros(3, np.int64))
    arch = _space(tmp_path, "  maximize accuracy(epochs = 1)", over=f'npz("{tmp_path / "tiny.npz"}")')
    rc, _, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2 and "10 rows at least" in stderr and f"{arch}:" in stderr


def test_unknown_objective(tmp_path):
    arch = _space(tmp_path, "  maximize acuracy(epochs = 1)")
    out = tmp_path / "out"
    rc, _, stderr = cli("search", arch, "--out", out, "--quiet")
    assert rc == 2
    line = _line_of(arch, "acuracy")
    assert re.match(rf"{re.escape(str(arch))}:{line}:\d+: error: unknown objective 'acuracy'", stderr), stderr
    assert "accuracy" in stderr.split("hint:")[1]
    _no_study(out)


def test_objective_with_an_unknown_argument(tmp_path):
    arch = _space(tmp_path, "  maximize accuracy(epoch = 1)")
    rc, _, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2 and "accuracy() has no argument 'epoch'" in stderr and "epochs" in stderr


def test_constraint_with_an_unknown_metric(tmp_path):
    arch = _space(tmp_path, "  maximize accuracy(epochs = 1)\n  constraint flops < 1M")
    out = tmp_path / "out"
    rc, _, stderr = cli("search", arch, "--out", out, "--quiet")
    assert rc == 2
    line = _line_of(arch, "flops")
    assert re.match(rf"{re.escape(str(arch))}:{line}:\d+: error: constraint uses 'flops', which is not a metric",
                    stderr), stderr
    _no_study(out)
    # the same from the command line points into the option's text
    arch = _space(tmp_path, "  maximize accuracy(epochs = 1)")
    rc, _, stderr = cli("search", arch, "--out", out, "--quiet", "--constraint", "latncy < 5")
    assert rc == 2 and stderr.startswith("<--constraint 1>:1:") and "'latncy'" in stderr and "latency" in stderr
    _no_study(out)


def test_no_search_section(tmp_path):
    arch = write_arch(tmp_path, MODEL)
    rc, _, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2 and "has no search section" in stderr


def test_objective_option_replaces_the_files_objectives(tmp_path):
    arch = _space(tmp_path, "  maximize accuracy(epochs = 3)\n  minimize params\n  trials = 2")
    out = tmp_path / "out"
    rc, stdout, stderr = cli("search", arch, "--out", out, "--quiet", "--objective", "maximize accuracy(epochs = 1)")
    assert rc == 0, stderr
    study = load_study(out, "s")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    assert study.user_attrs["objectives"] == ["maximize accuracy"]
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == S.COMPLETE and len(t.user_attrs["val_curve"]) == 1  # one epoch, not three
    # a bad objective in the option points into the option text
    rc, _, stderr = cli("search", arch, "--out", tmp_path / "o2", "--quiet", "--objective", "maximize acuracy")
    assert rc == 2 and stderr.startswith("<--objective 1>:1:") and "unknown objective 'acuracy'" in stderr
    # and the study remembers its objectives: another set is refused for the same folder
    rc, _, stderr = cli("search", arch, "--out", out, "--quiet", "--objective", "minimize params")
    assert rc == 2 and "was created with objectives" in stderr


def test_set_pins_a_dimension_and_a_plain_parameter(tmp_path):
    arch = _space(tmp_path, "  minimize params\n  trials = 4")
    out = tmp_path / "out"
    rc, stdout, stderr = cli("search", arch, "--out", out, "--quiet", "--sampler", "random",
                             "--set", "width=8", "--set", "hidden=32")
    assert rc == 0, stderr
    study = load_study(out, "s")
    program = archdsl.parse(arch)
    assert len(study.trials) == 4
    for t in study.trials:
        assert t.state == S.COMPLETE
        assert set(t.params) == {"depth"}  # width is pinned: not a dimension of the study
        G = archdsl.build(program, resolver=DefaultResolver({**t.params, "width": 8, "hidden": 32}))
        assert ir_hash(G) == t.user_attrs["ir_hash"]
        assert t.user_attrs["params"] == summary(G)["params"] == t.values[0]
        text = t.user_attrs["arch"]
        assert "width = 8" in text and "hidden = 32" in text
        assert ir_hash(archdsl.build(archdsl.parse(text, file="<arch>"))) == t.user_attrs["ir_hash"]


@pytest.mark.parametrize("sampler", ["grid", "tpe", "nsga2", "evolution"])
def test_samplers(tmp_path, sampler):
    arch = write_arch(tmp_path, """
        model net(width = choice(4, 8), act = choice(relu, gelu),
                  body = choice({ conv(8, k = 3) >> relu }, { conv(8, k = 1) >> gelu })) {
          input img[1, 8, 8]
          stem: conv(width, k = 3) >> act
          b: body
          head: gap >> linear(10)
        }
        search s over digits {
          minimize params
          minimize macs
          trials = 8
        }
    """)
    rc, _, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet", "--sampler", sampler)
    assert rc == 0, stderr
    study = load_study(tmp_path / "out", "s")
    assert len(study.trials) == 8 and all(t.state == S.COMPLETE for t in study.trials)
    # two block literals read the same ("{...}"): both are still reachable
    assert study.trials[0].distributions["body"].choices == ("{...} #1", "{...} #2")
    if sampler in ("grid", "evolution"):  # 2 x 2 x 2 points, each once (evolution redraws seen architectures)
        assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 8
    bodies = {t.user_attrs["arch"].split("body = ")[1].split("}")[0] for t in study.trials}
    if sampler in ("grid", "nsga2", "evolution"):
        assert bodies == {"{ conv(8, k = 3) >> relu ", "{ conv(8, k = 1) >> gelu "}
