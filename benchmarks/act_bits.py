"""int8 with 8-bit against 7-bit activations: test accuracy after QAT and after PTQ, deployed, and deploy latency.

    python benchmarks/act_bits.py --epochs 12,40
    python benchmarks/act_bits.py --epochs 12 --no-vnni    # as on a CPU whose int8 kernels saturate

The MNIST-1D CNN (searchspaces/models/mnist1d_cnn.arch) trains in fp32 and with int8 QAT at 8-bit and at 7-bit
activations (`accuracy(act_bits = 7)`, `archdsl.compile(..., act_bits=7)`), seed 0; the fp32 weights are also
quantized after training (PTQ: 10 calibration batches of 64) at both widths. Every int8 model is deployed
(PyTorch's quantized kernels) and scored on the test split. Latency: the deploy modules at batch 1 and 8, one
thread, timed interleaved round by round in one process (median), ratios against fp32 in the same run.
`--no-vnni` marks 8-bit kernels inexact, as archdsl's probe finds them on AVX2 fbgemm, so 8-bit int8 takes its
float32 fallback while 7-bit runs the int8 kernels; the timings are then this CPU's kernels, not an AVX2 CPU's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from deploy import machine, measure

import archdsl
from archdsl.ops.quantized import _QuantizedOp
from archdsl.ptq import calibrate, load_state
from archdsl.search.data import load
from archdsl.search.train import evaluate, train

CNN = (Path(__file__).resolve().parents[1] / "searchspaces/models/mnist1d_cnn.arch").read_text()
INT8 = CNN.replace("model mnist1d_cnn", "@precision(int8)\nmodel mnist1d_cnn")


def _trained(src, data, epochs, bits=8):
    torch.manual_seed(0)
    m = archdsl.compile(archdsl.parse(src), act_bits=bits)
    train(m, data, epochs=epochs, seed=0)
    return m


def _ptq(fp32, data, bits):
    m = archdsl.compile(archdsl.parse(INT8), act_bits=bits)
    load_state(m, fp32.state_dict())
    calibrate(m, [data.x_train[i:i + 64] for i in range(0, 640, 64)])
    return m.deploy(log=lambda msg: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", default="12", help="comma-separated training lengths")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-vnni", action="store_true", help="treat 8-bit int8 kernels as inexact (AVX2 fbgemm)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.no_vnni:
        _QuantizedOp._exact[(torch.backends.quantized.engine, 255)] = False
    data = load("mnist1d")
    print(machine())
    print(f"quantized engine {torch.backends.quantized.engine}; "
          f"8-bit kernels exact: {_QuantizedOp.kernels_exact(255)}, "
          f"7-bit: {_QuantizedOp.kernels_exact(127)}")
    print("| epochs | fp32 | QAT 8-bit, deployed | QAT 7-bit, deployed | PTQ 8-bit, deployed | PTQ 7-bit, deployed |")
    print("|---:|---:|---:|---:|---:|---:|")
    deployed = {}
    for epochs in (int(e) for e in args.epochs.split(",")):
        fp32 = _trained(CNN, data, epochs)
        row = [evaluate(fp32, data.x_test, data.y_test)]
        for bits in (8, 7):
            qat = _trained(INT8, data, epochs, bits).deploy(log=lambda msg: None)
            row.append(evaluate(qat, data.x_test, data.y_test))
            deployed[f"int8, {bits}-bit"] = qat
        for bits in (8, 7):
            row.append(evaluate(_ptq(fp32, data, bits), data.x_test, data.y_test))
        deployed["fp32"] = fp32.eval()
        print(f"| {epochs} | " + " | ".join(f"{a:.3f}" for a in row) + " |")
    print("\n| batch | fp32 ms | int8 8-bit ms | int8 7-bit ms | 8-bit x fp32 speed | 7-bit x fp32 speed |")
    print("|---:|---:|---:|---:|---:|---:|")
    order = {k: deployed[k] for k in ("fp32", "int8, 8-bit", "int8, 7-bit")}
    for batch in (1, 8):
        ms = {k: v * 1e3 for k, v in measure(order, data.x_test[:batch], 10, args.runs).items()}
        f = ms["fp32"]
        print(f"| {batch} | {f:.3f} | {ms['int8, 8-bit']:.3f} | {ms['int8, 7-bit']:.3f} | "
              f"{f / ms['int8, 8-bit']:.2f} | {f / ms['int8, 7-bit']:.2f} |")


if __name__ == "__main__":
    main()
