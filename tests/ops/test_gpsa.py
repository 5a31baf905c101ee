"""ConViT's positional attention scores, the `gpsa_pos` op: counts and scores worked out by hand, the official local
initialisation (facebookresearch/convit convit.py `GPSA.local_init`) and what it does, gradients, bad grids.
The library's `gpsa` block built on it is tested in tests/test_convit.py."""
from __future__ import annotations

import math

import pytest
import torch
from op_testing import build, flops_macs, gradcheck_module, nparams

import archdsl
from archdsl.errors import ArchError
from archdsl.ops.registry import get_op


def test_counts_by_hand():
    """4 heads on a 3 x 2 grid: pos_proj 3 * 4 + 4 parameters; 3 MACs per head and token pair, 4 * 6 * 6 pairs."""
    spec, a, m = build("gpsa_pos", {"heads": 4, "size": [3, 2]}, (5, 6))
    assert spec.params(a, [(5, 6)]) == 16 == nparams(m)
    assert spec.macs(a, [(5, 6)], (4, 6, 6)) == 3 * 4 * 36 == flops_macs(m, torch.randn(1, 5, 6))


def test_scores_counted_by_hand():
    """A 2 x 2 grid, one head, w = (1, 10, 100), b = 0.5: query 0 at (row 0, col 0) to key 3 at (1, 1) has
    dx = dy = 1, d^2 = 2 -> 1 + 10 + 200 + 0.5; query 3 to key 1 at (0, 1): dx = 0, dy = -1 -> -10 + 100 + 0.5."""
    _, _, m = build("gpsa_pos", {"heads": 1, "size": [2, 2]}, (3, 4))
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 10.0, 100.0]]))
        m.bias.fill_(0.5)
        s = m(torch.zeros(2, 3, 4))
    assert s.shape == (2, 1, 4, 4)
    assert s[1, 0, 0, 3] == 211.5 and s[0, 0, 3, 1] == 90.5 and s[0, 0, 2, 2] == 0.5


def test_local_init_is_the_official_one():
    """convit.py `GPSA.local_init` for 4 heads (a 2 x 2 kernel, centre 0.5): rows (2 (h2 - c), 2 (h1 - c), -1) for
    head h1 + 2 h2, scaled by locality_strength; bias zero."""
    spec = get_op("gpsa_pos")
    for strength in (1.0, 2.5):
        a = spec.bind([], {"heads": 4, "size": [3, 3], "locality_strength": strength}, [(8, 9)])
        cls, kw = spec.torch(a, [(8, 9)])
        m = cls(**kw)
        want = torch.tensor([[-1.0, -1, -1], [-1, 1, -1], [1, -1, -1], [1, 1, -1]]) * strength
        assert torch.equal(m.weight.detach(), want) and torch.equal(m.bias.detach(), torch.zeros(4))


def test_local_init_makes_each_head_attend_to_one_neighbour():
    """9 heads on a 5 x 5 grid: at init, head h1 + 3 h2's positional softmax from the centre peaks on the key at
    (dx, dy) = (h2 - 1, h1 - 1), and more sharply with a larger locality_strength."""
    spec = get_op("gpsa_pos")
    peaks = {}
    for strength in (1.0, 3.0):
        a = spec.bind([], {"heads": 9, "size": [5, 5], "locality_strength": strength}, [(4, 25)])
        cls, kw = spec.torch(a, [(4, 25)])
        attn = cls(**kw)(torch.zeros(1, 4, 25))[0, :, 12].softmax(-1)  # query 12: row 2, col 2
        for h1 in range(3):
            for h2 in range(3):
                assert attn[h1 + 3 * h2].argmax() == (2 + h1 - 1) * 5 + (2 + h2 - 1)
        peaks[strength] = attn.max(-1).values
    assert (peaks[3.0] > peaks[1.0]).all()


def test_gradients_of_the_projection():
    _, _, m = build("gpsa_pos", {"heads": 3, "size": [2, 3]}, (4, 6))
    assert gradcheck_module(m.double(), torch.randn(2, 4, 6, dtype=torch.float64))


@pytest.mark.parametrize("size", [[3], [0, 3], [2, 2, 2], "3x3"])
def test_a_grid_that_is_not_two_sizes_is_refused(size):
    with pytest.raises(ArchError, match=r"\[H, W\]"):
        get_op("gpsa_pos").bind([], {"heads": 2, "size": size}, [(4, 9)])
