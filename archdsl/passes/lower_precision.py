"""lower_precision: each region runs at its precision for real, with explicit casts and quantization points.

Train mode simulates precision (archdsl/quant.py): bf16 / fp16 under autocast, int8 as fake quantization of
inputs and weights, fp8 as rounding. Deploy makes that explicit in the IR, node by node:

    bf16 / fp16   the node's weights become bf16 / fp16 and it runs in that dtype; `cast` nodes convert at
                  region boundaries (one per tensor and dtype), the graph output is fp32 again; a conv / linear
                  too small for the bf16 kernel to pay (LOW_FLOAT_PAYS_MACS), or any on a CPU without native
                  bf16 (NATIVE_LOW_FLOAT), runs the fp32 kernel on its bf16-rounded weights
    int8          conv / linear / add -> PyTorch's quantized kernels (qconv / qlinear / qadd, ReLU fused), quint8
                  tensors between them (archdsl/passes/int8_regions.py); a conv / linear no observed int8 node
                  reads (a classifier) -> int8_conv / int8_linear (torch._int_mm, float result); any other int8
                  node is simulated: its weights are stored already quantized and a `quantize` node (the
                  observer's scale and zero point) rounds its input
    fp8           simulated (no CPU fp8 kernels): weights stored rounded, a `quantize` node rounds the input

A node's input is quantized only where training quantized it (its observer saw data); parameter-free merges
(add, mul, concat) never had an observer. No conversion is redundant: a tensor is cast or quantized once per
target however many nodes read it, and fp32 ops exact in any dtype (maxpool, flatten, relu...) between bf16
nodes run in bf16 rather than cast out and back.
Simulated nodes are listed in `declined` with the reason, so `archdsl compile --mode deploy` shows them.
"""
from __future__ import annotations

import networkx as nx
import torch

from archdsl.ir.graph import add_op, inputs, order
from archdsl.ops.registry import get_op
from archdsl.ir.modules import conv_geometry, meta_module, spec_of, weight_keys
from archdsl.passes.int8_regions import QUINT8, UNKNOWN, levels, lower_int8
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import redirect, set_op
from archdsl.quant import DEPLOY_DTYPE, LOW_FLOAT_DTYPES

# Below this many multiply-accumulates per sample a conv / linear runs faster on the fp32 kernel than on the
# bf16 one on CPU (oneDNN; casts included): measured at batch 1 on 1-D / 2-D convs, bf16 at 0.3-0.6x of fp32
# from 0.04M to 0.8M MACs, 0.99x at 6.3M, 1.04-1.3x from 9.4M up (BENCHMARKS.md section 5). Such a node keeps
# its bf16-rounded weights and runs the fp32 kernel, so a bf16 region is never slower than fp32.
LOW_FLOAT_PAYS_MACS = 8_000_000


def _native_low_float() -> dict:
    """Which low-float precisions this CPU runs natively. Without AVX512-BF16 / AMX (AVX512-FP16 / AMX-FP16),
    oneDNN emulates bf16 (fp16) convolutions through fp32 conversions: measured 20x slower than fp32 on an
    AVX2 CPU (BENCHMARKS.md section 5), at every size. Such nodes run the fp32 kernel on rounded weights."""
    cpu = torch.cpu

    def has(name: str) -> bool:
        check = getattr(cpu, name, None)
        return bool(check()) if check is not None else False
    amx = has("_is_amx_tile_supported")
    return {"bf16": amx or has("_is_avx512_bf16_supported"), "fp16": has("_is_amx_fp16_supported")}


NATIVE_LOW_FLOAT = _native_low_float()


def _scheme(precision: str) -> str:
    return "int8" if precision == "int8" else "fp8_e5m2" if precision.endswith("e5m2") else "fp8_e4m3"


def _qparams(G, node, weights):
    """The input's (scale, zero point) from training; None where its observer saw no data (then training did
    not quantize the input); UNKNOWN without weights (structure only: assume it did)."""
    return G.nodes[node].get("act_qparams") if weights is not None else UNKNOWN


def _quantizes_input(G, node, weights) -> bool:
    d = G.nodes[node]
    if get_op(d["op"]).function is not None:  # mul / concat: no module, no observer in train mode; int8 add: one
        return d["op"] == "add" and d["precision"] == "int8" and _qparams(G, node, weights) is not None
    return d["precision"] != "int8" or _qparams(G, node, weights) is not None


def _fake_weights(G, node, state: dict) -> dict:
    """The node's tensors as train mode used them: parameter matrices and kernels quantized (archdsl.quant.
    Precision), biases, norm scales and buffers as they are."""
    from archdsl.quant import Fp8Round, WeightFakeQuant

    precision = G.nodes[node]["precision"]
    q = WeightFakeQuant() if precision == "int8" else Fp8Round(_scheme(precision)[4:])
    params = {k for k, _ in meta_module(G, node).named_parameters()}
    with torch.no_grad():
        return {k: q(v) if k in params and v.dim() > 1 else v for k, v in state.items()}


