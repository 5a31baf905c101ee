"""winattn with a shift (Swin's shifted windows, 1-D / 2-D / 3-D) against a float64 reference written here one
query at a time: each query attends to the explicit list of padded positions that share its window and its
region of the rolled grid (the labels of Swin's `compute_mask`), with the relative bias read from the table by
hand. Also: the mask matters, shift 0 is plain windowed attention, exact parameter and MAC counts, gradients."""
from __future__ import annotations

import itertools

import pytest
import torch
from op_testing import build, flops_macs, gradcheck_module, nparams, shape_error

from archdsl.ops.registry import get_op


def _region(r, p, w, s):
    """Swin's three slices of a rolled dim of padded size p: [0, p-w), [p-w, p-s), [p-s, p)."""
    return 0 if r < p - w else (1 if r < p - s else 2)


def swin_reference(m, x, window, shift):
    """Shifted-window attention of module m's weights on x (n, c, *sizes), one query at a time, in float64."""
    x = x.double()
    n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
    padded = [-(-s // w) * w for s, w in zip(sizes, window)]
    shift = [sh if s > w else 0 for s, w, sh in zip(sizes, window, shift)]
    heads, hd = m.attn.heads, c // m.attn.heads
    xp = torch.zeros(n, c, *padded, dtype=torch.float64)
    xp[(slice(None), slice(None), *(slice(0, s) for s in sizes))] = x
    wq, bq = m.attn.qkv.weight.double(), m.attn.qkv.bias
    bq = bq.double() if bq is not None else torch.zeros(3 * c, dtype=torch.float64)
    grid = list(itertools.product(*(range(p) for p in padded)))
    qkv = {p: xp[(slice(None), slice(None), *p)] @ wq.T + bq for p in grid}  # (n, 3c) per position
    rolled = {p: tuple((pi - si) % pp for pi, si, pp in zip(p, shift, padded)) for p in grid}
    key = {p: (tuple(r // w for r, w in zip(rolled[p], window)),
               tuple(_region(r, pp, w, s) for r, pp, w, s in zip(rolled[p], padded, window, shift))) for p in grid}
    table = m.attn.rel_table.double() if m.attn.rel_table is not None else None
    y = torch.zeros(n, c, *sizes, dtype=torch.float64)
    for p in itertools.product(*(range(s) for s in sizes)):
        keys = [k for k in grid if key[k] == key[p]]
        heads_out = []
        for h in range(heads):
            q = qkv[p][:, h * hd:(h + 1) * hd]
            scores = []
            for k in keys:
                score = (q * qkv[k][:, c + h * hd:c + (h + 1) * hd]).sum(-1) * hd ** -0.5
                if table is not None:
                    row = 0
                    for rq, rk, w in zip(rolled[p], rolled[k], window):
                        row = row * (2 * w - 1) + (rq % w - rk % w + w - 1)
                    score = score + table[row, h]
                scores.append(score)
            weights = torch.softmax(torch.stack(scores, -1), -1)  # (n, keys)
            values = torch.stack([qkv[k][:, 2 * c + h * hd:2 * c + (h + 1) * hd] for k in keys], 1)
            heads_out.append((weights[:, :, None] * values).sum(1))
        out = torch.cat(heads_out, -1) @ m.attn.proj.weight.double().T + m.attn.proj.bias.double()
        y[(slice(None), slice(None), *p)] = out
    return y


CASES = [  # (attrs, shape): odd sizes are padded; 1-D, 2-D, 3-D; a 3-D window that covers a dim whole
    ({"window": 3, "shift": 1, "heads": 2}, (4, 5, 7)),
    ({"window": [2, 3], "shift": [1, 1], "heads": 1, "qkv_bias": False}, (3, 5, 6)),
    ({"window": 4, "shift": 2, "heads": 2}, (4, 9)),
    ({"window": [2, 3, 2], "shift": [1, 1, 1], "heads": 2}, (4, 3, 5, 4)),
    ({"window": [3, 2, 2], "shift": [1, 1, 1], "heads": 1, "rel_pos": False}, (2, 3, 3, 5)),
    ({"window": 2, "heads": 2}, (4, 3, 4, 3)),
]


@pytest.mark.parametrize("attrs,shape", CASES, ids=[str(s) for _, s in CASES])
def test_shifted_window_attention_matches_the_per_query_reference(attrs, shape):
    spec, a, m = build("winattn", attrs, shape)
    m = m.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    expected = swin_reference(m, x, a.window, a.shift or (0,) * len(a.window))
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(spec.reference(m, x), expected, rtol=1e-10, atol=1e-12)


def test_the_mask_matters_and_only_in_the_wrapped_windows():
    _, _, m = build("winattn", {"window": 3, "shift": 1, "heads": 2}, (4, 6, 6))
    m = m.double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    masked = m(x)
    m.mask = torch.zeros_like(m.mask)  # rolled, but tokens of different regions now see each other
    unmasked = m(x)
    differs = (masked - unmasked).abs().amax(1)[0] > 1e-9
    # rolled by -1, the last window row / column holds rolled rows 3..5 = original rows 4, 5 and the wrapped row 0
    wrapped = torch.zeros(6, 6, dtype=torch.bool)
    wrapped[[4, 5, 0], :] = True
    wrapped[:, [4, 5, 0]] = True
    assert torch.equal(differs, wrapped)


@pytest.mark.parametrize("shape,window", [((4, 5, 7), 3), ((4, 3, 5, 4), [2, 3, 2]), ((3, 7), 2)])
def test_shift_zero_is_plain_windowed_attention(shape, window):
    _, a, m = build("winattn", {"window": window, "shift": 0, "heads": 1}, shape)
    m = m.double()
    assert m.mask is None
    x = torch.randn(2, *shape, dtype=torch.float64)
    sizes = shape[1:]
    w = a.window
    padded = [-(-s // k) * k for s, k in zip(sizes, w)]
    xp = torch.nn.functional.pad(x, [p for s, q in zip(reversed(sizes), reversed(padded)) for p in (0, q - s)])
    y = torch.zeros_like(xp)
    for origin in itertools.product(*(range(0, q, k) for q, k in zip(padded, w))):
        cut = (slice(None), slice(None), *(slice(o, o + k) for o, k in zip(origin, w)))
        t = xp[cut].flatten(2).transpose(1, 2)  # the window's tokens, row-major
        y[cut] = m.attn.attend(t).transpose(1, 2).reshape(xp[cut].shape)  # plain RelAttn on one window
    torch.testing.assert_close(m(x), y[(slice(None), slice(None), *(slice(0, s) for s in sizes))])


def test_a_dim_one_window_covers_is_not_shifted():
    _, _, m = build("winattn", {"window": [4, 2], "shift": [2, 1], "heads": 1}, (3, 4, 5))
    _, _, plain = build("winattn", {"window": [4, 2], "shift": [0, 1], "heads": 1}, (3, 4, 5))
    assert m.shift == (0, 1)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(m(x), plain(x))


def test_params_and_macs_3d():
    shape = (6, 5, 4, 7)
    spec, a, m = build("winattn", {"window": [2, 3, 4], "shift": [1, 1, 2], "heads": 3}, shape)
    c, heads = 6, 3
    table = (2 * 2 - 1) * (2 * 3 - 1) * (2 * 4 - 1)
    # qkv (C -> 3C, bias) + proj (C -> C, bias) + the bias table
    assert nparams(m) == 3 * c * c + 3 * c + c * c + c + table * heads == spec.params(a, [shape])
    n = 6 * 6 * 8  # 5, 4, 7 padded to 6, 6, 8
    macs = 4 * n * c * c + 2 * n * (2 * 3 * 4) * c  # qkv and proj on every padded token; QK^T and AV per window
    assert flops_macs(m, torch.randn(1, *shape)) == macs == spec.macs(a, [shape], shape)


def test_gradients_3d_shifted():
    _, _, m = build("winattn", {"window": 2, "shift": 1, "heads": 1}, (2, 3, 2, 3))
    m = m.double()
    x = torch.randn(1, 2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_shift_must_be_smaller_than_the_window():
    err = shape_error("winattn", {"window": 3, "shift": 3, "heads": 1}, (4, 6, 6))
    assert "shift [3, 3]" in err.message and "window [3, 3]" in err.message and "window // 2" in err.hint
    assert get_op("winattn").spatial_dims == (1, 2, 3)


def test_shifted_block_in_a_3d_model_builds_and_runs():
    import archdsl

    src = """
model m(dim = 8) {
  input vol[1, 16, 8, 8]
  embed: conv(dim, k = 2, stride = 2, padding = 0)
  for s in [0, 2] {
    residual { ln >> winattn(4, shift = s, heads = 2) }
    residual { ln >> linear(2 * dim) >> gelu >> linear(dim) }
  }
}
"""
    m = archdsl.compile(src)
    assert m(torch.randn(2, 1, 16, 8, 8)).shape == (2, 8, 8, 4, 4)
    # the second block is shifted along D only: H and W (4) are one window each
    assert [w.shift for w in m.modules() if type(w).__name__ == "WinAttn"] == [(0, 0, 0), (2, 0, 0)]
