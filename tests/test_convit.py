"""ConViT: the library's `gpsa` block (gated positional self-attention) against a float64 loop over heads and
queries written from the official formula (facebookresearch/convit convit.py `GPSA.get_attention`, renormalisation
included), and the ConViT-Ti reference model: the official parameter count and a small model against float64."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_token_mixers import randomize, ref_mha, sd

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.graph import totals

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"


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
    assert sum(t.numel() for t in m.parameters()) == want == totals(archdsl.build(archdsl.parse(src)))["params"]


def test_block_gradients():
    m, _ = _block(4, 2, [2, 2])
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, (torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True), *m.parameters()))


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


# ---- ConViT-Ti ------------------------------------------------------------------------------------------------

def test_convit_ti_has_the_official_parameter_count_and_macs():
    """5,710,512 parameters and 1,252,360,320 MACs at 224: convit_tiny counted by formula from the official layer
    definitions (see the .arch header)."""
    G = archdsl.build(archdsl.parse(MODELS / "convit_ti.arch"))
    assert totals(G)["params"] == 5_710_512 and totals(G)["macs"] == 1_252_360_320
    assert sum(p.numel() for p in archdsl.compile(G).parameters()) == 5_710_512


def ref_ln(t, p, prefix, eps=1e-6):
    mean = t.mean(1, keepdim=True)
    var = ((t - mean) ** 2).mean(1, keepdim=True)
    return (t - mean) / torch.sqrt(var + eps) * p[f"{prefix}.weight"][:, None] + p[f"{prefix}.bias"][:, None]


def ref_convit(x, p, heads, depth, local, patch):
    """The official VisionTransformer.forward: patch embedding + position embedding, GPSA blocks on the patch grid,
    the CLS token put in front before block `local`, MHSA blocks, the final norm and the head on the CLS token."""
    t = F.conv2d(x, p["patches.conv.weight"], p["patches.conv.bias"], stride=patch).flatten(2)
    grid = x.shape[-1] // patch
    t = t + p["pos.pos_embed.param.weight"]
    for i in range(depth):
        pre = f"block{i}"
        if i == local:
            t = torch.cat([p[f"{pre}.cls_token.cls.param.weight"].expand(len(x), -1, -1), t], dim=2)
        y = ref_ln(t, p, f"{pre}.ln")
        t = t + (ref_gpsa(y, p, f"{pre}.gpsa", heads, [grid, grid]) if i < local else
                 ref_mha(y, p, f"{pre}.mha", heads, qkv_bias=False))
        mlp = lambda name: p[f"{pre}.convit_mlp.{name}"]  # noqa: E731
        h = F.gelu(torch.einsum("oc,bcn->bon", mlp("linear.weight"), ref_ln(t, p, f"{pre}.convit_mlp.ln"))
                   + mlp("linear.bias")[:, None])
        t = t + torch.einsum("oc,bcn->bon", mlp("linear_1.weight"), h) + mlp("linear_1.bias")[:, None]
    cls = ref_ln(t, p, "head.ln")[:, :, 0]
    return cls @ p["head.linear.weight"].T + p["head.linear.bias"]


def test_a_small_convit_against_float64():
    """Two GPSA blocks on a 3 x 3 grid, the CLS token, one MHSA block; every weight random."""
    G = archdsl.build(archdsl.parse(MODELS / "convit_ti.arch"), dim=8, heads=2, depth=3, local_up_to_layer=2, patch=4,
                      size=12, classes=5)
    m = randomize(archdsl.compile(G).double(), scale=0.3)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_convit(x, sd(m), 2, 3, 2, 4), rtol=1e-9, atol=1e-10)


def test_convit_ti_runs_small():
    G = archdsl.build(archdsl.parse(MODELS / "convit_ti.arch"), size=32, classes=10)
    with torch.no_grad():
        y = archdsl.compile(G).eval()(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
