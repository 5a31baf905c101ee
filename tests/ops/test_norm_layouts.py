"""Channel-axis ops on any memory layout: ChannelLayerNorm, ChannelRMSNorm, channel_linear (the Linear members of
fused groups), dwconv_cl and a fused ConvNeXt block compute the same math for channels-first, channels-last and
non-dense strided inputs (values and gradients against float64 references built from torch's functional ops),
and a channels-last ConvNeXt block path runs without a single layout copy."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import archdsl
from archdsl.ops.conv import Linear
from archdsl.ops.dwconv_cl import ChannelsLastDepthwiseConv
from archdsl.ops.fused import FusedGroup, channel_linear, fused_reference, fused_torch
from archdsl.ops.norms import ChannelLayerNorm, ChannelRMSNorm
from archdsl.ops.registry import get_op

# (N, C, *spatial): plain feature vectors, 1-D and 2-D maps, odd sizes, size-1 axes, one channel
SHAPES = [(3, 5), (3, 5, 7), (2, 1, 9), (2, 7, 3, 9), (1, 3, 1, 1), (2, 6, 5, 1), (3, 4, 2, 3, 5)]
# a norm over one channel is degenerate (x - mean is float32 rounding, scaled by 1 / sqrt(eps))
NORM_SHAPES = [s for s in SHAPES if s[1] > 1]
LAYOUTS = ("channels_first", "channels_last", "strided")


def make(shape, layout, seed=0, dtype=torch.float32):
    """A tensor of `shape` (values depend on the seed only) laid out as asked: contiguous NCHW; channels
    innermost in memory (torch.channels_last for 4-D); or non-dense (every other element of a wider tensor,
    channels not innermost)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    if layout == "channels_first" or len(shape) == 2 and layout == "channels_last":
        x = torch.empty(shape, dtype=dtype)
    elif layout == "channels_last":
        x = torch.empty((shape[0], *shape[2:], shape[1]), dtype=dtype).movedim(-1, 1)
        assert x.movedim(1, -1).is_contiguous()
    else:
        x = torch.empty((*shape[:-1], 2 * shape[-1]), dtype=dtype)[..., ::2]
        assert not x.is_contiguous() or shape[-1] == 1
    x.copy_(values)
    return x


def perturbed(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def ln_reference(x, weight, bias, eps):
    """float64 F.layer_norm over the channel axis (dim 1)."""
    x = x.double()
    w, b = weight.double(), None if bias is None else bias.double()
    if x.dim() == 2:
        return F.layer_norm(x, (x.shape[1],), w, b, eps)
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],), w, b, eps).movedim(-1, 1)


def rms_reference(x, weight, eps):
    """float64 x / sqrt(mean over channels of x^2 + eps) * weight, from the formula."""
    x = x.double()
    ms = (x * x).mean(1, keepdim=True)
    return x / torch.sqrt(ms + eps) * weight.double().reshape(1, -1, *([1] * (x.dim() - 2)))


def linear_reference(x, weight, bias):
    """float64 sum over c of weight[o, c] * x[n, c, ...] (+ bias[o])."""
    x = x.double()
    y = torch.einsum("oc,nc...->no...", weight.double(), x)
    if bias is not None:
        y = y + bias.double().reshape(1, -1, *([1] * (x.dim() - 2)))
    return y


def leaf_like(x):
    """A leaf requiring grad with the same values and the same strides as x."""
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)
    with torch.no_grad():
        out.copy_(x)
    return out.requires_grad_(True)


def check_values_and_grads(module_fn, ref_fn, x, params, tol):
    """module_fn(x) against ref_fn(x64, *params64): values, then gradients of x and every parameter."""
    xl = leaf_like(x)
    y = module_fn(xl)
    assert y.shape == x.shape[:1] + y.shape[1:] and y.dtype == x.dtype
    want = ref_fn(x.double(), *[p.double() if p is not None else None for p in params])
    torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol)
    g = torch.Generator().manual_seed(7)
    proj = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y.double() * proj).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    p64 = [p.detach().double().requires_grad_(True) if p is not None else None for p in params]
    (ref_fn(x64, *p64) * proj).sum().backward()
    torch.testing.assert_close(xl.grad.double(), x64.grad, rtol=10 * tol, atol=10 * tol)
    for p, q in zip(params, p64):
        if p is not None:
            torch.testing.assert_close(p.grad.double(), q.grad, rtol=10 * tol, atol=10 * tol)
            p.grad = None
    return y


# ---- ChannelLayerNorm / ChannelRMSNorm -------------------------------------------------------------------

