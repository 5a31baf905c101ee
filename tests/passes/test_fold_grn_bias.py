"""fold_grn_bias: GRN's beta moves into the next linear layer (UniRepLKNet's deploy form), exactly, and
UniRepLKNet-T deploys to the official parameter count."""
from __future__ import annotations

from pathlib import Path

import archdsl
from archdsl.ir.graph import totals
from deploy_testing import check_deploy, compile_text, ops, randomize, result

MODELS = Path(__file__).resolve().parents[2] / "searchspaces" / "models"
BLOCK = "model m() {{\n  input x[6, 5, 4]\n  linear(12) >> gelu >> grn >> {after}\n}}\n"


def test_grn_then_linear_keeps_the_output_and_drops_beta():
    for after in ("linear(6)", "linear(6, bias = false) >> bn"):
        module = randomize(compile_text(BLOCK.format(after=after)))
        deploy = check_deploy(module)
        G = deploy.archdsl_ir
        grn = next(n for n, d in G.nodes(data=True) if d["op"] == "grn")
        assert G.nodes[grn]["attrs"].bias is False and G.nodes[grn]["params"] == 12  # gamma only
        assert result(deploy, "fold_grn_bias").changed


def test_no_fold_when_grn_has_another_reader_or_no_linear_follows():
    for src in (BLOCK.format(after="gelu >> linear(6)"),
                "model m() {\n  input x[6, 5, 4]\n  a: grn\n  linear(6) >> concat($a)\n}\n"):
        deploy = check_deploy(randomize(compile_text(src)))
        assert not result(deploy, "fold_grn_bias").changed and result(deploy, "fold_grn_bias").declined
        assert "grn" in ops(deploy)


def test_grn_without_bias_has_one_parameter_per_channel():
    G = archdsl.build("model m() {\n  input x[6, 5]\n  grn(bias = false)\n}\n")
    assert totals(G)["params"] == 6


def test_unireplknet_t_has_the_official_parameter_counts_in_training_and_deploy():
    # The official AILab-CVC/UniRepLKNet unireplknet.py: unireplknet_t() has 31,693,420 parameters; after its
    # reparameterize_unireplknet() (branches and BNs folded, GRN's bias in the next linear) 31,037,980.
    program = archdsl.parse(MODELS / "unireplknet_t.arch")
    G = archdsl.build(program)
    assert totals(G)["params"] == 31_693_420
    from archdsl.passes import run_pipeline

    deploy, _, _ = run_pipeline(G, None)
    assert totals(deploy)["params"] == 31_037_980


def test_a_small_unireplknet_deploys_exactly():
    module = randomize(compile_text(MODELS / "unireplknet_t.arch", dims=[8, 16, 32, 64], size=32, classes=10))
    deploy = check_deploy(module, tol=1e-9)
    assert "grn" in ops(deploy) and "bn" not in ops(deploy)
