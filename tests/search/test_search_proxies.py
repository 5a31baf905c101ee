"""Zero-cost proxies on a freshly initialised network: finite, deterministic, blind to a dead network, and
harmless to the module they score."""
from __future__ import annotations

import math

import pytest
import torch

import archdsl
from archdsl.search.proxies import PROXIES, grad_norm, naswot, synflow

NET = """
model net(width = 8) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  body: conv(width, k = 3) >> relu
  head: gap >> linear(10)
}
"""


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return archdsl.compile(archdsl.build(archdsl.parse(NET, file="<net>")))


def _zero(module, prefix: str):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(prefix):
                p.zero_()
    return module


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_proxies_are_finite_deterministic_and_leave_the_module_alone(name, batch):
    x, y = batch
    module = _net()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    a = PROXIES[name](module, x, y)
    b = PROXIES[name](module, x, y)
    assert isinstance(a, float) and math.isfinite(a)
    assert a == pytest.approx(b, rel=1e-6)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None or not p.grad.abs().sum() for p in module.parameters())


def test_synflow_is_lower_with_a_zeroed_layer(batch):
    x, y = batch
    alive = synflow(_net(), x, y)
    dead = synflow(_zero(_net(), "body"), x, y)
    assert alive > 0 and dead < alive
    assert synflow(_zero(_net(), ""), x, y) == 0.0  # nothing left to flow


def test_naswot_is_lower_when_every_input_gets_the_same_code(batch):
    x, y = batch
    alive = naswot(_net(), x, y)
    dead = naswot(_zero(_net(), "stem"), x, y)  # every ReLU sees 0: one code for the whole batch
    assert alive > dead


def test_grad_norm_is_positive_and_zero_without_signal(batch):
    x, y = batch
    assert grad_norm(_net(), x, y) > 0
    # every weight zero: only the last bias gets a gradient (softmax minus one-hot), nothing flows further
    assert grad_norm(_zero(_net(), ""), x, y) < grad_norm(_net(), x, y)