# ---- int8 kernels ---------------------------------------------------------------------------------------

def _int8_kernel(G, node) -> tuple[str, dict] | None:
    """(op, attrs) of the int8 kernel for a conv / pwconv / linear node, or None when there is none."""
    d = G.nodes[node]
    if d["op"] == "linear":
        return "int8_linear", dict(out=d["attrs"].out, bias=d["attrs"].bias)
    if d["op"] not in ("conv", "pwconv"):
        return None
    g = conv_geometry(G, node)
    if g.groups != 1 or len(g.k) not in (1, 2):
        return None
    bias = bool(d["attrs"].get("bias", True))
    if all(k == 1 for k in g.k) and g.padding_free and all(s == 1 for s in g.stride):
        return "int8_linear", dict(out=g.out, bias=bias)
    return "int8_conv", dict(out=g.out, k=g.k, stride=g.stride, dilation=g.dilation,
                             pad_lo=tuple(lo for lo, _ in g.pads), pad_hi=tuple(hi for _, hi in g.pads), bias=bias)


def _int8_state(G, node, state, qparams) -> dict:
    """qweight / wscale / bias / x_scale / x_zero from the fp32 weights, quantized exactly as in training."""
    from archdsl.quant import WeightFakeQuant

    wkey, bkey = weight_keys(G, node)
    w = state[wkey].detach()
    w2 = w.reshape(w.shape[0], -1)
    with torch.no_grad():
        deq, scale = WeightFakeQuant()(w2), WeightFakeQuant.scales(w2)
    qweight = torch.round(deq / scale[:, None]).clamp(-127, 127).to(torch.int8)
    out = {"qweight": qweight, "wscale": scale.to(w.dtype), "x_scale": torch.tensor(qparams[0], dtype=w.dtype),
           "x_zero": torch.tensor(float(qparams[1]), dtype=w.dtype)}
    if bkey:
        out["bias"] = state[bkey].detach()
    return out


# ---- inserted nodes -------------------------------------------------------------------------------------

def _fresh(G, base: str) -> str:
    name, i = base, 1
    while name in G:
        name, i = f"{base}_{i}", i + 1
    return name


def _dtype(G, node) -> str:
    return G.nodes[node].get("dtype") or "float32"


def _add_quantize(G, weights, src, node, made) -> str:
    d = G.nodes[node]
    scheme = _scheme(d["precision"])
    qp = _qparams(G, node, weights) if scheme == "int8" else None
    key = (src, scheme, qp)
    if key not in made:
        name = _fresh(G, f"{src}_q{scheme[:4]}".replace("fp8_", "fp8"))
        attrs = {"scheme": scheme, **({"levels": levels(qp)} if scheme == "int8" else {})}
        bound = get_op("quantize").bind([], attrs, [G.nodes[src]["shape"]])
        made[key] = add_op(G, name, "quantize", [src], attrs=bound,
                           shape=G.nodes[src]["shape"], span=d.get("span"), precision=d["precision"],
                           layout=G.nodes[src]["layout"])  # quantizes in fp32, as training did
        if weights is not None:
            weights[made[key]] = ({"scale": torch.tensor(qp[0]), "zero_point": torch.tensor(float(qp[1]))}
                                  if scheme == "int8" else {})
    return made[key]


def _add_cast(G, src, dtype, span, made) -> str:
    if (src, dtype) not in made:
        shape = G.nodes[src]["shape"]
        name = _fresh(G, f"{src}_to_{dtype}")
        made[(src, dtype)] = add_op(G, name, "cast", [src], attrs=get_op("cast").bind([], {"to": dtype}, [shape]),
                                    shape=shape, span=span, layout=G.nodes[src]["layout"], dtype=dtype)
    return made[(src, dtype)]


def _follow_input_dtype(G, res) -> None:
    """An fp32 or bf16 / fp16 op that only moves or selects values (flatten, max-pool, relu, ...) gives the same
    numbers in any dtype, so it runs in its inputs' dtype: a bf16 -> maxpool -> bf16 stretch then needs no cast."""
    for node in order(G):
        d, spec = G.nodes[node], spec_of(G, node)
        if spec is None or not spec.exact_in_any_dtype or d["precision"] not in ("fp32", *DEPLOY_DTYPE):
            continue
        dtypes = {_dtype(G, src) for src in inputs(G, node)}
        if len(dtypes) == 1 and dtypes - {"float32", QUINT8}:
            d["dtype"] = dtypes.pop()
            res.changed.append(f"{node}: {d['op']} runs in {d['dtype']} like its input (exact in any dtype)")


