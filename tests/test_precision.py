"""Precision as a model property: annotations reach the compiled module, int8 QAT trains, emission keeps it."""
import subprocess
import sys

import pytest
import torch

import archdsl
from archdsl.ops.lowp import Int8Linear
from archdsl.search.data import load
from archdsl.search.train import evaluate, train
from codegen.python_source import emit

SPACE = """
model m(p = choice(fp32, int8, bf16, fp16, fp8_e4m3, fp8_e5m2)) {
  input x[3, 12, 12]
  @precision(p) { conv(8, k = 3) >> bn >> relu >> conv(8, k = 3) }
  gap >> linear(10)
}
"""


@pytest.mark.parametrize("p", ["int8", "bf16", "fp8_e4m3"])
def test_lowered_regions_train_and_emit(p, tmp_path):
    G = archdsl.build(archdsl.parse(SPACE), p=p)
    assert {G.nodes[n]["precision"] for n in ("conv", "bn", "relu", "conv_1")} == {p}
    assert G.nodes["linear"]["precision"] == "fp32"
    torch.manual_seed(0)
    m = archdsl.compile(G).train()
    x = torch.randn(4, 3, 12, 12)
    m(x).square().sum().backward()
    assert m.conv.op.weight.grad.abs().sum() > 0  # fp32 master weights learn through the simulation
    m.eval()
    y = m(x)
    fp32 = archdsl.compile(archdsl.build(archdsl.parse(SPACE), p="fp32"))
    fp32.load_state_dict({k.replace(".op.", "."): v for k, v in m.state_dict().items() if ".act." not in k})
    assert not torch.equal(y, fp32.eval()(x))  # the precision changes the numbers...
    assert (y - fp32(x)).abs().max() < 0.1 * fp32(x).abs().max()  # ...but not the function
    (tmp_path / "m.py").write_text(emit(G))
    torch.save(m.state_dict(), tmp_path / "w.pt")
    torch.save((x, y), tmp_path / "xy.pt")
    code = ("import torch, importlib.util as u\n"
            "s = u.spec_from_file_location('m', 'm.py'); mod = u.module_from_spec(s); s.loader.exec_module(mod)\n"
            "M = mod.Model(); M.load_state_dict(torch.load('w.pt')); M.eval(); x, y = torch.load('xy.pt')\n"
            "assert torch.allclose(M(x), y, atol=1e-6)\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


@pytest.mark.parametrize("p", ["int8", "bf16", "fp16", "fp8_e5m2"])
def test_every_precision_deploys(p):
    # the per-precision checks are in tests/passes/test_lower_precision.py; here: each deploys and runs
    torch.manual_seed(0)
    m = archdsl.compile(archdsl.build(archdsl.parse(SPACE), p=p))
    x = torch.randn(4, 3, 12, 12)
    m.train()(x)
    m.eval()
    with torch.no_grad():
        y, yd = m(x), m.deploy(log=lambda msg: None)(x)
    assert yd.dtype == torch.float32 and (yd - y).abs().max() < 0.05 * y.abs().max()


def test_size_bytes_follows_precision():
    fp32 = archdsl.build(archdsl.parse(SPACE), p="fp32")
    int8 = archdsl.build(archdsl.parse(SPACE), p="int8")
    from archdsl.ir.cost import size_bytes

    lowered = sum(int8.nodes[n]["params"] for n in ("conv", "bn", "conv_1"))
    assert size_bytes(fp32) - size_bytes(int8) == 3 * lowered


CNN = open("searchspaces/models/mnist1d_cnn.arch").read()


def test_int8_qat_of_the_mnist1d_cnn_is_within_one_point_of_fp32():
    data = load("mnist1d")
    accs = {}
    for name, src in (("fp32", CNN), ("int8", CNN.replace("model mnist1d_cnn", "@precision(int8)\nmodel mnist1d_cnn"))):
        torch.manual_seed(0)
        m = archdsl.compile(archdsl.parse(src))
        train(m, data, epochs=12, seed=0)
        accs[name] = evaluate(m, data.x_test, data.y_test)
        if name == "int8":  # and deployed with integer kernels, it predicts what QAT predicted
            d = m.deploy(log=lambda msg: None)
            assert sum(isinstance(k, Int8Linear) for k in d.modules()) == 4  # three convs and the classifier
            accs["int8 deploy"] = evaluate(d, data.x_test, data.y_test)
    assert accs["fp32"] > 0.75  # it learned
    assert abs(accs["int8"] - accs["fp32"]) <= 0.01, accs
    assert abs(accs["int8 deploy"] - accs["int8"]) <= 0.002, accs


def test_shared_parameters_stay_tied_inside_precision_regions(tmp_path):
    # DCLS positions shared by two blocks: tied in memory and in the emitted file, also when wrapped at bf16
    src = "model m() { input x[4, 9, 9]\n @precision(bf16) { dcls(5, count = 3, share = \"s\") >> dcls(5, count = 3, share = \"s\") } }"
    G = archdsl.build(src)
    m = archdsl.compile(G)
    assert m.dcls_1.op.P is m.dcls.op.P
    assert sum(p.numel() for p in m.parameters()) == archdsl.ir.graph.totals(G)["params"]
    (tmp_path / "m.py").write_text(emit(G))
    code = ("import importlib.util as u\n"
            "s = u.spec_from_file_location('m', 'm.py'); mod = u.module_from_spec(s); s.loader.exec_module(mod)\n"
            "M = mod.Model(); assert M.dcls_1.op.P is M.dcls.op.P\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
