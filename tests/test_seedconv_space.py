"""searchspaces/image2d_seedconvs.arch: every option of every dimension builds, compiles (in memory and as emitted
Python source), trains a step and runs; deployed, each computes what the trained module does."""
from __future__ import annotations

import pytest

import archdsl
from archdsl.passes.sparse_kernels import threshold
from tests.test_searchspaces import ROOT, _dims, _options, _run, emitted_and_deployed_agree

FILE = "image2d_seedconvs.arch"
SHAPE = (1, 8, 8)
PROGRAM = archdsl.parse(ROOT / FILE)
DIMS = _dims(PROGRAM, {})
POINTS = [pytest.param({name: value}, id=f"{name}={value}") for name, dim in DIMS.items() for value in _options(dim)]


def test_the_space_offers_every_new_convolution():
    mixers = " ".join(DIMS["mixer1"].labels + DIMS["mixer2"].labels)
    for op in ("deform", "bcos", "orthoconv", "arconv", "fdconv", "tdconv", "max_offset", "tucker"):
        assert op in mixers
    assert any("sparsepw" in label for label in DIMS["fc"].labels)
    assert {"rank", "sparsity", "b"} <= set(DIMS)


@pytest.mark.parametrize("overrides", POINTS)
def test_every_option_builds_compiles_and_runs(overrides, tmp_path):
    emitted_and_deployed_agree(_run(PROGRAM, SHAPE, overrides), SHAPE, tmp_path)


def test_sparse_mlp_deploys_to_the_kernel_the_threshold_picks():
    least = threshold()[0]  # 70 % with the C kernel, 85 % on torch's CSR matmul (no C compiler)
    for sparsity in (0.9, 0.7):
        csr = sparsity >= least
        G = archdsl.build(PROGRAM, fc="sparsepw(sparsity = sparsity)", sparsity=sparsity, depth1=1, depth2=1)
        d = archdsl.compile(G, mode="deploy")
        res = next(r for r in d.pass_results if r.name == "sparse_kernels")
        assert (len(res.changed), len(res.declined)) == ((2, 0) if csr else (0, 2))
        assert sum(d.archdsl_ir.nodes[n]["op"] == "sparsepw_csr" for n in d.archdsl_ir) == (2 if csr else 0)
