"""lower_precision: deploy runs each region at its precision, and computes what training simulated.

The reference for int8 is the train-mode module in eval mode: torch's fake_quantize ops on fp32 tensors. The
deploy module computes with integers (torch._int_mm) and explicit quantize nodes, so agreement checks the
whole conversion: observer scale and zero point, per-channel weight scales, padding with the zero point,
im2col order, the zero-point correction.
"""
import subprocess
import sys

import pytest
import torch

import archdsl
from archdsl.ops.precision_ops import Cast, Int8Conv, Int8Linear, QuantDequant
from archdsl.ops.quantized import QAdd, QConv, QLinear
from archdsl.quant import ActFakeQuant
import archdsl.passes.lower_precision as lower_precision_module
from archdsl.passes import run_pipeline

INT8_1D = """
@precision(int8)
model m() {
  input x[3, 19]
  conv(8, k = 4, stride = 2) >> relu >> conv(8, k = 4, padding = "same")
  residual { dwconv(5) >> ln >> pwconv(16) >> gelu >> linear(8) }
  conv(6, k = 3, dilation = 2, padding = 1, bias = false) >> bn
}
"""
INT8_2D = """
@precision(int8)
model m() {
  input x[3, 11, 9]
  conv(8, k = 3, stride = 2, padding = 1) >> bn >> relu
  residual { dwconv(3) >> pwconv(12) >> silu >> pwconv(8) }
  gap >> linear(5)
}
"""


def _trained(src, steps=3, seed=0, shape=None):
    """A train-mode module after a few SGD steps (weights moved, observers settled), and an input batch."""
    torch.manual_seed(seed)
    m = archdsl.compile(archdsl.parse(src))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    G = m.archdsl_ir
    x = torch.randn(6, *G.nodes[G.graph["input"]]["shape"])
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    return m.eval(), torch.randn(5, *G.nodes[G.graph["input"]]["shape"])


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _settle(m, x):
    """Observers reset and shown x once (train mode, weights unchanged): x then lies inside every trained
    range, so deploy and QAT can differ only where deploy drops a rounding point, never by clipping."""
    for mod in m.modules():
        if isinstance(mod, ActFakeQuant):
            mod.seen.zero_()
    with torch.no_grad():
        m.train()(x)
    return m.eval()


def _largest_step(m):
    return max(float(a.qparams()[0]) for a in m.modules() if isinstance(a, ActFakeQuant) and int(a.seen))


@pytest.mark.parametrize("src", [INT8_1D, INT8_2D], ids=["1d", "2d"])
def test_int8_deploy_runs_pytorch_quantized_kernels_within_a_step_of_training(src):
    m, x = _trained(src)
    _settle(m, x)
    with torch.no_grad():
        y = m(x)
        d = m.deploy(log=lambda msg: None)
        yd = d(x)
    qconvs = [mod for mod in d.modules() if isinstance(mod, QConv)]
    assert qconvs and all(k.qweight.dtype == torch.int8 for k in qconvs)
    assert any(k.relu for k in qconvs)  # conv >> [bn >>] relu: one kernel with the ReLU fused
    assert any(isinstance(k, QAdd) for k in d.modules())  # the residual add stays quantized
    # Each rounding point QAT had and deploy drops (a fused relu's or folded bn's observer, a tensor two int8
    # nodes read on one grid) moves a value by at most half a step of that observer; a handful in sequence,
    # through weights of norm ~1, stay within two steps of the coarsest observer.
    assert (yd - y).abs().max() <= 2 * _largest_step(m)
    declined = dict(next(r for r in d.pass_results if r.name == "lower_precision").declined)
    assert "no int8 kernel for" in next(iter(declined.values()))  # ln / silu: simulated, and said so


EXACT = """
@precision(int8)
model m() {
  input x[3, 13, 11]
  conv(8, k = 3, stride = 2, padding = 1) >> conv(6, k = [1, 3], groups = 2, padding = [0, 1]) >> flatten
  linear(4)
}
"""


@pytest.mark.parametrize("src", [EXACT, EXACT.replace("[3, 13, 11]", "[3, 17]").replace("[1, 3]", "3")
                                 .replace("[0, 1]", "1")], ids=["2d", "1d"])
