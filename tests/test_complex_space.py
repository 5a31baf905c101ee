"""searchspaces/image2d_complex.arch: every option builds, compiles, trains a step and runs; the complex network and
its real counterpart have exactly the same parameter count (CReLU / zReLU) at every width and kernel size."""
from __future__ import annotations

import pytest

import archdsl
from archdsl.ir.graph import totals
from tests.test_searchspaces import ROOT, _dims, _options, _run

PROGRAM = archdsl.parse(ROOT / "image2d_complex.arch")
DIMS = _dims(PROGRAM, {})


@pytest.mark.parametrize("overrides", [pytest.param({n: v}, id=f"{n}={v}") for n, d in DIMS.items()
                                       for v in _options(d)])
def test_every_option_builds_compiles_and_runs(overrides):
    _run(PROGRAM, (1, 8, 8), overrides)


@pytest.mark.parametrize("width", [4, 8, 12])
@pytest.mark.parametrize("k", [3, 5])
def test_complex_and_real_networks_have_equal_parameter_counts(width, k):
    def params(net, act):
        return totals(archdsl.build(PROGRAM, net=net, width=width, k=k, act=act))["params"]

    for act in ("crelu", "zrelu"):
        assert params("complex_stage", act) == params("real_stage", act)
    # modReLU's learnable biases: w per activation, two activations
    assert params("complex_stage", "modrelu") == params("real_stage", "modrelu") + 2 * width
    # and the complex conv is not secretly the grouped real one: their MACs differ by the cross terms
    c = totals(archdsl.build(PROGRAM, net="complex_stage", width=width, k=k))["macs"]
    r = totals(archdsl.build(PROGRAM, net="real_stage", width=width, k=k))["macs"]
    assert c > r
