"""select_kernels alone: large depthwise convs run in channels-last memory with the same weights and outputs."""
import torch
from deploy_testing import compile_text, randomize, result

import archdsl
from archdsl.passes.pipeline import run_pipeline


def test_large_depthwise_conv_switches_to_channels_last_and_agrees():
    m = randomize(compile_text("model t() { input x[6, 20, 17]\n dwconv(31) >> dwconv(7) >> dwconv(15, stride = 2) }"))
    d = m.deploy(select=["select_kernels"])
    ops = {n: d.archdsl_ir.nodes[n]["op"] for n in d.archdsl_ir if n.startswith("dwconv")}
    assert ops == {"dwconv": "dwconv_cl", "dwconv_1": "dwconv", "dwconv_2": "dwconv"}
    assert "stride-1" in dict(result(d, "select_kernels").declined)["dwconv_2"]
    x = torch.randn(2, 6, 20, 17, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(d(x), m.eval()(x), rtol=1e-10, atol=1e-10)


def test_one_d_and_small_kernels_stay():
    G = archdsl.build("model t() { input x[4, 40]\n dwconv(31) }")
    assert run_pipeline(G, None, select=["select_kernels"])[0].nodes["dwconv"]["op"] == "dwconv"
    G = archdsl.build("model t() { input x[4, 40, 40]\n dwconv(13) }")
    assert run_pipeline(G, None, select=["select_kernels"])[0].nodes["dwconv"]["op"] == "dwconv"


def test_replknet_deploy_keeps_its_parameter_count():
    G = archdsl.build(archdsl.parse("searchspaces/models/replknet_31b.arch"))
    D, _, _ = run_pipeline(G, None)
    assert sum(D.nodes[n]["op"] == "dwconv_cl" for n in D) == 22  # every 31/29/27 kernel; the 13s stay
    assert sum(D.nodes[n]["params"] for n in D) == 79_390_824
