"""sparse_kernels alone: pruned 1x1 convs become CSR kernels above the measured sparsity threshold and dense
1x1 convs below it (saying why), both computing the trained layer."""
from __future__ import annotations

import torch
from deploy_testing import check_deploy, compile_text, ops, randomize, result, train_steps

import archdsl
from archdsl.ir.graph import totals
from archdsl.passes import run_pipeline
from archdsl.passes.sparse_kernels import MIN_SPARSITY, MIN_SPARSITY_TORCH


def _model(sparsity, shape="image[12, 5, 6]"):
    return compile_text(f"model t() {{ input {shape}\n sparsepw(10, sparsity = {sparsity}) >> gelu }}")


def test_sparse_enough_runs_as_csr_with_only_the_kept_weights():
    m = train_steps(randomize(_model(0.9)))
    d = check_deploy(m, select=["sparse_kernels"])
    assert ops(d) == ["sparsepw_csr", "gelu"]
    csr = d.get_submodule("sparsepw")
    keep = 120 - int(0.9 * 120)
    assert csr.values.numel() == keep and int(csr.crow[-1]) == keep
    assert totals(d.archdsl_ir)["params"] == keep + 10  # the kept weights and the bias
    assert "CSR measured faster" in result(d, "sparse_kernels").changed[0]


def test_below_the_threshold_a_dense_conv_and_the_reason():
    assert 0.5 < MIN_SPARSITY <= MIN_SPARSITY_TORCH
    m = randomize(_model(0.5, "seq[12, 9]"))
    d = check_deploy(m, select=["sparse_kernels"])
    assert ops(d) == ["conv", "gelu"]
    (node, why), = result(d, "sparse_kernels").declined
    assert node == "sparsepw" and "below" in why and "measured" in why
    w = d.get_submodule("sparsepw").weight
    assert int((w != 0).sum()) == 120 - int(0.5 * 120)


def test_batches_and_3d_inputs_agree():
    m = randomize(_model(0.95, "volume[12, 3, 4, 5]"))
    check_deploy(m, select=["sparse_kernels"], x=torch.randn(4, 12, 3, 4, 5, dtype=torch.float64))


def test_structure_only_run_counts_the_kept_weights():
    G = archdsl.build("model t() { input image[16, 4, 4]\n sparsepw(8, sparsity = 0.9, bias = false) }")
    D, _, (res,) = run_pipeline(G, None, select=["sparse_kernels"])
    assert D.nodes["sparsepw"]["op"] == "sparsepw_csr"
    assert D.nodes["sparsepw"]["params"] == 128 - int(0.9 * 128)
    assert D.nodes["sparsepw"]["macs"] == D.nodes["sparsepw"]["params"] * 16
