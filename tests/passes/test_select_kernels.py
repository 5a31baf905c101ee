"""select_kernels alone: large depthwise convs become FFT convolutions with the same weights and outputs."""
import torch
from deploy_testing import compile_text, randomize, result

import archdsl


def test_large_depthwise_conv_becomes_fft_and_agrees():
    m = randomize(compile_text("model t() { input x[6, 20, 17]\n dwconv(31) >> dwconv(7) >> dwconv(15, stride = 2) }"))
    d = m.deploy(select=["select_kernels"])
    ops = {n: d.archdsl_ir.nodes[n]["op"] for n in d.archdsl_ir if n.startswith("dwconv")}
    assert ops == {"dwconv": "dwconv_fft", "dwconv_1": "dwconv", "dwconv_2": "dwconv"}
    declined = dict(result(d, "select_kernels").declined)
    assert "stride-1" in declined["dwconv_2"]
    x = torch.randn(2, 6, 20, 17, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(d(x), m.eval()(x), rtol=1e-10, atol=1e-10)


def test_thirteen_wide_kernel_only_on_small_maps():
    G = archdsl.build("model t() { input x[4, 40, 40]\n dwconv(13) >> conv(4, k = 3, stride = 3) >> dwconv(13) }")
    from archdsl.passes.pipeline import run_pipeline

    D, _, _ = run_pipeline(G, None, select=["select_kernels"])
    assert D.nodes["dwconv"]["op"] == "dwconv"  # 40 x 40 map: direct is faster
    assert D.nodes["dwconv_1"]["op"] == "dwconv_fft"  # 14 x 14 map: the FFT is


def test_replknet_deploy_keeps_its_parameter_count():
    G = archdsl.build(archdsl.parse("searchspaces/models/replknet_31b.arch"))
    from archdsl.passes.pipeline import run_pipeline

    D, _, _ = run_pipeline(G, None)
    assert sum(D.nodes[n]["op"] == "dwconv_fft" for n in D) == 24  # every 31/29/27 and 7x7-map 13 kernel
    assert sum(D.nodes[n]["params"] for n in D) == 79_390_824
