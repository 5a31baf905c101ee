"""NiNformer's gating unit, the library block `ninformer_gate` (archdsl/lib/gating.arch): the compiled block against
a float64 loop over tokens written here with Python floats, its parameters and MACs against the official
MixerGatingUnit's layer list counted by hand, gradients, the gate's global reach, 1-D and 2-D."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import archdsl
from archdsl.ir.graph import totals

P = "ninformer_gate."


def compiled(shape, hidden=None):
    size = list(shape[1:])
    extra = "" if hidden is None else f", hidden = {hidden}"
    src = f'import "gating"\nmodel m() {{\n  input x{list(shape)}\n  ninformer_gate({shape[0]}, {size}{extra})\n}}\n'
    G = archdsl.build(archdsl.parse(src))
    torch.manual_seed(0)
    module = archdsl.compile(G).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return G, module.eval()


def _ln(row, w, b):
    mu = sum(row) / len(row)
    var = sum((r - mu) ** 2 for r in row) / len(row)
    return [(r - mu) / math.sqrt(var + 1e-5) * wi + bi for r, wi, bi in zip(row, w, b)]


def _gelu(z):
    return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))


def _affine(w, b, vec):
    return [sum(wi * v for wi, v in zip(row, vec)) + bi for row, bi in zip(w, b)]


def loop_reference(sd, x):
    """Plain Python floats, per sample: tokens are the positions in row-major order; token MLP per channel row of
    the normed tokens, residual; channel MLP per token after the second norm, residual; proj per token; product."""
    p = {k[len(P):]: v.double().tolist() for k, v in sd.items()}
    out = torch.zeros_like(x, dtype=torch.float64)
    for n in range(x.shape[0]):
        t = x[n].reshape(x.shape[1], -1).T.double().tolist()  # P tokens of C
        npos, c = len(t), len(t[0])
        normed = [_ln(tok, p["tmix.ln.weight"], p["tmix.ln.bias"]) for tok in t]
        rows = []
        for ch in range(c):
            h = [_gelu(z) for z in _affine(p["tmix.linear.weight"], p["tmix.linear.bias"],
                                           [normed[i][ch] for i in range(npos)])]
            rows.append(_affine(p["tmix.linear_1.weight"], p["tmix.linear_1.bias"], h))
        g = [[t[i][ch] + rows[ch][i] for ch in range(c)] for i in range(npos)]
        for i, tok in enumerate(g):
            h = [_gelu(z) for z in _affine(p["gate.linear.weight"], p["gate.linear.bias"],
                                           _ln(tok, p["gate.ln.weight"], p["gate.ln.bias"]))]
            g[i] = [a + b for a, b in zip(tok, _affine(p["gate.linear_1.weight"], p["gate.linear_1.bias"], h))]
        y = [[u * gi for u, gi in zip(_affine(p["u.linear.weight"], p["u.linear.bias"], t[i]), g[i])]
             for i in range(npos)]
        out[n] = torch.tensor(y, dtype=torch.float64).T.reshape(x.shape[1:])
    return out


@pytest.mark.parametrize("shape,hidden", [((4, 9), None), ((3, 7), 5), ((4, 3, 5), None), ((3, 2, 7), 3)],
                         ids=["1d", "1d-h5", "2d", "2d-h3"])
def test_matches_the_loop_reference(shape, hidden):
    _, m = compiled(shape, hidden)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), loop_reference(m.state_dict(), x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 5), (2, 2, 3)], ids=["1d", "2d"])
def test_gradients(shape):
    _, m = compiled(shape, hidden=3)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    x = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, *m.parameters()))


@pytest.mark.parametrize("shape,hidden,params,macs", [
    # C = 4, P = 5 * 6 = 30, F = 8 (2C): proj 16 + 4; two LayerNorms 8 + 8; token MLP 30*8 + 8 + 8*30 + 30;
    # channel MLP 4*8 + 8 + 8*4 + 4. MACs: proj 30*16, token MLP 4 rows * 2*30*8, channel MLP 30 * 2*4*8.
    ((4, 5, 6), None, 20 + 16 + 518 + 76, 480 + 1920 + 1920),
    # C = 3, P = 7, F = 5: proj 12; LNs 12; token 35 + 5 + 35 + 7; channel 15 + 5 + 15 + 3.
    ((3, 7), 5, 12 + 12 + 82 + 38, 7 * 9 + 3 * 70 + 7 * 30),
    # NiNformer's train.py setting: d_model 256, d_ffn 512, 64 patches.
    ((256, 8, 8), 512, 256 * 257 + 4 * 256 + (2 * 64 * 512 + 512 + 64) + (2 * 256 * 512 + 512 + 256),
     64 * 256 * 256 + 4 * 64 * 256 * 512),
], ids=["2d", "1d", "paper"])
def test_counts_by_hand(shape, hidden, params, macs):
    G, m = compiled(shape, hidden)
    assert totals(G)["params"] == params == sum(p.numel() for p in m.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(torch.randn(1, *shape, dtype=torch.float64))
    assert totals(G)["macs"] == macs == counter.get_total_flops() // 2


def test_the_gate_mixes_all_positions():
    """The token MLP reaches every position: one far position changed changes the output at the first (one
    channel changed: a shift of all channels alike is what LayerNorm removes)."""
    _, m = compiled((3, 6, 6))
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0, 5, 5] += 2.0
    with torch.no_grad():
        assert (m(x) - m(x2))[..., 0, 0].abs().max() > 1e-8


def test_a_wrong_size_is_an_error_before_anything_runs():
    """size [6, 6] on a 5 x 6 input: the token MLP gives 36 positions back, refused where they meet the input."""
    with pytest.raises(archdsl.ArchError) as e:
        archdsl.build(archdsl.parse('import "gating"\nmodel m() {\n  input x[4, 5, 6]\n'
                                    '  ninformer_gate(4, [6, 6])\n}\n'))
    assert "gating.arch:" in str(e.value) and "[4, 5, 6] and [4, 6, 6]" in str(e.value)
