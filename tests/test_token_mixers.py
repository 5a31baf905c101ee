"""Token mixers written in .arch: the tensor primitives and param() in the language, the block library
(archdsl/lib) against float64 implementations written here with torch ops only, the built-in mhsa, and CCT-7/3x1.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.graph import totals
from codegen.python_source import emit

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"


def compiled(src, **kw):
    return archdsl.compile(archdsl.build(archdsl.parse(src), **kw)).double()


def randomize(module, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale + (1.0 if "running_var" in name
                                                                                    else 0.0))
    return module.eval()


def err(src) -> ArchError:
    with pytest.raises(ArchError) as e:
        archdsl.build(archdsl.parse(src))
    return e.value


def sd(module):
    return {k: v.double() for k, v in module.state_dict().items()}


# ---- float64 references written with torch ops (no archdsl code) -----------------------------------------------

def ref_heads_attention(q, k, v, bias=None, scale=None):
    """q (B, h, dq, N), k (B, h, dq, M), v (B, h, dv, M) -> (B, h*dv, N): per head and query a softmax over keys."""
    b, h, dq, n = q.shape
    scale = dq ** -0.5 if scale is None else scale
    out = torch.zeros(b, h, v.shape[2], n, dtype=torch.float64)
    for head in range(h):
        s = torch.einsum("bdn,bdm->bnm", q[:, head], k[:, head]) * scale
        if bias is not None:
            s = s + bias[head]
        w = torch.exp(s - s.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        out[:, head] = torch.einsum("bnm,bdm->bdn", w, v[:, head])
    return out.reshape(b, -1, n)


def lin(x, w, b=None):
    """A linear map over the channels of (B, C, N)."""
    y = torch.einsum("oc,bcn->bon", w, x)
    return y if b is None else y + b[None, :, None]


def bn_eval(x, p, prefix, eps=1e-5):
    g = lambda k: p[f"{prefix}.{k}"][None, :, None]  # noqa: E731
    return (x - g("running_mean")) / torch.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def ref_mha(x, p, prefix, heads, qkv_bias):
    c = x.shape[1]
    qkv = lin(x, p[f"{prefix}.qkv.linear.weight"], p.get(f"{prefix}.qkv.linear.bias") if qkv_bias else None)
    q, k, v = (t.reshape(x.shape[0], heads, c // heads, -1) for t in qkv.split(c, dim=1))
    out = ref_heads_attention(q, k, v)
    return lin(out, p[f"{prefix}.proj.linear.weight"], p[f"{prefix}.proj.linear.bias"])


def ref_seqpool(x, w, b):
    """CCT: softmax over the tokens of a linear score, the score-weighted sum of the tokens."""
    s = torch.einsum("c,bcn->bn", w[0], x) + b[0]
    a = torch.exp(s - s.amax(-1, keepdim=True))
    a = a / a.sum(-1, keepdim=True)
    return torch.einsum("bcn,bn->bc", x, a)


def levit_index(res):
    pos = list(itertools.product(range(res), range(res)))
    return torch.tensor([[abs(p[0] - q[0]) * res + abs(p[1] - q[1]) for q in pos] for p in pos])


def first_seen_index(res):
    """LSNet's (and the original LeViT's) numbering: each |dy|, |dx| offset numbered by its first appearance
    over all position pairs, row-major."""
    pos, seen, rows = list(itertools.product(range(res), range(res))), {}, []
    for p in pos:
        rows.append([seen.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(seen)) for q in pos])
    return torch.tensor(rows)


# ---- the built-in mhsa and the library's mha -----------------------------------------------------------------

@pytest.mark.parametrize("qkv_bias,shape,heads", [(False, (12, 7), 3), (True, (8, 5), 2), (True, (6, 9), 1)])
def test_library_mha_equals_the_builtin_mhsa_from_the_same_weights(qkv_bias, shape, heads):
    dims = ", ".join(map(str, shape))
    lib = compiled(f'import "attention"\nmodel a() {{ input x[{dims}]\n mha({shape[0]}, heads = {heads}, '
                   f'qkv_bias = {str(qkv_bias).lower()}) }}')
    builtin = randomize(compiled(f"model b() {{ input x[{dims}]\n mhsa(heads = {heads}, "
                                 f"qkv_bias = {str(qkv_bias).lower()}) }}"))
    names = {"mhsa.qkv.weight": "mha.qkv.linear.weight", "mhsa.qkv.bias": "mha.qkv.linear.bias",
             "mhsa.proj.weight": "mha.proj.linear.weight", "mhsa.proj.bias": "mha.proj.linear.bias"}
    lib.load_state_dict({names[k]: v for k, v in builtin.state_dict().items()}, strict=True)
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lib.eval()(x), builtin(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lib(x), ref_mha(x, sd(lib), "mha", heads, qkv_bias), rtol=1e-10, atol=1e-12)


def test_cross_attention_against_float64():
    m = randomize(compiled('import "attention"\nmodel c() { input x[8, 9]\n x: identity\n ctx: linear(8) >> slice(0, 4, axis = -1)'
                           '\n $x >> cross_attention(8, $ctx, heads = 2) }'))
    p = sd(m)
    x = torch.randn(2, 8, 9, dtype=torch.float64)
    ctx = lin(x, p["ctx.linear.weight"], p["ctx.linear.bias"])[:, :, :4]
    q = lin(x, p["cross_attention.q.linear.weight"]).reshape(2, 2, 4, 9)
    k, v = (t.reshape(2, 2, 4, 4) for t in lin(ctx, p["cross_attention.kv.linear.weight"]).split(8, dim=1))
    ref = lin(ref_heads_attention(q, k, v), p["cross_attention.proj.linear.weight"], p["cross_attention.proj.linear.bias"])
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim,key_dim,heads,res,ratio", [(8, 4, 2, 4, 4), (6, 3, 3, 3, 2)])
def test_levit_attention_against_float64(dim, key_dim, heads, res, ratio):
    m = randomize(compiled(f'import "attention"\nmodel l() {{ input x[{dim}, {res * res}]\n '
                           f'levit_attention({dim}, {key_dim}, {heads}, {res}, attn_ratio = {ratio}) }}'))
    p, pre = sd(m), "levit_attention"
    x = torch.randn(2, dim, res * res, dtype=torch.float64)
    vd = ratio * key_dim
    qkv = bn_eval(lin(x, p[f"{pre}.qkv.linear.weight"]), p, f"{pre}.qkv.bn").reshape(2, heads, 2 * key_dim + vd, -1)
    q, k, v = qkv.split([key_dim, key_dim, vd], dim=2)
    bias = p[f"{pre}.attn.bias_table.attention_biases"][:, levit_index(res)]
    out = F.hardswish(ref_heads_attention(q, k, v, bias=bias))
    ref = bn_eval(lin(out, p[f"{pre}.proj.linear.weight"]), p, f"{pre}.proj.bn")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)
    assert totals(archdsl.build(archdsl.parse(f'import "attention"\nmodel l() {{ input x[{dim}, {res * res}]\n '
                                              f'levit_attention({dim}, {key_dim}, {heads}, {res}, attn_ratio = '
                                              f'{ratio}) }}')))["params"] == sum(t.numel() for t in m.parameters())


def test_seqpool_against_float64():
    m = randomize(compiled('import "tokens"\nmodel s() { input x[5, 7]\n seqpool }'))
    p = sd(m)
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_seqpool(x, p["seqpool.w.linear.weight"], p["seqpool.w.linear.bias"]),
                                   rtol=1e-10, atol=1e-12)


# ---- CCT-7/3x1 --------------------------------------------------------------------------------------------------

def test_cct_7_3x1_has_the_published_parameter_count():
    G = archdsl.build(archdsl.parse(MODELS / "cct_7_3x1.arch"))
    assert totals(G)["params"] == 3_760_139
    module = archdsl.compile(G)
    assert sum(p.numel() for p in module.parameters()) == 3_760_139
    assert G.nodes[G.graph["output"]]["shape"] == (10,)


def ref_cct(x, p, depth, heads):
    """CCT (SHI-Labs/Compact-Transformers TransformerClassifier, eval) with this file's parameter names."""
    ln = lambda t, pre: F.layer_norm(t.transpose(1, 2), t.shape[1:2], p[pre + ".weight"], p[pre + ".bias"]).transpose(1, 2)  # noqa: E731,E501
    t = F.max_pool2d(F.relu(F.conv2d(x, p["tokenizer.conv.weight"], padding=1)), 3, 2, 1).flatten(2)
    t = t + p["pos.pos_embed.param.weight"]
    for i in range(depth):
        pre = f"block{i}.cct_layer"
        t = t + ref_mha(ln(t, pre + ".ln"), p, pre + ".mha", heads, False)
        t = ln(t, pre + ".ln_1")
        h = F.gelu(lin(t, p[pre + ".linear.weight"], p[pre + ".linear.bias"]))
        t = t + lin(h, p[pre + ".linear_1.weight"], p[pre + ".linear_1.bias"])
    t = ln(t, "head.ln")
    pooled = ref_seqpool(t, p["head.seqpool.w.linear.weight"], p["head.seqpool.w.linear.bias"])
    return pooled @ p["head.linear.weight"].T + p["head.linear.bias"]


