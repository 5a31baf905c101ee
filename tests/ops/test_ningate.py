"""NiNformer's mixer gating unit: the module against a float64 loop over tokens written here, counts against the
official MixerGatingUnit's layer list, gradients, the gate's global reach, and its tie to the input size."""
from __future__ import annotations

import math

import pytest
import torch
from op_testing import build, check_examples, flops_macs, gradcheck_module, nparams

import archdsl


def _ln(row, ln):
    mu = sum(row) / len(row)
    var = sum((r - mu) ** 2 for r in row) / len(row)
    return [(r - mu) / math.sqrt(var + ln.eps) * float(w) + float(b) for r, w, b in zip(row, ln.weight, ln.bias)]


def _gelu(z):
    return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))


def _mlp(vec, l1, l2):
    w1, b1, w2, b2 = (t.double().tolist() for t in (l1.weight, l1.bias, l2.weight, l2.bias))
    hidden = [_gelu(sum(w * v for w, v in zip(row, vec)) + b) for row, b in zip(w1, b1)]
    return [sum(w * h for w, h in zip(row, hidden)) + b for row, b in zip(w2, b2)]


def loop_reference(m, x):
    """Plain Python floats: tokens are the positions in row-major order; token MLP per channel row of the
    normed tokens, channel MLP per token, proj per token; out = proj * gate."""
    out = torch.zeros_like(x, dtype=torch.float64)
    for n in range(x.shape[0]):
        t = x[n].reshape(x.shape[1], -1).T.double().tolist()  # P tokens of C
        p, c = len(t), len(t[0])
        normed = [_ln(tok, m.ln1) for tok in t]
        mixed_rows = [_mlp([normed[i][ch] for i in range(p)], m.token1, m.token2) for ch in range(c)]
        g = [[t[i][ch] + mixed_rows[ch][i] for ch in range(c)] for i in range(p)]
        g = [[gi + hi for gi, hi in zip(tok, _mlp(_ln(tok, m.ln2), m.chan1, m.chan2))] for tok in g]
        w, b = m.proj.weight.double().tolist(), m.proj.bias.double().tolist()
        y = [[(sum(wr[j] * t[i][j] for j in range(c)) + br) * g[i][o] for o, (wr, br) in enumerate(zip(w, b))]
             for i in range(p)]
        out[n] = torch.tensor(y, dtype=torch.float64).T.reshape(x.shape[1:])
    return out


def test_examples_agree_with_modules():
    check_examples("ningate")


@pytest.mark.parametrize("shape,attrs", [((4, 9), {}), ((3, 7), {"hidden": 5}), ((4, 3, 5), {}),
                                         ((3, 2, 7), {"hidden": 3})], ids=["1d", "1d-h5", "2d", "2d-h3"])
def test_matches_the_loop_reference(shape, attrs):
    spec, _, m = build("ningate", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected = loop_reference(m, x)
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(spec.reference(m, x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 5), (2, 2, 3)], ids=["1d", "2d"])
def test_gradients(shape):
    _, _, m = build("ningate", {"hidden": 3}, shape, perturb=0.1)
    m = m.double()
    assert gradcheck_module(m, torch.randn(1, *shape, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("shape,hidden,params,macs", [
    # C = 4, P = 5 * 6 = 30, F = 8 (2C): proj 16 + 4; two LayerNorms 8 + 8; token MLP 30*8 + 8 + 8*30 + 30;
    # channel MLP 4*8 + 8 + 8*4 + 4. MACs: proj 30*16, token MLP 4 rows * 2*30*8, channel MLP 30 * 2*4*8.
    ((4, 5, 6), None, 20 + 16 + 518 + 76, 480 + 1920 + 1920),
    # C = 3, P = 7, F = 5: proj 12; LNs 12; token 35 + 5 + 35 + 7; channel 15 + 5 + 15 + 3.
    ((3, 7), 5, 12 + 12 + 82 + 38, 7 * 9 + 3 * 70 + 7 * 30),
], ids=["2d", "1d"])
def test_counts_by_hand(shape, hidden, params, macs):
    attrs = {} if hidden is None else {"hidden": hidden}
    spec, a, m = build("ningate", attrs, shape)
    assert spec.params(a, [shape]) == params == nparams(m)
    assert spec.macs(a, [shape], shape) == macs == flops_macs(m.eval(), torch.randn(1, *shape))


def test_the_gate_mixes_all_positions():
    """The token MLP reaches every position: one changed far position changes the output at the first (one
    channel changed: a shift of all channels alike is what LayerNorm removes)."""
    _, _, m = build("ningate", {}, (3, 6, 6))
    m = m.double().eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0, 5, 5] += 2.0
    with torch.no_grad():
        assert (m(x) - m(x2))[..., 0, 0].abs().max() > 1e-8


def test_sizes_enter_the_parameters():
    """The token MLP is P x hidden: a 2-D input of 5 x 6 and a 1-D one of 30 positions count the same."""
    def params(src):
        return sum(d["params"] for _, d in archdsl.build(archdsl.parse(src)).nodes(data=True) if "params" in d)
    two = params("model m() {\n  input x[4, 5, 6]\n  ningate\n}\n")
    one = params("model m() {\n  input x[4, 30]\n  ningate\n}\n")
    assert two == one == 630
