"""The C sparse 1x1 kernel (archdsl.ops.native) against a float64 product of a weight written entry by entry,
at pixel counts that hit each of its 64 / 16 / 1 blocks and rows with no non-zero; the deployed sparsepw_csr on
it in float32; and the fallback to torch's CSR product (autograd, float64, no compiler)."""
from __future__ import annotations

import pytest
import torch

import archdsl
from archdsl.ops import native
from archdsl.ops.sparse_pw import CsrConv1x1, csr_reference
from archdsl.passes import sparse_kernels as sk

needs_kernel = pytest.mark.skipif(not native.available(), reason="no C compiler built the native kernel")


def _random_csr(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    mask[0] = False  # an empty row: only the bias reaches it
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    col, val = [], []
    for r in range(rows):
        for c in range(cols):
            if mask[r, c]:
                col.append(c)
                val.append(float(torch.randn(1, generator=g)))
        crow[r + 1] = len(col)
    return crow, torch.tensor(col, dtype=torch.int32), torch.tensor(val, dtype=torch.float32)


def _loop_reference(crow, col, val, x, bias):
    rows = crow.numel() - 1
    w = torch.zeros(rows, x.shape[1], dtype=torch.float64)
    for r in range(rows):
        for j in range(int(crow[r]), int(crow[r + 1])):
            w[r, int(col[j])] = float(val[j])
    y = torch.einsum("oc,ncp->nop", w, x.double())
    return y if bias is None else y + bias.double()[:, None]


@needs_kernel
@pytest.mark.parametrize("pixels", [1, 3, 15, 16, 17, 29, 49, 64, 83, 147, 196])
@pytest.mark.parametrize("batch,bias", [(1, True), (3, False)])
def test_kernel_agrees_with_a_float64_product(pixels, batch, bias):
    crow, col, val = _random_csr(7, 13, 0.3, seed=pixels)
    x = torch.randn(batch, 13, pixels)
    b = torch.randn(7) if bias else None
    y = native.spmm_rows(crow, col, val, x, b)
    assert y.shape == (batch, 7, pixels) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _loop_reference(crow, col, val, x, b), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_kernel_reads_a_strided_input():
    crow, col, val = _random_csr(5, 6, 0.5, seed=1)
    x = torch.randn(2, 6, 40).transpose(1, 2).contiguous().transpose(1, 2)  # channels-last storage
    torch.testing.assert_close(native.spmm_rows(crow, col, val, x, None).double(),
                               _loop_reference(crow, col, val, x, None), rtol=1e-5, atol=1e-5)


def _csr_module(seed=0):
    m = CsrConv1x1(9, 6, keep=20).eval()
    crow, col, val = _random_csr(6, 9, 0.4, seed)
    m.crow, m.col = crow, col
    m.values = torch.nn.Parameter(val)
    with torch.no_grad():
        m.bias.copy_(torch.randn(6))
    return m


@needs_kernel
def test_module_in_float32_inference_runs_the_kernel(monkeypatch):
    m = _csr_module()
    calls = []
    real = native.spmm_rows
    monkeypatch.setattr(native, "spmm_rows", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 9, 5, 7)
    with torch.no_grad():
        y = m(x)
    assert calls and y.shape == (2, 6, 5, 7)
    torch.testing.assert_close(y.double(), csr_reference(m, x), rtol=1e-5, atol=1e-5)


def test_autograd_and_float64_take_torchs_product(monkeypatch):
    monkeypatch.setattr(native, "spmm_rows", lambda *a: pytest.fail("the C kernel has no backward"))
    m = _csr_module()
    x = torch.randn(2, 9, 4)
    m(x).square().sum().backward()  # grad mode with learnable values: torch's CSR product
    assert m.values.grad is not None and m.values.grad.shape == m.values.shape
    m = m.double()
    xd = x.double()
    torch.testing.assert_close(m(xd), csr_reference(m, xd), rtol=1e-12, atol=1e-12)


def test_without_a_compiler_torchs_product_and_its_own_threshold(monkeypatch):
    monkeypatch.setenv("ARCHDSL_NO_NATIVE", "1")
    native._library.cache_clear()
    try:
        assert not native.available() and native.spmm_rows(None, None, None, None, None) is None
        least, kernel = sk.threshold()
        assert least == sk.MIN_SPARSITY_TORCH and "torch" in kernel
        m = _csr_module()
        x = torch.randn(3, 9, 6)
        with torch.no_grad():
            torch.testing.assert_close(m(x).double(), csr_reference(m, x), rtol=1e-5, atol=1e-5)
        text = "model t() { input image[16, 4, 4]\n sparsepw(8, sparsity = 0.8) }"
        res = next(r for r in archdsl.compile(text, mode="deploy").pass_results if r.name == "sparse_kernels")
        (_, why), = res.declined
        assert "80% is below 85%" in why and "torch's CSR matmul" in why
    finally:
        native._library.cache_clear()


@needs_kernel
def test_the_build_is_cached_per_source_and_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = native._build()
    assert first is not None and first.parent == tmp_path / "archdsl" / "native"
    assert native._build() == first and [p.name for p in first.parent.iterdir()] == [first.name]


@needs_kernel
def test_deployed_float32_model_on_the_kernel_computes_the_trained_layer():
    torch.manual_seed(0)
    m = archdsl.compile("model t() { input image[24, 7, 9]\n sparsepw(20, sparsity = 0.8) >> gelu }").eval()
    d = m.deploy(select=["sparse_kernels"])
    assert d.archdsl_ir.nodes["sparsepw"]["op"] == "sparsepw_csr"
    x = torch.randn(3, 24, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(d(x), m(x), rtol=1e-5, atol=1e-5)


def test_a_failing_compiler_leaves_no_file_and_no_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert native._build() is None
    assert list((tmp_path / "archdsl" / "native").iterdir()) == []


def test_int64_indices_and_wrong_channels(monkeypatch):
    m = _csr_module()
    m.crow, m.col = m.crow.long(), m.col.long()  # indices set by hand in int64: torch's product reads them
    monkeypatch.setattr(native, "spmm_rows", lambda *a: pytest.fail("the C kernel reads int32 indices"))
    x = torch.randn(2, 9, 3)
    with torch.no_grad():
        torch.testing.assert_close(m(x).double(), csr_reference(m, x), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="9 input channels"):
            m(torch.randn(2, 8, 3))
