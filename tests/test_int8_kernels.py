"""The int8 deploy's quantized ops against references that simulate the quantization by hand in float64.

Wide layers, full-range uint8 activations and weights up to +-127: where the CPU's quantized kernels are not
exact (fbgemm without AVX-512 VNNI saturates int16 pair sums) the ops must fall back to QAT's float arithmetic,
so every check here holds on either kind of CPU. Tolerance: a requantized output may differ from the float64
reference by one level where float32 and float64 fall on either side of a rounding boundary (rare: < 1 %).
"""
import pytest
import torch

from archdsl.ops.quantized import QAdd, QConv, QLinear, _QuantizedOp


def _levels(x, s, z):
    """x rounded onto the uint8 grid (s, z), as integer levels in float64 (round half to even, as torch)."""
    return torch.clamp(torch.round(x.double() / s) + z, 0, 255)


def _deq(levels, s, z):
    return (levels - z) * s


def _wide_conv(cin, cout, k, nd, seed):
    g = torch.Generator().manual_seed(seed)
    m = QConv(cin, cout, (k,) * nd, (1,) * nd, (k // 2,) * nd, (1,) * nd, relu=True)
    m.qweight.copy_(torch.randint(-127, 128, m.qweight.shape, generator=g, dtype=torch.int8))
    m.wscale.copy_(torch.rand(cout, generator=g) * 0.002 + 0.0005)
    m.bias.copy_(torch.randn(cout, generator=g) * 0.1)
    m.x_scale.fill_(0.0213)
    m.x_zero.fill_(121.0)
    m.y_scale.fill_(0.047)
    m.y_zero.fill_(0.0)
    return m


def _conv_levels(m, x_levels, xs, xz):
    """Hand-simulated conv: dequantize the levels, convolve in float64 with weight level x scale, ReLU, round
    onto the output grid."""
    w = m.qweight.double() * m.wscale.double().view(-1, *([1] * (m.qweight.dim() - 1)))
    conv = torch.nn.functional.conv1d if x_levels.dim() == 3 else torch.nn.functional.conv2d
    y = conv(_deq(x_levels, xs, xz), w, m.bias.double(), m.stride, m.padding, m.dilation, m.groups)
    return _levels(torch.relu(y), float(m.y_scale), float(m.y_zero))


def _close_levels(got, want):
    diff = (got.double() - want).abs()
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).double().mean() < 0.01, (diff.max(), (diff > 0).double().mean())


def test_probe_verdict_matches_a_direct_measurement_of_the_kernel():
    # the kernel itself (no fallback) on a wide conv at full range: exact where the probe says so, else wrong
    # somewhere by more than a level
    m = _wide_conv(128, 16, 3, 2, seed=3)
    g = torch.Generator().manual_seed(4)
    levels = torch.randint(0, 256, (2, 128, 7, 7), generator=g).double()
    q = torch._make_per_tensor_quantized_tensor(levels.to(torch.uint8), 0.0213, 121)
    packed = m._prepack(m._qweight(), m._bias(), m.stride, m.padding, m.dilation, m.groups)
    got = torch.ops.quantized.conv2d_relu(q, packed, 0.047, 0).int_repr().double()
    off = ((got - _conv_levels(m, levels, 0.0213, 121)).abs() > 1).any()
    assert bool(off) != _QuantizedOp.kernels_exact()


@pytest.mark.parametrize("nd,cin,size", [(1, 96, (23,)), (2, 128, (9, 7))])
def test_wide_full_range_qconv_against_hand_simulation(nd, cin, size):
    m = _wide_conv(cin, 24, 3, nd, seed=nd)
    x = torch.randn(3, cin, *size, generator=torch.Generator().manual_seed(5)) * 2.5
    y = m(x)  # a float input: quantized on entry with the node's own grid
    assert y.is_quantized and y.q_zero_point() == 0
    _close_levels(y.int_repr(), _conv_levels(m, _levels(x, 0.0213, 121), 0.0213, 121))


def test_qlinear_requantized_over_the_channel_axis_against_hand_simulation():
    g = torch.Generator().manual_seed(6)
    m = QLinear(200, 7, relu=False)
    m.qweight.copy_(torch.randint(-127, 128, (7, 200), generator=g, dtype=torch.int8))
    m.wscale.copy_(torch.rand(7, generator=g) * 0.001 + 0.0005)
    m.bias.copy_(torch.randn(7, generator=g))
    m.x_scale.fill_(0.02)
    m.x_zero.fill_(30.0)
    m.y_scale.fill_(0.09)
    m.y_zero.fill_(140.0)
    for shape in [(5, 200), (2, 200, 3)]:
        x = torch.rand(*shape, generator=g) * 4.5 - 0.5
        lv = _levels(x, 0.02, 30)
        w = m.qweight.double() * m.wscale.double()[:, None]
        ref = torch.einsum("nc...,oc->no...", _deq(lv, 0.02, 30), w) + m.bias.double().view(-1, *[1] * (len(shape) - 2))
        _close_levels(m(x).int_repr(), _levels(ref, 0.09, 140))


def test_a_grid_wider_than_the_readers_observer_is_clipped_as_qat_clipped():
    m = _wide_conv(32, 8, 1, 2, seed=7)
    m.x_scale.fill_(0.02)
    m.x_zero.fill_(0.0)  # the reader trained on [0, 5.1]
    x = torch.rand(2, 32, 5, 5, generator=torch.Generator().manual_seed(8)) * 10
    wide = torch.quantize_per_tensor(x, 0.04, 0, torch.quint8)  # [0, 10.2], as a wider reader chose
    clipped = _levels(_deq(wide.int_repr().double(), 0.04, 0), 0.02, 0)  # QAT: this node's observer again
    _close_levels(m(wide).int_repr(), _conv_levels(m, clipped, 0.02, 0))
    # a grid inside the observer's range is read as it is (no second rounding)
    narrow = torch.quantize_per_tensor(x.clamp(max=2.0), 0.01, 0, torch.quint8)
    _close_levels(m(narrow).int_repr(), _conv_levels(m, narrow.int_repr().double(), 0.01, 0))


def test_residual_chain_against_hand_simulation():
    # conv >> relu, conv, add(relu) with the first conv's result, classifier with a float result: every op on
    # its own grid, each step simulated by hand from the reference's own previous levels
    c1 = _wide_conv(64, 64, 3, 2, seed=9)
    c2 = _wide_conv(64, 64, 3, 2, seed=10)
    c2.relu = False
    c2._kernel = torch.ops.quantized.conv2d
    c2.x_scale.fill_(0.047)
    c2.x_zero.fill_(0.0)
    c2.y_scale.fill_(0.06)
    c2.y_zero.fill_(128.0)
    add = QAdd(relu=True)
    add.y_scale.fill_(0.05)
    add.y_zero.fill_(0.0)
    head = QLinear(64, 10, requantize=False)
    head.wscale.copy_(torch.rand(10, generator=torch.Generator().manual_seed(11)) * 0.002 + 0.001)
    head.x_scale.fill_(0.05)
    head.x_zero.fill_(0.0)
    x = torch.randn(2, 64, 6, 6, generator=torch.Generator().manual_seed(12)) * 2
    a = c1(x)
    b = c2(a)
    s = add(a, b)
    y = head(s.dequantize().mean((2, 3)).contiguous())  # global average pool in float, then the classifier
    ra = _conv_levels(c1, _levels(x, 0.0213, 121), 0.0213, 121)
    w2 = c2.qweight.double() * c2.wscale.double().view(-1, 1, 1, 1)
    rb = _levels(torch.nn.functional.conv2d(_deq(ra, 0.047, 0), w2, c2.bias.double(), 1, 1), 0.06, 128)
    rs = _levels(torch.relu(_deq(ra, 0.047, 0) + _deq(rb, 0.06, 128)), 0.05, 0)
    pooled = _deq(rs, 0.05, 0).mean((2, 3))
    ry = _deq(_levels(pooled, 0.05, 0), 0.05, 0) @ (head.qweight.double() * head.wscale.double()[:, None]).t()
    _close_levels(a.int_repr(), ra)
    _close_levels(b.int_repr(), rb)
    _close_levels(s.int_repr(), rs)
    # the logits: the levels above may differ by one in < 1 % of places, each moving a logit by at most
    # step x |weight| / 36 taps; well inside 1 % of the logits' range
    assert y.dtype == torch.float32
    assert (y.double() - ry - head.bias.double()).abs().max() <= 0.01 * ry.abs().max()



@pytest.mark.parametrize("batch,cin,cout,relu", [(1, 2048, 300, False), (8, 2048, 40, True), (3, 64, 10, False)])
def test_float_result_classifier_against_float64(batch, cin, cout, relu):
    # large (oneDNN's int8 kernel with a float32 result, where exact here) or small (QAT's float32 product):
    # full-range levels, weights up to +-127, either way within float32 rounding of the float64 sum
    g = torch.Generator().manual_seed(cin + cout)
    m = QLinear(cin, cout, relu=relu, requantize=False)
    m.qweight.copy_(torch.randint(-127, 128, (cout, cin), generator=g, dtype=torch.int8))
    m.wscale.copy_(torch.rand(cout, generator=g) * 0.002 + 0.0005)
    m.bias.copy_(torch.randn(cout, generator=g))
    m.x_scale.fill_(0.031)
    m.x_zero.fill_(17.0)
    levels = torch.randint(0, 256, (batch, cin), generator=g).double()
    y = m(torch._make_per_tensor_quantized_tensor(levels.to(torch.uint8), 0.031, 17))
    ref = _deq(levels, 0.031, 17) @ (m.qweight.double() * m.wscale.double()[:, None]).t() + m.bias.double()
    ref = torch.relu(ref) if relu else ref
    assert y.dtype == torch.float32 and y.shape == (batch, cout)
    assert (y.double() - ref).abs().max() <= 1e-6 * ref.abs().max()
    large = batch * cin * cout >= QLinear.INT8_RESULT_MACS
    assert ("int8" in m._prepared()[0]) == (large and QLinear.int8_result_exact())


def test_float_result_probe_matches_a_direct_measurement_of_the_kernel():
    # the int8 kernel alone on full-range levels and +-127 weights: exact sums where the probe says so
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        assert not QLinear.int8_result_exact()
        return
    g = torch.Generator().manual_seed(31)
    w = torch.randint(-127, 128, (16, 512), generator=g, dtype=torch.int8)
    w[0] = 127  # the worst case beside random rows: every product 255 x 127
    x = torch.randint(0, 256, (4, 512), generator=g, dtype=torch.uint8)
    x[0] = 255
    packed = torch.ops.onednn.qlinear_prepack(w, None)
    y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, torch.ones(16), torch.zeros(16, dtype=torch.long), None,
                                           1.0, 0, torch.float32, "none", [], "")
    exact = torch.equal(y.double(), x.double() @ w.double().t())  # sums below 2^24: float32 holds them exactly
    assert exact == QLinear.int8_result_exact()

