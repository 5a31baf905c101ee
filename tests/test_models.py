"""The reference models: exact published parameter counts (IR and compiled module), MACs within 2% of the
published numbers, and one forward pass each at 224x224."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.ir.graph import totals

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"

# name: (parameters as published by timm / torchvision, MACs as published (GMACs at 224x224))
PUBLISHED = {
    "convnext_t": (28_589_128, 4.47e9),
    "convformer_s18": (26_774_448, 3.96e9),
    "caformer_s18": (26_341_656, 4.13e9),
    "poolformerv2_s12": (11_891_712, 1.83e9),
    "resnet50": (25_557_032, 4.09e9),
    # deeplab2 moat_test.py ('moat0_pretrain_224_1k'); its 5.7B "FLOPs" are the TF profiler's float ops / 2
    "moat_0": (27_846_892, 5.7e9),
}


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def model(request):
    name = request.param
    G = archdsl.build(archdsl.parse(MODELS / f"{name}.arch"))
    return name, G, archdsl.compile(G)


def test_input_and_output_shapes_in_the_ir(model):
    name, G, _ = model
    assert G.nodes[G.graph["input"]]["shape"] == (3, 224, 224)
    assert G.nodes[G.graph["output"]]["shape"] == (1000,)
    assert G.graph["name"] == name


def test_exact_parameter_count_in_the_ir(model):
    name, G, _ = model
    assert totals(G)["params"] == PUBLISHED[name][0]


def test_exact_parameter_count_of_the_compiled_module(model):
    name, _, module = model
    assert sum(p.numel() for p in module.parameters()) == PUBLISHED[name][0]


def test_macs_within_two_percent_of_published(model):
    name, G, _ = model
    macs = totals(G)["macs"]
    assert abs(macs - PUBLISHED[name][1]) <= 0.02 * PUBLISHED[name][1], f"{name}: {macs:,} MACs"


def test_forward_at_224(model):
    name, _, module = model
    module.eval()
    torch.manual_seed(0)
    with torch.inference_mode():
        y = module(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000)
    assert torch.isfinite(y).all()