@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_channel_layer_norm_any_layout(shape, layout, bias):
    m = perturbed(ChannelLayerNorm(shape[1], eps=1e-6, bias=bias))
    x = 3.0 + 2.0 * make(shape, layout)  # an offset and scale, so the mean and variance matter
    check_values_and_grads(m, lambda x, w, b: ln_reference(x, w, b, 1e-6), x, [m.weight, m.bias], 2e-5)


@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_rms_norm_any_layout(shape, layout):
    m = perturbed(ChannelRMSNorm(shape[1], eps=1e-6))
    x = make(shape, layout)
    check_values_and_grads(m, lambda x, w: rms_reference(x, w, 1e-6), x, [m.weight], 2e-5)


@pytest.mark.parametrize("shape", [s for s in NORM_SHAPES if len(s) > 2])
def test_channel_layer_norm_float64_matches_reference_exactly_enough(shape):
    m = perturbed(ChannelLayerNorm(shape[1], eps=1e-5)).double()
    for layout in LAYOUTS:
        x = make(shape, layout, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(m(x), ln_reference(x, m.weight, m.bias, 1e-5), rtol=1e-12, atol=1e-12)


def test_channel_layer_norm_of_a_channels_last_input_is_copy_free_and_stays_channels_last():
    m = perturbed(ChannelLayerNorm(6))
    x = make((2, 6, 5, 7), "channels_last")
    with OpLog() as log, torch.no_grad():
        y = m(x)
    assert log.copies() == [] and log.contiguous_inputs("native_layer_norm")
    assert y.is_contiguous(memory_format=torch.channels_last)


# ---- channel_linear (Linear members of fused groups) --------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_channel_linear_any_layout(shape, layout, bias):
    m = perturbed(Linear(shape[1], 4, bias=bias))
    x = make(shape, layout)
    y = check_values_and_grads(lambda x: channel_linear(x, m.weight, m.bias), linear_reference, x,
                               [m.weight, m.bias], 2e-5)
    assert y.shape == (shape[0], 4, *shape[2:])
    with torch.no_grad():  # the module it stands in for: the same math
        torch.testing.assert_close(y.detach(), m(x), rtol=1e-5, atol=1e-5)


def test_channel_linear_of_a_channels_last_input_is_one_gemm_without_copies():
    m = perturbed(Linear(6, 10))
    x = make((2, 6, 5, 7), "channels_last")
    with OpLog() as log, torch.no_grad():
        y = channel_linear(x, m.weight, m.bias)
    assert log.copies() == [] and "aten.addmm.default" in log.names
    assert y.shape == (2, 10, 5, 7) and y.is_contiguous(memory_format=torch.channels_last)


# ---- dwconv_cl ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,k,padding", [((2, 5, 11, 9), (7, 7), (3, 3)), ((1, 3, 6, 13), (5, 3), (0, 1)),
                                              ((2, 4, 17, 17), (17, 17), (8, 8))])
def test_dwconv_cl_any_layout_returns_channels_last(layout, shape, k, padding):
    c = shape[1]
    m = perturbed(ChannelsLastDepthwiseConv(c, c, k, padding=padding, groups=c))
    x = make(shape, layout)

    def ref(x, w, b):
        return F.conv2d(x.contiguous(), w, b, padding=padding, groups=c)

    y = check_values_and_grads(m, ref, x, [m.weight, m.bias], 2e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_dwconv_cl_of_a_channels_last_input_copies_nothing():
    m = ChannelsLastDepthwiseConv(4, 4, 5, padding=2, groups=4)
    x = make((2, 4, 9, 8), "channels_last")
    with OpLog() as log, torch.no_grad():
        m(x)
    assert log.copies() == []


# ---- a fused ConvNeXt block --------------------------------------------------------------------------------

BLOCK = {"ops": ("ln", "linear", "gelu", "linear", "layerscale", "add"),
         "names": ("ln", "fc1", "act", "fc2", "scale", "add"),
         "args": (("in0",), ("ln",), ("fc1",), ("act",), ("fc2",), ("in1", "scale")),
         "member_attrs": ((("eps", 1e-6),), (("out", 20),), (), (("out", 5),), (("init", 0.5),), ())}


def fused_block(shape):
    spec = get_op("fused")
    a = spec.bind([], dict(BLOCK), [shape, shape])
    cls, kwargs = fused_torch(a, [shape, shape])
    assert cls is FusedGroup
    torch.manual_seed(0)
    return perturbed(cls(**kwargs))


@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 9), (5, 1, 1)])
@pytest.mark.parametrize("layouts", [("channels_first", "channels_first"), ("channels_last", "channels_last"),
                                     ("channels_last", "channels_first"), ("strided", "channels_last")])