# ---- 7-bit activations (levels 0..127, torch.ao's reduce_range) -----------------------------------------

def test_seven_bit_probe_is_exact_on_every_cpu():
    # 127 * 127 * 2 < 32767: no int16 pair sum can saturate, so the kernels are exact on AVX2 fbgemm too
    assert _QuantizedOp.kernels_exact(127)


@pytest.mark.parametrize("nd,size", [(1, (19,)), (2, (7, 9))])
def test_seven_bit_qconv_clips_its_input_at_level_127_and_runs_the_kernel(monkeypatch, nd, size):
    # as on a CPU without VNNI: 8-bit activations would take the float32 path, 7-bit ones the int8 kernel
    engine = torch.backends.quantized.engine
    monkeypatch.setitem(_QuantizedOp._exact, (engine, 255), False)
    m = _wide_conv(96, 16, 3, nd, seed=20 + nd)
    m.levels = 127
    m.x_scale.fill_(0.04)
    m.x_zero.fill_(20.0)  # the node trained on [-0.8, 4.28]
    m._cache = None
    x = torch.randn(2, 96, *size, generator=torch.Generator().manual_seed(21)) * 3  # well past 4.28
    packed = m._prepared()[0]
    assert not isinstance(packed, tuple)  # the packed int8 weight, not the float32 fallback
    clipped = torch.clamp(torch.round(x.double() / 0.04) + 20, 0, 127)  # QAT's 7-bit fake quantization
    _close_levels(m(x).int_repr(), _conv_levels(m, clipped, 0.04, 20))
    # a quantized input on a wider 8-bit grid: requantized onto the node's grid, then clipped at 127
    wide = torch.quantize_per_tensor(x, 0.0537, 30, torch.quint8)  # (a ratio of scales with no ties)
    again = torch.clamp(torch.round(_deq(wide.int_repr().double(), 0.0537, 30) / 0.04) + 20, 0, 127)
    _close_levels(m(wide).int_repr(), _conv_levels(m, again, 0.04, 20))