def test_int8_chain_without_dropped_rounding_points_equals_training(src):
    # conv requantizes onto conv_1's observer, conv_1 onto flatten's, the classifier reads flatten's grid and
    # returns its exact float result: exactly QAT's rounding points (flatten's and linear's observers saw the
    # same tensor), so only float rounding separates the two (batch 1)
    m, x = _trained(src)
    x = x[:1]
    _settle(m, x)
    with torch.no_grad():
        y, d = m(x), m.deploy(log=lambda msg: None)
        yd = d(x)
    assert [type(d.get_submodule(n)).__name__ for n in ("conv", "conv_1", "linear")] == ["QConv", "QConv",
                                                                                         "QLinear"]
    assert not d.get_submodule("linear").requantize  # float logits: no output grid
    assert _rel(yd, y) < 1e-5


def test_int8_weights_are_per_channel_symmetric_integers():
    m, _ = _trained(INT8_2D)
    d = m.deploy(log=lambda msg: None)
    w = m.get_submodule("linear").op.weight.detach()
    k = d.get_submodule("linear")
    assert isinstance(k, QLinear)
    scale = w.abs().amax(1) / 127
    torch.testing.assert_close(k.wscale, scale)
    assert torch.equal(k.qweight.long(), torch.round(w / scale[:, None]).long())
    assert k.qweight.abs().max() == 127  # the largest weight of each row maps to +-127
    lo, hi = float(m.get_submodule("linear").act.lo), float(m.get_submodule("linear").act.hi)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    assert float(k.x_scale) == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert float(k.x_zero) == round(-lo / ((hi - lo) / 255))


def test_a_tensor_read_by_two_simulated_int8_nodes_is_quantized_once():
    src = """
@precision(int8)
model m() {
  input x[4, 10]
  relu
  parallel(concat) { ln } { ln }
}
"""
    m, x = _trained(src)
    d = m.deploy(log=lambda msg: None)
    q = [n for n, nd in d.archdsl_ir.nodes(data=True) if nd["op"] == "quantize"]
    readers = {n: sorted(d.archdsl_ir.successors(n)) for n in q}
    # relu reads the model input (a float input: relu is simulated); its result is rounded once for both ln,
    # whose observers saw the same tensor
    assert sorted(len(r) for r in readers.values()) == [1, 2], readers
    with torch.no_grad():
        assert _rel(d(x), m(x)) < 1e-6


def test_never_observed_inputs_stay_unquantized_and_are_named():
    torch.manual_seed(0)
    m = archdsl.compile(archdsl.parse(INT8_2D)).eval()  # no forward pass in train mode: observers empty
    with pytest.warns(UserWarning, match="run simulated"):
        d = m.deploy()
    G = d.archdsl_ir
    assert not any(nd["op"] in ("quantize", "int8_linear", "int8_conv") for _, nd in G.nodes(data=True))
    declined = dict(next(r for r in d.pass_results if r.name == "lower_precision").declined)
    assert "never observed" in declined["linear"]
    x = torch.randn(2, 3, 11, 9)
    with torch.no_grad():
        assert _rel(d(x), m(x)) < 1e-5


BF16 = """
model m() {
  input x[4, 9, 7]
  @precision(bf16) { conv(8, k = 3, padding = 1) >> bn >> gelu }
  maxpool(2)
  @precision(bf16) { pwconv(8) >> relu }
  gap >> linear(3)
}
"""


