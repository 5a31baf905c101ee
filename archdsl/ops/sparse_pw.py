"""Magnitude-pruned pointwise convolutions (Fast Sparse ConvNets): sparsepw, and its deploy kernel sparsepw_csr.

Elsen, Dukhan, Gale & Simonyan, "Fast Sparse ConvNets" (CVPR 2020): the 1x1 convolutions, most of a mobile
network's MACs, are pruned by weight magnitude to a target sparsity, and at inference run as a sparse matrix (CSR)
times the dense (C, H*W) activation. ``sparsepw(out, sparsity)`` trains with the mask of the largest
``keep = out*in - floor(sparsity*out*in)`` weights by magnitude, recomputed from the current weights at every
forward (one-shot magnitude pruning at the final sparsity; the paper's gradual schedule of Zhu & Gupta 2017 is not
modelled), so pruned weights can come back while training. Gradients reach the kept weights only.

MACs follow the paper's sparse convention: the kept weights times the positions (a dense matmul runs while
training; FlopCounterMode sees that, hence flop_counter_exact=False). The deploy pass ``sparse_kernels`` turns
the node into ``sparsepw_csr`` (the kept weights in CSR form, run by the C kernel of archdsl.ops.native in float32
inference on CPU, else by torch's CSR matmul) when the sparsity is at least the threshold measured by
benchmarks/sparse_pw.py, else into a plain ``pwconv`` with the pruned weights.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, Fold, op, positive
from archdsl.ops.shapes import need_spatial, numel


def kept(out_channels: int, in_channels: int, sparsity: float) -> int:
    """How many weights a (out x in) 1x1 conv keeps at this sparsity (at least one)."""
    total = out_channels * in_channels
    return max(1, total - math.floor(sparsity * total))


class MagnitudePrunedConv1x1(nn.Module):
    """A 1x1 conv over 1-3 spatial dims whose weight is masked to its `keep` largest magnitudes."""

    def __init__(self, in_channels, out_channels, keep, ndim=2, bias=True):
        super().__init__()
        self.keep, self.ndim = keep, ndim  # ndim: spatial dims, for the shape of the dense kernel it folds to
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv's init, fan_in = in_channels
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
            nn.init.uniform_(self.bias, -1 / math.sqrt(in_channels), 1 / math.sqrt(in_channels))
        else:
            self.bias = None

    def mask(self):
        flat = self.weight.detach().abs().flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, self.keep, sorted=False).indices] = 1.0
        return mask.view_as(self.weight)

    def pruned_weight(self):
        return self.weight * self.mask()

    def forward(self, x):
        y = torch.matmul(self.pruned_weight(), x.flatten(2)).view(x.shape[0], -1, *x.shape[2:])
        return y if self.bias is None else y + self.bias.reshape(-1, *([1] * (x.dim() - 2)))


def sparse_rows_kernel():
    """archdsl's C sparse kernel module when it builds here, else None. Imported at call time: emitted model
    source copies this function, and run without archdsl installed it falls back to torch's CSR product."""
    try:
        from archdsl.ops import native
    except ImportError:
        return None
    return native if native.available() else None