def test_cct_against_a_float64_implementation():
    m = randomize(compiled(MODELS / "cct_7_3x1.arch", dim=16, depth=2, heads=2, size=8), scale=0.2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_cct(x, sd(m), 2, 2), rtol=1e-9, atol=1e-10)


# ---- the primitives in the language ---------------------------------------------------------------------------

ATTN = """
model t(dim = 8, heads = 2) {
  input x[8, 3, 5]
  tok: flatten(1)
  cls: param([dim, 1], init = trunc_normal(0.02))
  seq: concat($tok, axis = -1) >> add(param([dim, 16], init = normal(0.02)))
  qkv: linear(3 * dim) >> chunk(3)
  q: $qkv[0] >> unflatten(0, [heads, dim // heads])
  k: $qkv[1] >> unflatten(0, [heads, dim // heads])
  attn: $q >> transpose >> matmul($k) >> div((dim // heads) ** 0.5) >> softmax(-1)
  $qkv[2] >> unflatten(0, [heads, dim // heads]) >> einsum("hdm,hnm->hdn", $attn) >> flatten(0, 1)
  add($seq) >> slice(0, 1, axis = -1) >> flatten >> gelu >> linear(3) >> mul(2.0) >> add(-1.0)
}
"""


def test_primitives_compute_attention_with_a_cls_token_and_a_position_embedding():
    m = randomize(compiled(ATTN))
    p = sd(m)
    assert p["cls.param.weight"].shape == (8, 1) and p["seq.param.weight"].shape == (8, 16)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    seq = torch.cat([p["cls.param.weight"].expand(2, 8, 1), x.flatten(2)], dim=2) + p["seq.param.weight"]
    q, k, v = (t.reshape(2, 2, 4, 16) for t in lin(seq, p["qkv.linear.weight"], p["qkv.linear.bias"]).split(8, 1))
    out = ref_heads_attention(q, k, v) + seq
    ref = (F.gelu(out[:, :, 0]) @ p["linear.weight"].T + p["linear.bias"]) * 2.0 - 1.0
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


