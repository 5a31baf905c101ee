"""Numeric precision in train mode: fake quantization for int8, rounding for fp8, autocast for bf16/fp16.

Following the quantization whitepaper (Krishnamoorthi 2018) for quantization-aware training:
- weights: per-output-channel symmetric int8, scale = max|w| / 127, integers in [-127, 127];
- activations: per-tensor affine uint8 with a moving-average min/max observer (averaging constant 0.01, as
  torch's MovingAverageMinMaxObserver), scale = (max - min) / 255, zero point = round(-min / scale); or 7-bit
  levels 0..127 (`set_activation_bits(module, 7)`, torch.ao's `reduce_range`): what lets fbgemm's int8 kernels
  run exactly on CPUs without AVX-512 VNNI (archdsl/ops/quantized.py);
- gradients: straight-through inside the clipping range (torch's fake_quantize ops implement exactly this).
fp8 (e4m3 / e5m2, Micikevicius et al. 2022) is simulated by saturating to the format's largest finite value
and rounding to it, with a straight-through gradient. bf16 / fp16 regions run under autocast with fp32
master weights and return fp32, so the cast happens at the region's boundary.

Every class here is self-contained (math, torch, nn, F only): `archdsl compile -o` copies their source.
"""
from __future__ import annotations

import torch
from torch import nn

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
# The dtype a deployed region of each float precision runs in (IR ``dtype`` names are torch's attribute names);
# int8 and fp8 regions run fp32 tensors (integer kernels, quantize nodes).
DEPLOY_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}
LOW_FLOAT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightFakeQuant(nn.Module):
    """Per-channel (dim 0) symmetric int8 fake quantization of a weight tensor."""

    @staticmethod
    def scales(w):
        """One scale per output channel: max |w| / 127 (deploy's int8 kernels store the same)."""
        dims = tuple(range(1, w.dim()))
        amax = w.detach().abs().amax(dim=dims) if dims else w.detach().abs()
        return (amax / 127.0).clamp_min(1e-12).float()

    def forward(self, w):
        scale = self.scales(w)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class ActFakeQuant(nn.Module):
    """Per-tensor affine uint8 fake quantization of activations with a moving-average min/max observer, on
    `levels` + 1 levels (255: 8 bits; 127: 7 bits)."""

    def __init__(self, averaging=0.01, levels=255):
        super().__init__()
        self.averaging = averaging
        self.levels = levels
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(0, dtype=torch.long))

    def qparams(self):
        lo = torch.clamp(self.lo, max=0.0)  # the range always holds 0, so zero padding stays exact
        hi = torch.clamp(self.hi, min=0.0)
        scale = ((hi - lo) / float(self.levels)).clamp_min(1e-8)
        zero = torch.clamp(torch.round(-lo / scale), 0, self.levels).to(torch.int32)
        return scale.float(), zero

    def forward(self, *xs):
        """Quantize the argument(s); in training, first record their range. Several arguments (an add's) share
        one grid: one update with the range of them all, so the grid holds every one of them."""
        if self.training:
            with torch.no_grad():
                lo = torch.stack([x.detach().min() for x in xs]).min().float()
                hi = torch.stack([x.detach().max() for x in xs]).max().float()
                if int(self.seen) == 0:
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                else:
                    self.lo.add_(self.averaging * (lo - self.lo))
                    self.hi.add_(self.averaging * (hi - self.hi))
                self.seen.add_(1)
        if int(self.seen) == 0:
            return xs[0] if len(xs) == 1 else xs  # never observed: nothing to quantize against yet
        scale, zero = self.qparams()
        out = tuple(torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, self.levels) for x in xs)
        return out[0] if len(out) == 1 else out


ACTIVATION_BITS = {8: 255, 7: 127}  # bits -> the top uint8 level


def set_activation_bits(module: nn.Module, bits: int) -> int:
    """Give every int8 activation observer in `module` 2**bits levels (before QAT or calibration: the observed
    range is then cut into that many steps); returns how many observers there are. A compiled module's IR
    (a copy: the caller's graph stays as it was) records it as ``act_levels``, so its emitted source keeps it."""
    levels = ACTIVATION_BITS[bits]
    found = [m for m in module.modules() if isinstance(m, ActFakeQuant)]
    for m in found:
        m.levels = levels
    ir = getattr(module, "archdsl_ir", None)
    if ir is not None:
        ir = ir.copy()
        ir.graph["act_levels"] = levels
        module.archdsl_ir = ir
    return len(found)


class Fp8Round(nn.Module):
    """Round to an fp8 format (saturating), straight-through gradient."""

    def __init__(self, fmt="e4m3"):
        super().__init__()
        self.fmt = fmt

    def forward(self, x):
        dtype = torch.float8_e4m3fn if self.fmt == "e4m3" else torch.float8_e5m2
        top = torch.finfo(dtype).max
        q = x.detach().clamp(-top, top).to(dtype).to(x.dtype)
        return x + (q - x.detach())


class Precision(nn.Module):
    """Runs `op` at a precision: int8 QAT, fp8 rounding, or a bf16/fp16 autocast region returning fp32.

    Weights are quantized on the fly from fp32 master copies, so the optimizer always updates fp32."""

    _emit_deps = (WeightFakeQuant, ActFakeQuant, Fp8Round)

    def __init__(self, op, precision="fp32", levels=255):
        super().__init__()
        self.op = op
        self.precision = precision
        if precision == "int8":
            self.act = ActFakeQuant(levels=levels)
            self.wq = WeightFakeQuant()
        elif precision.startswith("fp8"):
            fmt = "e5m2" if precision.endswith("e5m2") else "e4m3"
            self.act = Fp8Round(fmt)
            self.wq = Fp8Round(fmt)

    def _weights(self):
        out = {}
        for name, p in self.op.named_parameters(recurse=True):
            # only matrices and kernels are quantized; biases and norm scales stay fp32 (whitepaper)
            out[name] = self.wq(p) if p.dim() > 1 else p
        return out

    def forward(self, *xs):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            device = xs[0].device.type
            with torch.autocast(device, dtype=dtype):
                y = self.op(*xs)
            return y.float()
        if self.precision == "fp32":
            return self.op(*xs)
        if isinstance(self.act, ActFakeQuant) and len(xs) > 1:
            xs = self.act(*xs)  # an add's arguments on one grid
        else:
            xs = tuple(self.act(x) for x in xs)
        return torch.func.functional_call(self.op, self._weights(), xs)