def test_fused_convnext_block_any_layout(shape, layouts):
    m = fused_block(shape)
    x, res = make((3, *shape), layouts[0], seed=3), make((3, *shape), layouts[1], seed=4)
    with torch.no_grad():
        y = m(x, res)
        torch.testing.assert_close(y.double(), fused_reference(m, x, res), rtol=2e-5, atol=2e-5)
    xl, rl = leaf_like(x), leaf_like(res)
    m(xl, rl).square().sum().backward()
    x64, r64 = x.double().requires_grad_(True), res.double().requires_grad_(True)
    fused_reference(m, x64, r64).square().sum().backward()
    torch.testing.assert_close(xl.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rl.grad.double(), r64.grad, rtol=1e-4, atol=1e-4)


def test_fused_convnext_block_on_channels_last_input_copies_nothing():
    m = fused_block((5, 6, 7))
    x, res = make((2, 5, 6, 7), "channels_last", seed=3), make((2, 5, 6, 7), "channels_last", seed=4)
    with OpLog() as log, torch.no_grad():
        y = m(x, res)
    assert log.copies() == [] and log.contiguous_inputs("native_layer_norm")
    assert log.names.count("aten.addmm.default") == 2
    assert y.is_contiguous(memory_format=torch.channels_last)


# ---- a whole model: train vs deploy, and the deploy module's emitted source ---------------------------------

TINY_CONVNEXT = """
block blk(dim) {
  residual { dwconv(17) >> ln(eps = 1e-6) >> linear(4 * dim) >> gelu >> linear(dim) >> layerscale(0.5) }
}
model tiny() {
  input image[3, 24, 20]
  stem: conv(8, k = 2, stride = 2, padding = 0) >> ln(eps = 1e-6)
  blocks: repeat 2 { blk(8) }
  down: ln(eps = 1e-6) >> conv(12, k = 2, stride = 2, padding = 0)
  head: gap >> ln(eps = 1e-6) >> linear(5)
}
"""


def tiny_modules(dtype=torch.float32):
    torch.manual_seed(0)
    train = perturbed(archdsl.compile(TINY_CONVNEXT).to(dtype)).eval()
    return train, train.deploy()


def test_tiny_convnext_deploy_runs_channels_last_and_agrees_with_train():
    train, deploy = tiny_modules()
    ops = [deploy.archdsl_ir.nodes[n]["op"] for n in deploy.archdsl_ir]
    assert ops.count("dwconv_cl") == 2
    x = make((3, 3, 24, 20), "channels_first", seed=5)
    with torch.no_grad():
        want = train(x)
        with OpLog() as log:
            got = deploy(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the stem's conv output is contiguous NCHW: its LayerNorm copies it (inside the kernel) to channels-last;
    # from there on the blocks, the downsampling and the head run without a layout copy
    assert log.copies() == [] and log.contiguous_inputs("native_layer_norm", skip=1)
    # float64: train and deploy are the same math
    train64, deploy64 = tiny_modules(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(deploy64(x.double()), train64(x.double()), rtol=1e-10, atol=1e-10)


def test_tiny_convnext_emitted_deploy_source_matches(tmp_path):
    from codegen.python_source import emit

    _, deploy = tiny_modules()
    path = tmp_path / "tiny_deploy.py"
    path.write_text(emit(deploy.archdsl_ir))
    assert "def channel_linear" in path.read_text()
    spec = importlib.util.spec_from_file_location("tiny_deploy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Model().eval()
    net.load_state_dict(deploy.state_dict())
    x = make((2, 3, 24, 20), "channels_first", seed=6)
    with torch.no_grad():
        torch.testing.assert_close(net(x), deploy(x), rtol=1e-6, atol=1e-6)


# ---- helpers -----------------------------------------------------------------------------------------------

class OpLog(TorchDispatchMode):
    """The aten ops a call dispatches, with whether each tensor argument is contiguous in its own layout
    (row-major, or channels innermost)."""

    COPIES = ("aten.clone", "aten.copy_", "aten._to_copy", "aten.contiguous")

    def __init__(self):
        super().__init__()
        self.names, self.dense = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        self.dense.append([a.is_contiguous() for a in args if isinstance(a, torch.Tensor)])
        return func(*args, **(kwargs or {}))

    def copies(self):
        return [n for n in self.names if n.startswith(self.COPIES)]

    def contiguous_inputs(self, op, skip=0):
        """Every call of `op` (but the first `skip`) got a contiguous first argument (its kernel copies
        nothing)."""
        calls = [d for n, d in zip(self.names, self.dense) if n.startswith(f"aten.{op}")][skip:]
        return bool(calls) and all(d[0] for d in calls)