def test_params_are_counted_and_learn():
    G = archdsl.build(archdsl.parse(ATTN))
    m = archdsl.compile(G)
    assert totals(G)["params"] == sum(t.numel() for t in m.parameters()) == 8 + 128 + (8 * 24 + 24) + 3 * 8 + 3
    m(torch.randn(2, 8, 3, 5)).square().sum().backward()
    for name in ("cls.param.weight", "seq.param.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0


def test_emitted_module_with_the_primitives_runs_and_matches(tmp_path):
    G = archdsl.build(archdsl.parse(ATTN))
    m = randomize(archdsl.compile(G))
    source = emit(G)
    assert "import archdsl" not in source and "from archdsl" not in source
    path = tmp_path / "emitted_prims.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("emitted_prims", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    emitted = mod.Model()
    emitted.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(emitted.eval()(x), m(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.deploy()(x), m(x), rtol=1e-5, atol=1e-6)


def test_unused_pieces_are_dropped_and_pieces_do_not_flow_into_ops():
    G = archdsl.build(archdsl.parse("model t() { input x[6, 4]\n p: chunk(3)\n $p[2] }"))
    assert [d["attrs"]["piece"] for _, d in G.nodes(data=True) if d["op"] == "chunk"] == [2]
    e = err("model t() { input x[6, 4]\n chunk(3) >> relu }")
    assert "3 pieces" in e.message and "$qkv[0]" in e.hint and e.span.line == 2
    e = err("model t() { input x[6, 4]\n chunk(4) }")
    assert "4 pieces do not divide the 6 entries" in e.message
    e = err("model t() { input x[6, 4]\n p: split([2, 3])\n $p[0] }")
    assert "do not add up to the 6 entries" in e.message


@pytest.mark.parametrize("equation,why", [
    ("nd,md->nm ", "is not of the form"), ("n d,md->nm", "is not of the form"), ("nd,md->n1", "is not of the form"),
    ("nd,md-->nm", "is not of the form"), ("nd,md", "is not of the form"), ("nd,md->nm->n", "is not of the form"),
    ("nd;md->nm", "is not of the form"), ("nn,md->nm", "repeats an index"), ("nd,md->nx", "in no operand"),
    ("nd,md,mk->nm", "is not of the form"), ("nd->nd", "1 operand(s) but 2 input(s)"),
    ("ndk,md->nm", "does not fit an input"), ("...d,md->m", '"..." in the output'),
    ("nd,nd->nn", "repeats an index"), ("nd,md->", "a scalar per sample")])
def test_einsum_equations_are_checked_strictly(equation, why):
    e = err(f'model t() {{ input x[3, 4]\n o: linear(3)\n einsum("{equation}", $o) }}')
    assert why in e.message and e.span.line == 3


def test_einsum_sizes_must_agree():
    e = err('model t() { input x[3, 4]\n x: identity\n o: linear(5)\n $x >> einsum("cn,cm->nm", $o) }')
    assert "index 'c' is 3 in one input and 5 in another" in e.message


@pytest.mark.parametrize("src,why", [
    ("param([2, 0])", "positive integers"), ('param([2], init = "uniform")', "is not zeros, ones"),
    ("param([2], init = normal(-1))", "non-negative number"), ("add(param([4, 2]))", "branches have different"),
    ("matmul($x)", "inner sizes 5 and 4 differ"), ("mul(param([4]))", "do not broadcast"), ("div", "second operand"),
    ("concat(param([3, 5]), axis = 1)", "differ in more than axis 1"), ("softmax(2)", "axis 2 does not exist"),
    ("slice(3, 2, axis = 1)", "empty or out of range"), ("unflatten(1, [2, 3])", "does not hold the 5 entries"),
    ("flatten(1, 0)", "not a range")])
def test_bad_primitive_calls_name_the_problem(src, why):
    e = err(f"model t() {{ input x[4, 5]\n x: identity\n {src} }}")
    assert why in e.message and e.span.line == 3, e.message


def test_library_import_by_name():
    assert archdsl.build(archdsl.parse('import "tokens"\nmodel t() { input x[4, 6]\n seqpool }'))
    e = err('import "atention"\nmodel t() { input x[4, 6]\n relu }')
    assert "no library 'atention'" in e.message and "attention" in e.hint and e.span.line == 1


def test_the_step_by_step_mixer_in_the_docs_builds_and_runs():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    src = next(b for b in doc.split("```")[1::2] if "block my_attention" in b)
    G = archdsl.build(archdsl.parse(src))
    assert G.nodes[G.graph["output"]]["shape"] == (10,)
    y = archdsl.compile(G)(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_cvt_attention_with_a_cls_token_against_float64():
    m = randomize(compiled('import "attention"\nmodel c() { input x[6, 13]\n cvt_attention_cls(6, 2, [3, 4]) }'))
    p, pre = sd(m), "cvt_attention_cls"
    x = torch.randn(2, 6, 13, dtype=torch.float64)
    cls, grid = x[:, :, :1], x[:, :, 1:].reshape(2, 6, 3, 4)

    def proj(name, stride):
        y = F.conv2d(grid, p[f"{pre}.{name}c.dwconv.weight"], stride=stride, padding=1, groups=6)
        y = bn_eval(y.flatten(2), p, f"{pre}.{name}c.bn")
        t = lin(torch.cat([cls, y], dim=2), p[f"{pre}.{name}.linear.weight"], p[f"{pre}.{name}.linear.bias"])
        return t.reshape(2, 2, 3, -1)

    out = ref_heads_attention(proj("q", 1), proj("k", 2), proj("v", 2), scale=6 ** -0.5)
    ref = lin(out, p[f"{pre}.proj.linear.weight"], p[f"{pre}.proj.linear.bias"])
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


def test_cvt_13_has_the_published_parameter_count_and_runs():
    G = archdsl.build(archdsl.parse(MODELS / "cvt_13.arch"))
    assert totals(G)["params"] == 19_997_480
    assert sum(p.numel() for p in archdsl.compile(G).parameters()) == 19_997_480
    small = archdsl.compile(archdsl.build(archdsl.parse(MODELS / "cvt_13.arch"), size=32, classes=10)).eval()
    with torch.no_grad():
        y = small(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_lsnet_attention_against_float64():
    m = randomize(compiled('import "attention"\nmodel l() { input x[8, 3, 3]\n lsnet_attention(8, 2, 2, 3, attn_ratio = 3) }'))
    p, pre = sd(m), "lsnet_attention"
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    qkv = bn_eval(F.conv2d(x, p[f"{pre}.qkv.conv.weight"]).flatten(2), p, f"{pre}.qkv.bn").reshape(2, -1, 3, 3)
    q, k, v = qkv.split([4, 4, 12], dim=1)
    q = bn_eval(F.conv2d(q, p[f"{pre}.q.dwconv.weight"], padding=1, groups=4).flatten(2), p, f"{pre}.q.bn")
    bias = p[f"{pre}.attn.bias_table.attention_biases"][:, first_seen_index(3)]  # as the official code reads it
    out = ref_heads_attention(q.reshape(2, 2, 2, 9), k.reshape(2, 2, 2, 9), v.reshape(2, 2, 6, 9), bias=bias)
    ref = bn_eval(lin(F.relu(out), p[f"{pre}.proj.conv.weight"].flatten(1)), p, f"{pre}.proj.bn").reshape(2, 8, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


def test_lsnet_t_has_the_published_parameter_count_and_runs():
    G = archdsl.build(archdsl.parse(MODELS / "lsnet_t.arch"))
    assert totals(G)["params"] == 11_409_832
    assert sum(p.numel() for p in archdsl.compile(G).parameters()) == 11_409_832
    small = archdsl.compile(archdsl.build(archdsl.parse(MODELS / "lsnet_t.arch"), size=64, classes=10)).eval()
    with torch.no_grad():
        y = small(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
