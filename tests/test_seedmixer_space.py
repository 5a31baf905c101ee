"""searchspaces/image2d_seedmixers.arch: every mixer of its one searched slot, after either norm, builds, compiles in
memory and as emitted Python source, trains a step and runs; emitted and deployed, each computes what the
trained module does."""
from __future__ import annotations

import pytest

import archdsl
from tests.test_searchspaces import ROOT, _dims, _run, emitted_and_deployed_agree

FILE = "image2d_seedmixers.arch"
SHAPE = (1, 8, 8)
PROGRAM = archdsl.parse(ROOT / FILE)
DIMS = _dims(PROGRAM, {})
POINTS = [pytest.param({"mixer": m, "norm": n}, id=f"{m}|{n}") for m in DIMS["mixer"].labels
          for n in DIMS["norm"].labels]


def test_the_slot_offers_the_issue_16_mixers_and_the_old_ones():
    mixers = " ".join(DIMS["mixer"].labels)
    for op in ("msaconv", "ninformer_gate", "glmix", "dico", "convshare", "dwconv", "mhsa", '"none"', '"param"'):
        assert op in mixers
    assert any(label.startswith("un") for label in DIMS["norm"].labels)


@pytest.mark.parametrize("overrides", POINTS)
def test_every_mixer_emits_and_deploys_to_the_same_function(overrides, tmp_path):
    emitted_and_deployed_agree(_run(PROGRAM, SHAPE, overrides), SHAPE, tmp_path)
