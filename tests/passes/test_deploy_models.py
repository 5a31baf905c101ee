"""End to end: every reference model, trained a few SGD steps in train mode, then deployed; the deploy module
computes what the train module computes in eval mode. And RepLKNet-31B's re-parameterized size."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deploy_testing import check_deploy, train_steps

import archdsl
from archdsl.ir.graph import totals
from archdsl.passes import run_pipeline

MODELS = Path(__file__).resolve().parents[2] / "searchspaces" / "models"
FILES = [f for f in sorted(MODELS.glob("*.arch")) if archdsl.parse(f).models]


def small(file: Path):
    """The model at 32x32 with 10 classes and two blocks in stages 0 and 2, one in the others (every op and
    structure of the model, blocks sharing a stage included, at a fraction of the parameters and time)."""
    program = archdsl.parse(file)
    params = {p.name for p in program.model().params}
    # `feature`: the 3-D U-net's base width (swin_unet3d), halved: at 32^3 its full-resolution convs dominate
    overrides = {k: v for k, v in (("size", 32), ("classes", 10), ("depths", [2, 1, 2, 1]), ("feature", 6))
                 if k in params}
    torch.manual_seed(0)
    return archdsl.compile(program, **overrides)


@pytest.mark.parametrize("file", FILES, ids=[f.stem for f in FILES])
def test_trained_model_deploys_to_the_same_function(file):
    m = train_steps(small(file), steps=2, lr=0.01, batch=4)
    d = check_deploy(m, tol=1e-5)
    train, deploy = totals(m.archdsl_ir), totals(d.archdsl_ir)
    assert deploy["macs"] <= train["macs"]
    assert d.archdsl_ir.number_of_nodes() < m.archdsl_ir.number_of_nodes()  # every model has something to fuse


REPLKNET = MODELS / "replknet_31b.arch"


@pytest.mark.skipif(not REPLKNET.exists(), reason="searchspaces/models/replknet_31b.arch not written yet")
def test_replknet_31b_parameter_counts():
    G = archdsl.build(REPLKNET)
    assert totals(G)["params"] == 79_864_168  # as trained
    # The paper's re-parameterization (merge_kernel of every ReparamLargeKernelConv): 79,527,272.
    assert totals(run_pipeline(G, None, select=["reparam_branches"])[0])["params"] == 79_527_272
    # The deploy pipeline also folds each BN into its conv: a conv_bn's BN (2C) becomes a conv bias (C), 88,320
    # channels; a pre-BN before a 1x1 conv (2C) vanishes into it, 2 per block pair of C channels, 48,128.
    D = run_pipeline(G, None)[0]
    assert totals(D)["params"] == 79_527_272 - 88_320 - 48_128 == 79_390_824
    ops = [op for _, d in D.nodes(data=True) for op in (d["attrs"].ops if d["op"] == "fused" else [d["op"]])]
    # 1 BN left: the head's (before gap); the 22 large depthwise kernels run channels-last (select_kernels)
    assert ops.count("bn") == 1 and ops.count("conv") + ops.count("dwconv_cl") == 4 + 3 * 2 + 24 * 5
    assert ops.count("dwconv_cl") == 22
