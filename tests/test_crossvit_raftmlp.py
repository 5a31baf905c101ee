"""CrossViT-9 and RaftMLP-S: parameter counts derived from the official code (IBM/CrossViT models/crossvit.py,
okojoalg/raft-mlp libs/models.py + libs/modules.py), the raft token-mixing library blocks against float64
implementations written here from the official index layout (loops over rafts), with gradients, and both models
at small sizes against float64 forward passes written with torch ops in the official codes' own formulation
(unfold + one linear for RaftMLP's embedding, separate q / k / v linears for CrossViT's cross-attention)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.graph import totals
from test_token_mixers import MODELS, compiled, randomize


def layer_norm_channels(x, w, b, eps=1e-5):
    """LayerNorm over axis 1 of (B, C, ...)."""
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mu) / torch.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)


def mlp(v, p, pre):
    """fc -> GELU -> fc on the last axis."""
    h = F.gelu(v @ p[pre + ".linear.weight"].T + p[pre + ".linear.bias"])
    return h @ p[pre + ".linear_1.weight"].T + p[pre + ".linear_1.bias"]


# ---- parameter counts -------------------------------------------------------------------------------------------

# the compute the papers report, rounded to 0.1 G: CrossViT-9 1.8 GFLOPs, RaftMLP-S 2.1 GFLOPs (both count
# multiply-accumulates)
@pytest.mark.parametrize("stem,count,gmacs", [("crossvit_9", 8_553_296, 1.8), ("raftmlp_s", 9_868_768, 2.1)])
def test_published_parameter_count(stem, count, gmacs):
    G = archdsl.build(archdsl.parse(MODELS / f"{stem}.arch"))
    assert totals(G)["params"] == count
    assert round(totals(G)["macs"] / 1e9, 1) == gmacs
    assert sum(p.numel() for p in archdsl.compile(G).parameters()) == count
    assert G.nodes[G.graph["output"]]["shape"] == (1000,)


# ---- raft token mixing ------------------------------------------------------------------------------------------

def ref_raft_mix(x, p, pre, raft, axis):
    """x (B, C, *spatial) in float64; mixes along spatial `axis` (0-based among the spatial axes). For each raft j
    (channels j + m * C // raft, m = member) and each position of the other axes, the vector v[m * n + t] =
    LN(x)[j + m * C // raft, ..., t, ...] goes through the MLP; the result is added back at the same places."""
    c = x.shape[1]
    co = c // raft
    normed = layer_norm_channels(x, p[pre + ".ln.weight"], p[pre + ".ln.bias"])
    out = x.clone()
    n = x.shape[2 + axis]
    for j in range(co):
        rows = [normed[:, j + m * co] for m in range(raft)]                  # each (B, *spatial)
        v = torch.stack([r.movedim(axis + 1, -1) for r in rows], dim=-2)     # (B, *other, raft, n)
        y = mlp(v.reshape(*v.shape[:-2], raft * n), p, pre).reshape(v.shape)
        for m in range(raft):
            out[:, j + m * co] += y[..., m, :].movedim(-1, axis + 1)
    return out


@pytest.mark.parametrize("src,shape,raft,axes", [
    ('raft_mix_1d(6, 2, 5, expansion = 3)', (6, 5), 2, [0]),
    ('raft_mix_1d(9, 3, 4)', (9, 4), 3, [0]),
    ('raft_mix_h(6, 3, 5)', (6, 5, 3), 3, [0]),
    ('raft_mix_w(8, 2, 7, expansion = 1)', (8, 3, 7), 2, [1]),
    ('raft_token_mixer(6, 2, 3, 5)', (6, 3, 5), 2, [0, 1]),
])
def test_raft_mixing_against_float64(src, shape, raft, axes):
    dims = ", ".join(map(str, shape))
    m = randomize(compiled(f'import "raft"\nmodel r() {{ input x[{dims}]\n {src} }}'))
    p = {k: v.double() for k, v in m.state_dict().items()}
    pres = [k[: -len(".ln.weight")] for k in p if k.endswith(".ln.weight")]
    x = torch.randn(2, *shape, dtype=torch.float64)
    ref = x
    for pre, axis in zip(pres, axes):
        ref = ref_raft_mix(ref, p, pre, raft, axis)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("src,shape", [('raft_mix_1d(4, 2, 3)', (4, 3)), ('raft_token_mixer(4, 2, 3, 2)', (4, 3, 2))])
def test_raft_mixing_gradients(src, shape):
    dims = ", ".join(map(str, shape))
    m = randomize(compiled(f'import "raft"\nmodel r() {{ input x[{dims}]\n {src} }}'))
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    m(x).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in m.parameters())


def test_raft_size_must_divide_the_channels():
    with pytest.raises(ArchError) as e:
        archdsl.build(archdsl.parse('import "raft"\nmodel r() { input x[6, 4]\n raft_mix_1d(6, 4, 4) }'))
    assert "raft.arch:" in str(e.value) and "does not hold the 6 entries" in str(e.value)


# ---- RaftMLP-S at a small size ----------------------------------------------------------------------------------

def ref_raftmlp(x, p, dims, depths, kernels, raft):
    """raft-mlp's SerialPermutedLevel stack (eval) with unfold + one linear as the embedding."""
    for i, (dim, depth, ks) in enumerate(zip(dims, depths, kernels)):
        s = ks[0]
        pre = f"level{i}.embed.cross_scale_embed"
        convs = [p[f"{pre}.embed.conv.weight"]] + [p[f"{pre}.wide{'_' + str(j) if j else ''}.conv.weight"]
                                                   for j in range(len(ks) - 1)]
        cols = [F.unfold(x, k, padding=(k - s) // 2, stride=s) for k in ks]        # (B, cin * k * k, L)
        w = torch.cat([c.flatten(1) for c in convs], dim=1)                          # one linear on the concat
        side = x.shape[-1] // s
        x = (torch.einsum("ok,bkl->bol", w, torch.cat(cols, dim=1)) + p[f"{pre}.embed.conv.bias"][:, None])
        x = x.reshape(x.shape[0], dim, side, side)
        for d in range(depth):
            blk = f"level{i}.block{d}"
            x = ref_raft_mix(x, p, f"{blk}.raft_token_mixer.raft_mix_h", raft, 0)
            x = ref_raft_mix(x, p, f"{blk}.raft_token_mixer.raft_mix_w", raft, 1)
            h = layer_norm_channels(x, p[f"{blk}.ln.weight"], p[f"{blk}.ln.bias"]).movedim(1, -1)
            x = x + mlp(h, p, blk).movedim(-1, 1)
    x = layer_norm_channels(x, p["head.ln.weight"], p["head.ln.bias"]).mean((2, 3))
    return x @ p["head.linear.weight"].T + p["head.linear.bias"]


def test_raftmlp_against_a_float64_implementation():
    kw = dict(dims=[4, 6, 8], depths=[1, 2, 1], kernels=[[4, 8, 16], [2, 4], [2]], size=16, classes=5)
    m = randomize(compiled(MODELS / "raftmlp_s.arch", **kw), scale=0.2)
    p = {k: v.double() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_raftmlp(x, p, kw["dims"], kw["depths"], kw["kernels"], 2),
                                   rtol=1e-9, atol=1e-10)


# ---- CrossViT-9 at a small size ---------------------------------------------------------------------------------

def ln_tokens(t, p, pre):
    return layer_norm_channels(t, p[pre + ".ln.weight"], p[pre + ".ln.bias"], eps=1e-6)


def heads_attention(q, k, v, heads):
    """q (B, C, Nq), k and v (B, C, M): per head a softmax over the M keys, scaled by head_dim ** -0.5."""
    b, c, _ = q.shape
    hd = c // heads
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        w = torch.softmax(torch.einsum("bdn,bdm->bnm", q[:, sl], k[:, sl]) * hd ** -0.5, dim=-1)
        outs.append(torch.einsum("bnm,bdm->bdn", w, v[:, sl]))
    return torch.cat(outs, dim=1)


def lin(t, p, pre):
    return torch.einsum("oc,bcn->bon", p[pre + ".weight"], t) + p[pre + ".bias"][None, :, None]


def ref_vit(t, p, pre, heads, depth):
    """timm's pre-norm ViT blocks (eval) on tokens (B, C, N)."""
    for d in range(depth):
        blk = f"{pre}.vit_blocks.block{d}"
        q, k, v = lin(ln_tokens(t, p, blk), p, f"{blk}.mha.qkv.linear").chunk(3, dim=1)
        t = t + lin(heads_attention(q, k, v, heads), p, f"{blk}.mha.proj.linear")
        h = layer_norm_channels(t, p[blk + ".ln_1.weight"], p[blk + ".ln_1.bias"], eps=1e-6)
        t = t + lin(F.gelu(lin(h, p, blk + ".linear")), p, blk + ".linear_1")
    return t


def ref_fusion(own, other, p, pre, heads):
    """CrossViT MultiScaleBlock.forward for one branch, CrossAttention with separate wq / wk / wv (cut from the
    stacked k|v weight here)."""
    cls = lin(F.gelu(ln_tokens(own[:, :, :1], p, pre + ".cls")), p, pre + ".cls.linear")
    seq = ln_tokens(torch.cat([cls, other[:, :, 1:]], dim=2), p, pre + ".normed")
    att = pre + ".fused.cross_attention"
    wkv, bkv = p[att + ".kv.linear.weight"], p[att + ".kv.linear.bias"]
    c = wkv.shape[0] // 2
    wq = lin(seq[:, :, :1], p, att + ".q.linear")
    wk = torch.einsum("oc,bcn->bon", wkv[:c], seq) + bkv[:c, None]
    wv = torch.einsum("oc,bcn->bon", wkv[c:], seq) + bkv[c:, None]
    fused = cls + lin(heads_attention(wq, wk, wv, heads), p, att + ".proj.linear")
    back = lin(F.gelu(ln_tokens(fused, p, pre + ".back")), p, pre + ".back.linear")
    return torch.cat([back, own[:, :, 1:]], dim=2)


def ref_crossvit(x, p, heads, depths, patch, large, stages):
    branches = []
    for name, img, ps in (("small", x, patch[0]),
                          ("large", F.interpolate(x, size=(large, large), mode="bicubic", align_corners=False),
                           patch[1])):
        t = F.conv2d(img, p[f"{name}.conv.weight"], p[f"{name}.conv.bias"], stride=ps).flatten(2)
        t = torch.cat([p[f"{name}.cls_token.cls.param.weight"].expand(x.shape[0], -1, 1), t], dim=2)
        branches.append(t + p[f"{name}.pos_embed.param.weight"])
    for s in range(stages):
        b0 = ref_vit(branches[0], p, f"stage{s}.b0", heads[0], depths[0])
        b1 = ref_vit(branches[1], p, f"stage{s}.b1", heads[1], depths[1])
        branches = [ref_fusion(b0, b1, p, f"stage{s}.small.cls_fusion", heads[1]),
                    ref_fusion(b1, b0, p, f"stage{s}.large.cls_fusion", heads[0])]
    logits = [ln_tokens(t, p, f"head{i}")[:, :, 0] @ p[f"head{i}.linear.weight"].T + p[f"head{i}.linear.bias"]
              for i, t in enumerate(branches)]
    return (logits[0] + logits[1]) / 2


def test_crossvit_against_a_float64_implementation():
    kw = dict(dims=[8, 12], heads=[2, 3], depths=[1, 2], patch=[4, 8], size=24, large_size=16, stages=2, classes=5)
    m = randomize(compiled(MODELS / "crossvit_9.arch", **kw), scale=0.2)
    p = {k: v.double() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        ref = ref_crossvit(x, p, kw["heads"], kw["depths"], kw["patch"], kw["large_size"], 2)
        torch.testing.assert_close(m(x), ref, rtol=1e-9, atol=1e-10)


def test_bicubic_resize_needs_an_image():
    with pytest.raises(ArchError) as e:
        archdsl.build(archdsl.parse('model r() { input x[3, 8]\n resize(5, mode = "cubic") }', "r.arch"))
    assert "r.arch:2:2" in str(e.value) and "2-D input" in str(e.value)
