"""The pass manager: order and names, selection, IR dumps, verification between passes, structure-only
runs, and the CLI / API entry points of deploy mode."""
from __future__ import annotations

import json

import pytest
import torch
from deploy_testing import compile_text, example_input, randomize

import archdsl
from archdsl import cli
from archdsl.errors import ArchError
from archdsl.ir.graph import totals
from archdsl.ir.printer import dump
from archdsl.passes import DEPLOY_PIPELINE, PassResult, pipeline, run_pipeline, split_state

NAMES = ["eliminate_identities", "fold_kernels", "reparam_branches", "fold_bn", "fold_un", "fold_affine",
         "fold_grn_bias", "cse", "select_kernels", "sparse_kernels", "lower_precision",
         "group_fusion"]
SRC = """model t(classes = 5) { input x[4, 10, 10]
  conv(8, k = 3, bias = false) >> bn >> relu >> dropout(0.1)
  residual { replk(7, 3) >> bn >> linear(8) >> layerscale(0.1) }
  gap >> linear(classes)
}"""


def test_pipeline_is_a_flat_named_list():
    assert [p.__name__ for p in DEPLOY_PIPELINE] == NAMES
    assert all(p.__module__ == f"archdsl.passes.{p.__name__}" for p in DEPLOY_PIPELINE)  # one module per pass


def test_select_and_disable_keep_pipeline_order():
    G = archdsl.build(SRC)
    _, _, res = run_pipeline(G, None, select=["group_fusion", "fold_bn"])
    assert [r.name for r in res] == ["fold_bn", "group_fusion"]
    _, _, res = run_pipeline(G, None, disable=["cse", "fold_kernels"])
    assert [r.name for r in res] == [n for n in NAMES if n not in ("cse", "fold_kernels")]
    with pytest.raises(ArchError, match="unknown pass 'fold_nb'") as err:
        run_pipeline(G, None, select=["fold_nb"])
    assert "fold_bn" in err.value.hint


def test_dump_dir_gets_one_file_per_pass(tmp_path):
    G = archdsl.build(SRC)
    lines = []
    D, _, _ = run_pipeline(G, None, dump_dir=tmp_path / "ir", log=lines.append)
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == [f"{i:02d}_{n}.ir" for i, n in enumerate(NAMES, 1)]
    assert (tmp_path / "ir" / f"{len(NAMES):02d}_group_fusion.ir").read_text() == dump(D)
    assert sum(line.startswith(tuple(NAMES)) for line in lines) == len(NAMES)


def test_verifier_runs_after_each_pass_and_names_it(monkeypatch):
    def broken(G, weights):
        """leaves a dead node"""
        from archdsl.ir.graph import add_op

        add_op(G, "orphan", "relu", ["x"], shape=G.nodes["x"]["shape"])
        return PassResult()

    monkeypatch.setattr(pipeline, "DEPLOY_PIPELINE", [broken])
    monkeypatch.setattr(pipeline, "PASSES", {"broken": broken})
    with pytest.raises(ArchError, match="after pass broken: IR check failed at 'orphan'"):
        run_pipeline(archdsl.build(SRC), None)


def test_weights_are_checked_after_each_pass(monkeypatch):
    def drops_a_tensor(G, weights):
        """forgets a conv's weight"""
        weights["conv"] = {}
        return PassResult()

    monkeypatch.setattr(pipeline, "DEPLOY_PIPELINE", [drops_a_tensor])
    monkeypatch.setattr(pipeline, "PASSES", {"drops_a_tensor": drops_a_tensor})
    m = compile_text(SRC)
    with pytest.raises(ArchError, match="after pass drops_a_tensor: weights check failed at 'conv'"):
        run_pipeline(m.archdsl_ir, split_state(m.archdsl_ir, m.state_dict()))


def test_structure_only_run_matches_the_weighted_one_and_inputs_stay_untouched():
    m = randomize(compile_text(SRC))
    before_ir, before_state = dump(m.archdsl_ir), {k: v.clone() for k, v in m.state_dict().items()}
    d = m.deploy()
    assert dump(run_pipeline(m.archdsl_ir, None)[0]) == dump(d.archdsl_ir)
    assert dump(m.archdsl_ir) == before_ir
    assert all(torch.equal(before_state[k], v) for k, v in m.state_dict().items())
    x = example_input(m)
    with torch.no_grad():
        torch.testing.assert_close(d(x), m.eval()(x), rtol=1e-10, atol=1e-12)
    assert [r.name for r in d.pass_results] == NAMES


def test_compile_deploy_mode_and_module_deploy():
    torch.manual_seed(0)
    d = archdsl.compile(SRC, mode="deploy", classes=3)
    assert not d.training and totals(d.archdsl_ir)["params"] == sum(p.numel() for p in d.parameters())
    assert {d_["op"] for _, d_ in d.archdsl_ir.nodes(data=True)} >= {"fused"}
    assert d.deploy(select=["group_fusion"]).archdsl_ir.number_of_nodes() == d.archdsl_ir.number_of_nodes()


# ---- CLI ------------------------------------------------------------------------------------------------

@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "t.arch"
    path.write_text(SRC)
    return str(path)


def test_cli_check_deploy_json(arch_file, capsys):
    assert cli.main(["check", arch_file, "--json"]) == 0
    train = json.loads(capsys.readouterr().out)
    assert cli.main(["check", arch_file, "--mode", "deploy", "--json", "--disable-pass", "group_fusion"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mode"] == "deploy" and [p["pass"] for p in info["passes"]] == NAMES[:-1]
    assert info["params"] == totals(run_pipeline(archdsl.build(SRC), None, disable=["group_fusion"])[0])["params"]
    assert info["params"] < train["params"] and info["macs"] < train["macs"]


def test_cli_compile_deploy_with_dump_and_weights(arch_file, tmp_path, capsys):
    out, weights, ir = tmp_path / "t.py", tmp_path / "t.pt", tmp_path / "ir"
    assert cli.main(["compile", arch_file, "--mode", "deploy", "-o", str(out), "--weights", str(weights),
                     "--dump-ir", str(ir), "--passes", "fold_bn,reparam_branches"]) == 0
    assert sorted(p.name for p in ir.iterdir()) == ["03_reparam_branches.ir", "04_fold_bn.ir"]
    state = torch.load(weights)
    assert not any("lkb_origin" in k or ".bn." in k for k in state)
    assert "class T(" in out.read_text()


def test_cli_list_passes_and_flag_errors(arch_file, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["compile", "--list-passes"])
    assert done.value.code == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in listed] == NAMES
    assert cli.main(["check", arch_file, "--passes", "fold_bn"]) == 2  # a deploy option in train mode
    assert "--mode deploy" in capsys.readouterr().err
    assert cli.main(["check", arch_file, "--mode", "deploy", "--passes", "fold_nb"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" in err and "'fold_bn'" in err
