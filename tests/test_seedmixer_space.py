"""searchspaces/image2d_seedmixers.arch: every mixer of its one searched slot, after either norm, builds, compiles in
memory and as emitted Python source, trains a step and runs; emitted and deployed, each computes what the
trained module does."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import archdsl
from codegen.python_source import emit
from tests.test_searchspaces import ROOT, _dims, _run

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


def _emitted(G, tmp_path):
    path = tmp_path / "model.py"
    path.write_text(emit(G))
    spec = importlib.util.spec_from_file_location(f"seedmix_{abs(hash(str(tmp_path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Model()


@pytest.mark.parametrize("overrides", POINTS)
def test_every_mixer_emits_and_deploys_to_the_same_function(overrides, tmp_path):
    G = _run(PROGRAM, SHAPE, overrides)
    torch.manual_seed(0)
    module = archdsl.compile(G).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    module.train()(x)  # norm statistics off their init
    module.eval()
    with torch.no_grad():
        want = module(x)
        emitted = _emitted(G, tmp_path).double().eval()
        emitted.load_state_dict(module.state_dict())
        torch.testing.assert_close(emitted(x), want)
        torch.testing.assert_close(module.deploy()(x), want, rtol=1e-9, atol=1e-10)