@pytest.mark.parametrize("p,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_bf16_fp16_regions_run_in_their_dtype_with_casts_only_at_the_edges(p, dtype, monkeypatch):
    monkeypatch.setattr(lower_precision_module, "LOW_FLOAT_PAYS_MACS", 0)  # these tiny convs: bf16 kernels anyway
    monkeypatch.setattr(lower_precision_module, "NATIVE_LOW_FLOAT", {"bf16": True, "fp16": True})
    src = BF16.replace("bf16", p)
    m, x = _trained(src)
    d = m.deploy(log=lambda msg: None)
    G = d.archdsl_ir
    state = d.state_dict()
    assert state["fused.conv.weight"].dtype == dtype  # the BN folded into it, then converted, then fused
    assert state["fused_1.pwconv.weight"].dtype == dtype and state["linear.weight"].dtype == torch.float32
    casts = sorted((nd["attrs"].to, next(iter(G.predecessors(n)))) for n, nd in G.nodes(data=True)
                   if nd["op"] == "cast")
    want = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    # into the first region and out of the second: the fp32 maxpool between them runs in the region's dtype
    assert sorted(c[0] for c in casts) == sorted(["float32", want]), casts
    assert G.nodes["maxpool"]["dtype"] == want
    with torch.no_grad():
        yd, y = d(x), m(x)
        ref = archdsl.compile(archdsl.parse(src.replace(p, "fp32")))
        ref.load_state_dict({k.replace(".op.", "."): v for k, v in m.state_dict().items()})
        y32 = ref.eval()(x)
    assert yd.dtype == torch.float32
    assert _rel(yd, y32) < 3e-2 and _rel(y, y32) < 3e-2  # both are the fp32 function, rounded


@pytest.mark.parametrize("native", [True, False])
def test_bf16_kernel_choice_follows_the_measured_size_rule(monkeypatch, native):
    # a 1-D conv of 2.4k MACs per sample (the MNIST-1D CNN's stem) is below the size where oneDNN's bf16 kernel
    # beats fp32 on CPU: it runs the fp32 kernel on bf16-rounded weights; a 2-D conv of 9.4M MACs runs in bf16
    # on a CPU with native bf16, and on the fp32 kernel too where bf16 is emulated
    from archdsl.passes import lower_precision as lower_precision_module
    from archdsl.passes.lower_precision import LOW_FLOAT_PAYS_MACS

    monkeypatch.setattr(lower_precision_module, "NATIVE_LOW_FLOAT", {"bf16": native, "fp16": native})
    small = "@precision(bf16)\nmodel m() { input x[1, 40]\n conv(25, k = 5, stride = 2, padding = 1) >> relu }"
    big = "@precision(bf16)\nmodel m() { input x[32, 32, 32]\n conv(32, k = 3, padding = 1) >> relu }"
    for src, runs in ((small, torch.float32), (big, torch.bfloat16 if native else torch.float32)):
        torch.manual_seed(0)
        m = archdsl.compile(archdsl.parse(src)).eval()
        d = m.deploy(log=lambda msg: None)
        macs = m.archdsl_ir.nodes["conv"]["macs"]  # (deploy fuses conv >> relu)
        assert (macs < LOW_FLOAT_PAYS_MACS or not native) == (runs == torch.float32)
        w = next(t for k, t in d.state_dict().items() if k.endswith("weight"))
        assert w.dtype == runs
        w0 = m.conv.op.weight.detach()
        assert torch.equal(w.float(), w0.to(torch.bfloat16).float())  # bf16 values either way
        if runs == torch.float32 and src == small:  # the fp32 kernel on bf16-rounded weights: float64 conv, same values
            x = torch.randn(3, 1, 40)
            b = m.conv.op.bias.detach().to(torch.bfloat16).double()  # the bias is a bf16 value too
            ref = torch.relu(torch.nn.functional.conv1d(x.double(), w.double(), b, 2, 1))
            with torch.no_grad():
                assert _rel(d(x), ref) < 1e-6


def test_fp8_deploy_is_the_training_rounding_and_is_named_simulated():
    src = INT8_1D.replace("int8", "fp8_e4m3")
    m, x = _trained(src)
    with pytest.warns(UserWarning, match="fp32"):
        d = m.deploy()
    assert any(isinstance(q, QuantDequant) and q.scheme == "fp8_e4m3" for q in d.modules())
    with torch.no_grad():
        assert _rel(d(x), m(x)) < 1e-6


def test_int8_folds_only_what_commutes_with_weight_quantization():
    # conv >> bn scales each output channel: per-channel symmetric int8 weights scale with it, so it folds;
    # bn >> conv would scale the conv's input channels, under one per-output-channel scale: it must not
    m, _ = _trained(INT8_2D)
    d = m.deploy(log=lambda msg: None)
    assert "bn" not in d.archdsl_ir and any("bn" in c for c in next(r for r in d.pass_results
                                                                      if r.name == "fold_bn").changed)
    before = _trained("@precision(int8)\nmodel m() { input x[3, 8, 8]\n bn >> conv(4, k = 1) }")[0]
    fold = next(r for r in before.deploy(log=lambda msg: None).pass_results if r.name == "fold_bn")
    assert not fold.changed and "int8 region" in dict(fold.declined)["bn"]
    fp8 = _trained(INT8_2D.replace("int8", "fp8_e4m3"))[0]
    fold = next(r for r in fp8.deploy(log=lambda msg: None).pass_results if r.name == "fold_bn")
    assert not fold.changed and "fp8_e4m3 region" in dict(fold.declined)["bn"]  # fp8 rounding is not scale-free
    d16 = _trained(BF16)[0].deploy(log=lambda msg: None)
    assert next(r for r in d16.pass_results if r.name == "fold_bn").changed


def test_structure_only_deploy_graph_counts_the_same_parameters():
    G = archdsl.build(archdsl.parse(INT8_2D))
    D, _, _ = run_pipeline(G, None)
    ops = {nd["op"] for _, nd in D.nodes(data=True)}
    assert {"qconv", "qadd", "qlinear"} <= ops
    # the same parameters as the fp32 deploy graph (both fold the bn): lowering to int8 drops none
    D32, _, _ = run_pipeline(archdsl.build(archdsl.parse(INT8_2D.replace("@precision(int8)", ""))), None)
    assert sum(nd["params"] for _, nd in D.nodes(data=True)) == sum(nd["params"] for _, nd in D32.nodes(data=True))


def test_deployed_mixed_precision_module_emits_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setattr(lower_precision_module, "LOW_FLOAT_PAYS_MACS", 0)  # a bf16 kernel in the file
    monkeypatch.setattr(lower_precision_module, "NATIVE_LOW_FLOAT", {"bf16": True, "fp16": True})
    from codegen.python_source import emit

    src = BF16.replace("@precision(bf16) { pwconv(8) >> relu }", "@precision(int8) { pwconv(8) >> relu }")
    m, x = _trained(src)
    d = m.deploy(log=lambda msg: None)
    assert any(isinstance(c, Cast) for c in d.modules()) and any(isinstance(k, QConv) for k in d.modules())
    (tmp_path / "m.py").write_text(emit(d.archdsl_ir))
    torch.save(d.state_dict(), tmp_path / "w.pt")
    with torch.no_grad():
        torch.save((x, d(x)), tmp_path / "xy.pt")
    code = ("import torch, importlib.util as u\n"
            "s = u.spec_from_file_location('m', 'm.py'); mod = u.module_from_spec(s); s.loader.exec_module(mod)\n"
            "M = mod.Model(); M.load_state_dict(torch.load('w.pt')); M.eval(); x, y = torch.load('xy.pt')\n"
            "assert M.fused.conv.weight.dtype == torch.bfloat16 and M.pwconv.qweight.dtype == torch.int8\n"
            "assert torch.equal(M(x), y)\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_int8_kernels_give_the_same_integers_where_int_mm_does_not_take_the_shape(monkeypatch):
    # on CUDA torch._int_mm needs m > 16 and k, n multiples of 8; elsewhere the float64 path must agree exactly
    m, x = _trained(INT8_1D)
    d = m.deploy(log=lambda msg: None)
    with torch.no_grad():
        y = d(x)
        monkeypatch.setattr(Int8Linear, "int_mm_fits", staticmethod(lambda *a: False))
        assert torch.equal(d(x), y)


@pytest.mark.parametrize("batch,cin,size,k,stride,dilation,pad", [
    (1, 1, (40,), (5,), (2,), (1,), (1, 1)),            # the MNIST-1D CNN's stem on one sample
    (1, 3, (9,), (3,), (1,), (2,), (2, 0)),
    (2, 1, (7, 6), (3, 2), (2, 1), (1, 1), (0, 1, 1, 0)),
    (1, 2, (5, 9), (1, 3), (1, 2), (1, 2), (2, 2, 0, 0)),
])
def test_int8_conv_against_float64_dequantized_conv(batch, cin, size, k, stride, dilation, pad):
    from archdsl.ops.precision_ops import _conv_reference

    torch.manual_seed(0)
    m = Int8Conv(cin, 5, k, stride, dilation, pad)
    m.x_scale.fill_(0.031)
    m.x_zero.fill_(117.0)
    m.wscale.copy_(torch.rand(5) * 0.02 + 0.001)
    m.bias.copy_(torch.randn(5))
    x = torch.randn(batch, cin, *size) * 2
    ref = _conv_reference(m, x)
    assert _rel(m(x), ref) < 1e-6 and m(x).shape == ref.shape


def test_deploying_quantized_regions_without_lower_precision_is_a_clear_error():
    from archdsl.errors import ArchError

    m, _ = _trained(INT8_2D)
    with pytest.raises(ArchError, match="needs the lower_precision pass") as e:
        m.deploy(disable=["lower_precision"])
    assert "--disable-pass" in e.value.hint
    with pytest.raises(ArchError, match="int8 regions"):
        m.deploy(select=["fold_bn", "group_fusion"])


@pytest.mark.parametrize("batch,cin,size,k,stride,dilation,pad,groups", [
    (1, 1, (40,), (5,), (2,), (1,), (2,), 1),           # the MNIST-1D CNN's stem on one sample
    (3, 6, (17,), (3,), (1,), (2,), (1,), 3),
    (1, 5, (7, 9), (3, 3), (2, 1), (1, 1), (1, 0), 5),  # depthwise, odd sizes
    (2, 4, (11, 6), (1, 3), (1, 2), (1, 2), (0, 2), 1),
])
def test_quantized_kernels_on_quantized_inputs_against_float64(batch, cin, size, k, stride, dilation, pad, groups):
    # the interior of an int8 region: quint8 in (its own scale / zero point), quint8 out; the reference
    # dequantizes, convolves in float64 and rounds onto the output grid. Each output may differ by at most
    # one level where float32 requantization and float64 fall on either side of a rounding boundary.
    torch.manual_seed(0)
    cout = 2 * groups if 6 % groups else 6
    m = QConv(cin, cout, k, stride, pad, dilation, groups=groups, relu=True)
    m.wscale.copy_(torch.rand(cout) * 0.02 + 0.003)
    m.bias.copy_(torch.randn(cout) * 0.3)
    m.y_scale.fill_(0.0213)
    m.y_zero.fill_(0.0)
    q = torch.quantize_per_tensor(torch.randn(batch, cin, *size) * 2, 0.0337, 119, torch.quint8)
    y = m(q)
    assert y.is_quantized and y.q_scale() == pytest.approx(0.0213) and y.q_zero_point() == 0
    conv = torch.nn.functional.conv1d if len(size) == 1 else torch.nn.functional.conv2d
    ref = torch.relu(conv(q.dequantize().double(), m.qweight.double() * m.wscale.double().view(-1, 1, *[1] * len(size)),
                          m.bias.double(), stride, pad, dilation, groups))
    levels = torch.clamp(torch.round(ref / 0.0213), 0, 255)
    got = y.int_repr().double()
    assert got.shape == levels.shape and (got - levels).abs().max() <= 1 and (got != levels).float().mean() < 0.01


def test_quantized_add_of_two_grids_and_float_result_linear_against_float64():
    torch.manual_seed(1)
    a = torch.quantize_per_tensor(torch.randn(1, 5, 3, 7), 0.021, 130, torch.quint8)
    b = torch.quantize_per_tensor(torch.randn(1, 5, 3, 7) * 3, 0.047, 101, torch.quint8)
    add = QAdd(relu=True)
    add.y_scale.fill_(0.031)
    add.y_zero.fill_(0.0)
    ref = torch.clamp(torch.round(torch.relu(a.dequantize().double() + b.dequantize().double()) / 0.031), 0, 255)
    assert (add(a, b).int_repr().double() - ref).abs().max() <= 1
    # a classifier: exact int32 product scaled to float32, no output grid (QAT's arithmetic)
    lin = QLinear(13, 4, requantize=False)
    lin.wscale.copy_(torch.rand(4) * 0.01 + 0.002)
    lin.bias.copy_(torch.randn(4))
    lin.x_scale.fill_(0.029)  # the grid its input arrives on (a wider one is clipped: see the test below)
    lin.x_zero.fill_(77.0)
    x = torch.quantize_per_tensor(torch.randn(1, 13), 0.029, 77, torch.quint8)
    y = lin(x)
    ref = x.dequantize().double() @ (lin.qweight.double() * lin.wscale.double()[:, None]).t() + lin.bias.double()
    assert y.dtype == torch.float32 and _rel(y, ref) < 1e-6