def lower_precision(G: nx.DiGraph, weights) -> PassResult:
    """bf16 / fp16 / int8 / fp8 regions -> real dtypes and int8 kernels, casts and quantize-dequantize."""
    res = PassResult()
    if all(d["precision"] == "fp32" for _, d in G.nodes(data=True)):
        return res
    quantized: dict = {}
    on_kernels, handled = lower_int8(G, weights, res)
    for node in order(G):
        d = G.nodes[node]
        p = d["precision"]
        if d["op"] in ("input", "output") or p == "fp32" or node in handled:
            continue
        if p in DEPLOY_DTYPE and getattr(spec_of(G, node), "exact_in_any_dtype", False):
            continue  # runs in its input's dtype (_follow_input_dtype)
        native = NATIVE_LOW_FLOAT.get(p, True)
        if p in DEPLOY_DTYPE and 0 < d.get("macs", 0) and (d["macs"] < LOW_FLOAT_PAYS_MACS or not native):
            # bf16 rounding of the weights kept, the fp32 kernel run: the same function, faster here
            if weights is not None:
                dt = LOW_FLOAT_DTYPES[DEPLOY_DTYPE[p]]
                weights[node] = {k: v.to(dt).to(v.dtype) if v.is_floating_point() else v
                                 for k, v in weights.get(node, {}).items()}
            why = (f"this CPU has no native {p} kernels (emulated, ~20x slower)" if not native else
                   f"{d['macs']:,} MACs per sample, below {LOW_FLOAT_PAYS_MACS:,}: the {p} kernel is slower there")
            res.changed.append(f"{node}: {p}-rounded weights on the fp32 kernel ({why})")
            continue
        if p in DEPLOY_DTYPE:
            d["dtype"] = DEPLOY_DTYPE[p]
            if weights is not None:
                dt = LOW_FLOAT_DTYPES[d["dtype"]]
                weights[node] = {k: v.to(dt) if v.is_floating_point() else v for k, v in weights.get(node, {}).items()}
            res.changed.append(f"{node}: runs in {d['dtype']}")
            continue
        kernel = _int8_kernel(G, node) if p == "int8" else None
        qp = _qparams(G, node, weights)
        if kernel is not None and qp is not None:
            if weights is not None:
                weights[node] = _int8_state(G, node, weights[node], qp)
            was = d["op"]
            set_op(G, node, kernel[0], {**kernel[1], "levels": levels(qp)})
            res.changed.append(f"{node}: {was} -> {kernel[0]} (int8 x int8 -> int32)")
            continue
        if weights is not None and weights.get(node):
            weights[node] = _fake_weights(G, node, weights[node])
        if _quantizes_input(G, node, weights):
            # a quantized kernel's result is already on a grid (the widest its readers trained with)
            for src in dict.fromkeys(s for s in inputs(G, node) if s not in on_kernels):
                redirect(G, src, _add_quantize(G, weights, src, node, quantized), only=node)
        if p != "int8":
            why = "no fp8 kernels on this backend"
        elif kernel is not None:  # qp is None
            why = "its input range was never observed: train or calibrate the model in train mode first"
        else:
            why = "no int8 kernel for " + d["op"] + (" with groups > 1" if d["op"] in ("conv", "pwconv") else "")
        res.decline(node, f"{p} simulated in fp32 ({why}): weights stored quantized, input quantize-dequantized")
    _follow_input_dtype(G, res)
    casts: dict = {}
    for node in order(G):
        if G.nodes[node]["op"] in ("input", "cast"):
            continue
        need = _dtype(G, node)
        if need == QUINT8 or node in handled:  # a quantized kernel reads quint8, and quantizes a float argument
            continue
        for src in dict.fromkeys(inputs(G, node)):
            if _dtype(G, src) != need:
                redirect(G, src, _add_cast(G, src, need, G.nodes[node].get("span"), casts), only=node)
    for (src, dtype), cast in casts.items():
        res.changed.append(f"{cast}: cast '{src}' to {dtype}")
    G.graph["precision_lowered"] = True
    return res


def simulated_notice(results) -> str | None:
    """One line naming the nodes lower_precision had to simulate (int8 without a kernel, fp8), or None."""
    declined = next((r.declined for r in results if r.name == "lower_precision"), [])
    if not declined:
        return None
    names = ", ".join(n for n, _ in declined[:8]) + (f", ... ({len(declined)} in all)" if len(declined) > 8 else "")
    return (f"{len(declined)} low-precision node(s) have no kernel at their precision here and run simulated in "
            f"fp32 (weights stored quantized, inputs quantize-dequantized): {names}")