class CsrConv1x1(nn.Module):
    """A 1x1 conv whose weight is a CSR matrix (row pointers, column indices, values) times each sample's
    (C, positions) view: the C kernel of archdsl.ops.native for float32 inference on CPU (Fast Sparse ConvNets'
    layout: no transposes, the output written once with its bias), torch's CSR matmul otherwise (other dtypes,
    devices, autograd, or no C compiler)."""

    _emit_deps = (sparse_rows_kernel,)

    def __init__(self, in_channels, out_channels, keep, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        # A valid placeholder pattern (the first `keep` entries in row-major order); the pass loads the real one.
        # int32 indices: what the C kernel reads, and MKL's CSR product runs faster with them than with int64.
        flat = torch.arange(keep, dtype=torch.int32)
        counts = torch.bincount(flat // in_channels, minlength=out_channels)
        self.register_buffer("crow", torch.cat([torch.zeros(1, dtype=torch.int32), counts.cumsum(0).int()]))
        self.register_buffer("col", flat % in_channels)
        self.values = nn.Parameter(torch.zeros(keep))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _kernel(self, x):
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.values.dtype != torch.float32:
            return None
        if self.crow.dtype != torch.int32 or self.col.dtype != torch.int32:
            return None  # indices set by hand in int64: the C kernel reads int32
        if torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad):
            return None  # the C kernel has no backward: training-time calls take torch's product
        return sparse_rows_kernel()

    def forward(self, x):
        if x.shape[1] != self.in_channels:  # the column indices are unchecked per call: they must fit the input
            raise ValueError(f"CsrConv1x1 expects {self.in_channels} input channels, got input {tuple(x.shape)}")
        kernel = self._kernel(x)
        if kernel is None:
            return self.torch_forward(x)
        y = kernel.spmm_rows(self.crow, self.col, self.values, x.reshape(*x.shape[:2], -1), self.bias)
        return y.view(x.shape[0], self.out_channels, *x.shape[2:])

    def torch_forward(self, x):
        """torch's CSR product, whatever the input (benchmarks/sparse_pw.py times it beside the C kernel)."""
        n, c = x.shape[:2]
        cols = x.reshape(n, c, -1)
        # the pattern comes from the deploy pass, which builds it valid: skip the per-call invariant check
        w = torch.sparse_csr_tensor(self.crow, self.col, self.values, (self.out_channels, c), check_invariants=False)
        if n == 1:
            y = (w @ cols[0]).unsqueeze(0)
        else:
            y = (w @ cols.transpose(0, 1).reshape(c, -1)).reshape(self.out_channels, n, -1).transpose(0, 1)
        y = y.reshape(n, self.out_channels, *x.shape[2:])
        return y if self.bias is None else y + self.bias.reshape(-1, *([1] * (x.dim() - 2)))


def _shape(name):
    def rule(a, ins):
        need_spatial(name, ins[0])
        return (a.out, *ins[0][1:])

    return rule


def _keep(a, ins):
    return a.keep if "keep" in a else kept(a.out, ins[0][0], a.sparsity)


def _macs(a, ins, out):
    # Fast Sparse ConvNets' count: one MAC per kept weight and position.
    return _keep(a, ins) * numel(out[1:])


def prunedpw_reference(m, x):
    """The mask by sorting the magnitudes (the keep largest), then the 1x1 conv as a sum over channels."""
    w = m.weight.double()
    threshold = torch.sort(w.abs().flatten(), descending=True).values[m.keep - 1]
    y = torch.einsum("oc,nc...->no...", w * (w.abs() >= threshold), x.double())
    return y if m.bias is None else y + m.bias.double().reshape(-1, *([1] * (x.dim() - 2)))


def csr_dense(m) -> torch.Tensor:
    """The CSR weight written into a dense (out, in) matrix entry by entry."""
    w = torch.zeros(m.out_channels, m.in_channels, dtype=torch.float64)
    for row in range(m.out_channels):
        for j in range(int(m.crow[row]), int(m.crow[row + 1])):
            w[row, int(m.col[j])] += m.values[j].double()
    return w


def csr_reference(m, x):
    y = torch.einsum("oc,nc...->no...", csr_dense(m), x.double())
    return y if m.bias is None else y + m.bias.double().reshape(-1, *([1] * (x.dim() - 2)))


def _sparsity(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


op("sparsepw",
   Attr("out", "int", check=positive, doc="output channels"),
   Attr("sparsity", "float", 0.8, check=_sparsity, doc="fraction of weights pruned by magnitude"),
   Attr("bias", "bool", True),
   shape=_shape("sparsepw"),
   params=lambda a, ins: a.out * ins[0][0] + (a.out if a.bias else 0),  # the dense trainable weight + bias
   macs=_macs, flop_counter_exact=False, category="mixer",
   torch=lambda a, ins: (MagnitudePrunedConv1x1, dict(in_channels=ins[0][0], out_channels=a.out,
                                                      keep=kept(a.out, ins[0][0], a.sparsity),
                                                      ndim=len(ins[0]) - 1, bias=a.bias)),
   reference=prunedpw_reference, precisions=("fp32", "bf16", "fp16"),
   # below the measured sparsity threshold (or off fp32) sparse_kernels deploys it as this dense 1x1 conv
   fold=Fold("sparse_kernels", lambda a, ins: dict(out=a.out, k=1, padding=0, bias=a.bias),
             lambda m: (m.pruned_weight().reshape(*m.weight.shape, *([1] * m.ndim)), m.bias)),
   doc="Magnitude-pruned 1x1 conv (Fast Sparse ConvNets, Elsen et al. 2020); deploys to a CSR kernel when the "
       "sparsity makes it faster (pass sparse_kernels).",
   examples=(({"out": 5, "sparsity": 0.7}, [(6, 7, 5)]), ({"out": 4, "sparsity": 0.9, "bias": False}, [(8, 9)]),
             ({"out": 3, "sparsity": 0.5}, [(4, 3, 4, 2)])))


def _check_keep(a, ins):
    if a.keep > a.out * ins[0][0]:
        raise ArchError(f"sparsepw_csr(): keep={a.keep} exceeds the {a.out} x {ins[0][0]} weights "
                        f"(input shape {list(ins[0])})", hint="keep counts the non-zero weights")
    return _shape("sparsepw_csr")(a, ins)


op("sparsepw_csr",
   Attr("out", "int", check=positive), Attr("keep", "int", check=positive, doc="non-zero weights"),
   Attr("bias", "bool", True),
   shape=_check_keep, params=lambda a, ins: a.keep + (a.out if a.bias else 0), macs=_macs,
   flop_counter_exact=False, precisions=("fp32",), category="kernel",
   torch=lambda a, ins: (CsrConv1x1, dict(in_channels=ins[0][0], out_channels=a.out, keep=a.keep, bias=a.bias)),
   reference=csr_reference,
   doc="A 1x1 conv with a CSR weight (a C kernel in float32 CPU inference, else torch's CSR matmul): what "
       "sparse_kernels deploys sparsepw to.",
   examples=(({"out": 5, "keep": 9}, [(6, 7, 5)]), ({"out": 4, "keep": 3, "bias": False}, [(8, 9)]),
             ({"out": 2, "keep": 8}, [(4, 3, 2, 2)])))