def test_seven_bit_observer_grid_against_a_loop():
    from archdsl.quant import ActFakeQuant

    obs = ActFakeQuant(levels=127)
    x = torch.linspace(-1.3, 2.9, 301)
    obs.train()(x)  # first batch: the range is the batch's
    y = obs.eval()(x * 1.5)  # past the range: clipped
    scale = 4.2 / 127
    zero = round(1.3 / scale)
    want = [(min(max(round(v / scale) + zero, 0), 127) - zero) * scale for v in (x * 1.5).double().tolist()]
    assert torch.allclose(y.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6)
    assert len(set(torch.round(y / scale).tolist())) <= 128


def test_seven_bit_model_deploys_onto_kernels_that_agree_with_qat(monkeypatch):
    import archdsl
    from archdsl.quant import set_activation_bits

    engine = torch.backends.quantized.engine
    monkeypatch.setitem(_QuantizedOp._exact, (engine, 255), False)
    src = """
@precision(int8)
model m() {
  input x[3, 24]
  conv(32, k = 3, padding = 1) >> bn >> relu >> conv(32, k = 3, padding = 1) >> relu
  gap >> linear(5)
}
"""
    torch.manual_seed(0)
    module = archdsl.compile(archdsl.parse(src))
    assert set_activation_bits(module, 7) == 7  # each int8 node observes its input: conv bn relu conv relu gap linear
    module.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # observers and BN statistics settle, as after QAT
        module(torch.randn(16, 3, 24, generator=g))
    module.eval()
    x = torch.randn(8, 3, 24, generator=g)
    deployed = module.deploy(log=lambda msg: None)
    kernels = [m for m in deployed.modules() if isinstance(m, (QConv, QLinear))]
    assert kernels and all(k.levels == 127 for k in kernels)
    assert all(not isinstance(k._prepared()[0], tuple) for k in kernels if isinstance(k, QConv))
    with torch.no_grad():
        want, got = module(x), deployed(x)
    # one 7-bit quantization step of the logits' scale, at most, per rounding point deploy skips
    assert (got - want).abs().max() < 0.1 * want.abs().max(), (got - want).abs().max()
