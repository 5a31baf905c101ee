"""The MetaFormer reference models against timm's implementation (optional: skipped when timm is absent).

timm's weights are copied into our model in forward order (a 1x1 conv's weight into our linear's; our
residual scale, which the .arch writes before its branch, after the branch as timm registers it) and both
run in float64 on the same input: every norm's eps, every bias and every scale must agree to ~1e-10.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archdsl

timm = pytest.importorskip("timm")

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"


def _in_timm_order(keys: list[str]) -> list[str]:
    """Our state_dict keys with each branch's residual scale moved after the branch's own parameters."""
    out, pending = [], []
    for key in keys:
        if key.endswith("resscale.gamma"):
            pending.append((key.rsplit(".resscale.", 1)[0], key))
            continue
        while pending and not key.startswith(pending[0][0] + "."):
            out.append(pending.pop(0)[1])
        out.append(key)
    return out + [key for _, key in pending]


@pytest.mark.parametrize("name", ["convformer_s18", "caformer_s18", "poolformerv2_s12"])
def test_same_weights_same_outputs_as_timm_in_float64(name):
    ours = archdsl.compile(archdsl.parse(MODELS / f"{name}.arch"), size=64).double().eval()
    theirs = timm.create_model(name, pretrained=False).double().eval()
    src = theirs.state_dict()
    keys = _in_timm_order(list(ours.state_dict()))
    assert len(keys) == len(src), (len(keys), len(src))
    state = {}
    for key, (their_key, value) in zip(keys, src.items()):
        target = ours.state_dict()[key]
        assert target.numel() == value.numel(), (key, their_key, tuple(target.shape), tuple(value.shape))
        state[key] = value.reshape(target.shape)
    ours.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-9, atol=1e-9)
