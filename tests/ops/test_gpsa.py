"""ConViT's gated positional self-attention: the `gpsa_pos` op (positional scores, local init) against positions
counted here, and the library's `gpsa` block against a float64 loop over heads and queries written from the
official formula (facebookresearch/convit convit.py `GPSA.get_attention`), renormalisation included."""
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


# ---- the library's gpsa block -----------------------------------------------------------------------------------

def _block(dim, heads, size, qkv_bias=False):
    n = size[0] * size[1]
    src = (f'import "attention"\nmodel g() {{ input x[{dim}, {n}]\n gpsa({dim}, {heads}, {size}, '
           f'qkv_bias = {str(qkv_bias).lower()}) }}')
    torch.manual_seed(0)
    m = archdsl.compile(archdsl.build(archdsl.parse(src))).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.4 * torch.randn_like(p))
    return m.eval(), src


def ref_gpsa(x, p, pre, heads, size):
    """The official GPSA, one head and one query at a time: content softmax(q.k / sqrt(hd)), positional
    softmax(w . (dx, dy, dx^2 + dy^2) + b), (1 - sigmoid(g)) * content + sigmoid(g) * positional, divided by its sum
    over the keys, weights v; then proj. x (B, C, N) -> (B, C, N), float64."""
    b_, c, n = x.shape
    hd = c // heads
    w = lambda name: p[f"{pre}.{name}"]  # noqa: E731
    qk = torch.einsum("oc,bcn->bon", w("qk.linear.weight"), x)
    v = torch.einsum("oc,bcn->bon", w("v.linear.weight"), x)
    if f"{pre}.qk.linear.bias" in p:
        qk, v = qk + w("qk.linear.bias")[:, None], v + w("v.linear.bias")[:, None]
    grid = [(r, col) for r in range(size[0]) for col in range(size[1])]
    out = torch.zeros(b_, c, n, dtype=torch.float64)
    for h in range(heads):
        q, k, vh = (t[:, h * hd:(h + 1) * hd] for t in (qk[:, :c], qk[:, c:], v))
        gate = 1.0 / (1.0 + math.exp(-float(w("gate.param.weight")[h, 0, 0])))
        pw, pb = w("pos.gpsa_pos.weight")[h], w("pos.gpsa_pos.bias")[h]
        for i, (ri, ci) in enumerate(grid):
            content = torch.exp((q[:, :, i:i + 1] * k).sum(1) / math.sqrt(hd))
            content = content / content.sum(-1, keepdim=True)
            pos = torch.stack([pw[0] * (cj - ci) + pw[1] * (rj - ri) + pw[2] * ((cj - ci) ** 2 + (rj - ri) ** 2) + pb
                               for rj, cj in grid])
            pos = torch.exp(pos) / torch.exp(pos).sum()
            attn = (1.0 - gate) * content + gate * pos[None]
            attn = attn / attn.sum(-1, keepdim=True)
            out[:, h * hd:(h + 1) * hd, i] = torch.einsum("bm,bdm->bd", attn, vh)
    return torch.einsum("oc,bcn->bon", w("proj.linear.weight"), out) + w("proj.linear.bias")[:, None]


@pytest.mark.parametrize("dim,heads,size,qkv_bias", [(12, 4, [3, 3], False), (9, 3, [2, 3], True),
                                                     (8, 2, [1, 5], False)], ids=["square", "2x3-bias", "1d"])
def test_block_equals_the_official_formula(dim, heads, size, qkv_bias):
    m, src = _block(dim, heads, size, qkv_bias)
    p = {k: v.double() for k, v in m.state_dict().items()}
    x = torch.randn(3, dim, size[0] * size[1], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_gpsa(x, p, "gpsa", heads, size), rtol=1e-10, atol=1e-12)
    # qk 2d*d, v d*d, proj d*d + d, pos_proj 4 * heads, gating heads (+ 3d for the qk and v biases)
    want = 4 * dim * dim + dim + 5 * heads + (3 * dim if qkv_bias else 0)
    assert nparams(m) == want == archdsl.ir.graph.totals(archdsl.build(archdsl.parse(src)))["params"]


def test_block_gradients():
    m, _ = _block(4, 2, [2, 2])
    assert gradcheck_module(m, torch.randn(2, 4, 4, dtype=torch.float64))


def test_the_gate_starts_at_one_and_mixes():
    """gating_param starts at 1 (sigmoid 0.73 on the positional side); a gate of +40 leaves only the positional
    attention (the output no longer depends on q and k), -40 only the content attention."""
    m, _ = _block(6, 2, [2, 3])
    fresh = archdsl.compile(archdsl.build(archdsl.parse(
        'import "attention"\nmodel g() { input x[6, 6]\n gpsa(6, 2, [2, 3]) }')))
    assert torch.equal(fresh.state_dict()["gpsa.gate.param.weight"], torch.ones(2, 1, 1))
    x = torch.randn(2, 6, 6, dtype=torch.float64)
    qk = m.state_dict()["gpsa.qk.linear.weight"]
    outs = {}
    with torch.no_grad():
        for g in (40.0, -40.0):
            m.state_dict()["gpsa.gate.param.weight"].fill_(g)
            before = m(x)
            qk.mul_(3.0)
            outs[g] = (before - m(x)).abs().max()
            qk.div_(3.0)
    assert outs[40.0] < 1e-12 < 1e-3 < outs[-40.0]


@pytest.mark.parametrize("shape", [(8, 10), (8, 3, 3)], ids=["10-tokens", "image"])
def test_tokens_that_are_not_the_grid_are_refused_with_a_location(shape):
    dims = ", ".join(map(str, shape))
    with pytest.raises(ArchError) as e:
        archdsl.build(archdsl.parse(f'import "attention"\nmodel g() {{ input x[{dims}]\n gpsa(8, 2, [3, 3]) }}'))
    assert "not the tokens (dim, 9) of the grid [3, 3]" in e.value.message and "flatten(1)" in e.value.hint
    assert e.value.span is not None and e.value.span.line > 0
