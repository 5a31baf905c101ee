"""Post-training quantization: `archdsl compile --mode deploy --load W --calibrate DATA` and archdsl.ptq."""
import numpy as np
import pytest
import torch

import archdsl
from archdsl import cli
from archdsl.ops.quantized import QConv
from archdsl.ptq import calibrate, parse_data
from archdsl.quant import ActFakeQuant

SRC = """
@precision(int8)
model m() {
  input x[1, 40]
  conv(6, k = 5, stride = 2, padding = 2) >> relu >> conv(6, k = 3, padding = 1) >> relu
  flatten >> linear(3)
}
"""


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.arch").write_text(SRC)
    torch.manual_seed(0)
    fp32 = archdsl.compile(archdsl.parse(SRC.replace("@precision(int8)", "")))
    torch.save(fp32.state_dict(), tmp_path / "fp32.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(2.0, 3.0, (200, 40)).astype(np.float32), y=rng.integers(0, 3, 200))
    return tmp_path


def test_calibrate_from_an_npz_then_the_emitted_module_runs_quantized_kernels(capsys, files):
    rc, out, err = run(capsys, "compile", str(files / "m.arch"), "--mode", "deploy", "--load",
                       str(files / "fp32.pt"), "--calibrate", str(files / "d.npz"), "--calibrate-batches", "2",
                       "-o", str(files / "m.py"), "--weights", str(files / "w.pt"))
    assert rc == 0, err
    assert "calibrated 6 int8 observer(s) on 128 samples" in err  # 2 batches of 64; conv, relu x2, flatten, linear
    state = torch.load(files / "w.pt")
    # the first conv quantizes the model input on the range of the calibration data: the first 128 rows of
    # the data set's training split (N(2, 3)), the mean of the two batches' minima and maxima
    from archdsl.search.data import load

    x = load("npz", (str(files / "d.npz"),)).x_train[:128]
    lo, hi = min(float(x[:64].min() + x[64:].min()) / 2, 0.0), max(float(x[:64].max() + x[64:].max()) / 2, 0.0)
    assert float(state["conv.x_scale"]) == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert float(state["conv.x_zero"]) == round(-lo / ((hi - lo) / 255))
    assert state["conv.qweight"].dtype == torch.int8


@pytest.mark.parametrize("data,message", [
    ("mnist2d", "unknown data set 'mnist2d'"),
    ("digits", "its samples have shape (1, 8, 8), the model's input is [1, 40]"),
    ('npz("missing.npz")', "cannot read data set missing.npz"),
    ("1x", "cannot read data set '1x'"),
])
def test_bad_calibration_data_is_a_clear_error(capsys, files, data, message):
    rc, _, err = run(capsys, "compile", str(files / "m.arch"), "--mode", "deploy", "--calibrate", data,
                     "-o", str(files / "m.py"), "--weights", str(files / "w.pt"))
    assert rc == 2 and message in err and "Traceback" not in err


def test_calibrate_needs_weights_out_and_deploy_mode(capsys, files):
    rc, _, err = run(capsys, "compile", str(files / "m.arch"), "--mode", "deploy", "--calibrate", "mnist1d",
                     "-o", str(files / "m.py"))
    assert rc == 2 and "--weights" in err
    rc, _, err = run(capsys, "compile", str(files / "m.arch"), "--calibrate", "mnist1d", "-o", str(files / "m.py"),
                     "--weights", str(files / "w.pt"))
    assert rc == 2 and "--mode deploy" in err


def test_calibrating_a_model_without_int8_regions_is_a_clear_error(capsys, files):
    (files / "f.arch").write_text(SRC.replace("@precision(int8)", ""))
    rc, _, err = run(capsys, "compile", str(files / "f.arch"), "--mode", "deploy", "--calibrate", "mnist1d",
                     "-o", str(files / "m.py"), "--weights", str(files / "w.pt"))
    assert rc == 2 and "no int8 region" in err and "@precision(int8)" in err


def test_weights_of_another_model_are_a_clear_error(capsys, files):
    torch.save({"nope.weight": torch.zeros(3)}, files / "other.pt")
    rc, _, err = run(capsys, "compile", str(files / "m.arch"), "--mode", "deploy", "--load", str(files / "other.pt"),
                     "-o", str(files / "m.py"), "--weights", str(files / "w.pt"))
    assert rc == 2 and "does not fit this model" in err


def test_calibration_is_the_mean_of_batch_ranges_in_eval_mode():
    torch.manual_seed(0)
    m = archdsl.compile(archdsl.parse(SRC.replace("conv(6, k = 3, padding = 1)", "conv(6, k = 3, padding = 1) >> bn")))
    bn = m.get_submodule("bn").op
    stats = bn.running_mean.clone()
    batches = [torch.randn(16, 1, 40) * s for s in (1.0, 2.0, 4.0)]
    assert calibrate(m, batches) == 7
    first = m.get_submodule("conv").act
    assert float(first.lo) == pytest.approx(np.mean([float(b.min()) for b in batches]), rel=1e-5)
    assert float(first.hi) == pytest.approx(np.mean([float(b.max()) for b in batches]), rel=1e-5)
    assert torch.equal(bn.running_mean, stats) and not m.training  # BatchNorm as at inference
    assert all(not o.training for o in m.modules() if isinstance(o, ActFakeQuant))
    assert any(isinstance(k, QConv) for k in m.deploy(log=lambda msg: None).modules())


def test_data_spec_parsing():
    assert parse_data("mnist1d") == ("mnist1d", ())
    assert parse_data('npz("a/b.npz")') == ("npz", ("a/b.npz",))
    assert parse_data("a/b.npz") == ("npz", ("a/b.npz",))
    assert parse_data('images("pics", 32)') == ("images", ("pics", 32))


def test_seven_bit_calibration_cuts_the_range_into_127_steps_and_the_emitted_module_keeps_them(capsys, files):
    rc, out, err = run(capsys, "compile", str(files / "m.arch"), "--mode", "deploy", "--load",
                       str(files / "fp32.pt"), "--calibrate", str(files / "d.npz"), "--calibrate-batches", "2",
                       "--act-bits", "7", "-o", str(files / "m7.py"), "--weights", str(files / "w7.pt"))
    assert rc == 0, err
    state = torch.load(files / "w7.pt")
    from archdsl.search.data import load

    x = load("npz", (str(files / "d.npz"),)).x_train[:128]
    lo, hi = min(float(x[:64].min() + x[64:].min()) / 2, 0.0), max(float(x[:64].max() + x[64:].max()) / 2, 0.0)
    assert float(state["conv.x_scale"]) == pytest.approx((hi - lo) / 127, rel=1e-5)
    assert float(state["conv.x_zero"]) == round(-lo / ((hi - lo) / 127))
    assert "levels=127" in (files / "m7.py").read_text()
    # the emitted module clips its input at level 127 of the first conv's grid, as calibration assumed
    import importlib.util

    spec = importlib.util.spec_from_file_location("m7", files / "m7.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Model()
    net.load_state_dict(state)
    big = torch.full((1, 1, 40), 1e3)
    assert torch.isfinite(net(big)).all()


def test_act_bits_needs_weights_out(capsys, files):
    rc, _, err = run(capsys, "compile", str(files / "m.arch"), "--mode", "deploy", "--act-bits", "7",
                     "-o", str(files / "m.py"))
    assert rc != 0 and "--act-bits" in err and "--weights" in err


def test_seven_bit_train_module_emits_with_its_levels_and_the_callers_graph_is_kept():
    import archdsl.quant as q
    from codegen.python_source import emit

    G = archdsl.build(archdsl.parse(SRC))
    m = archdsl.compile(G, act_bits=7)
    assert "act_levels" not in G.graph  # the caller's graph as it was
    assert {o.levels for o in m.modules() if isinstance(o, ActFakeQuant)} == {127}
    src = emit(m.archdsl_ir)
    assert "Precision(" in src and "levels=127" in src
    ns = {}
    exec(compile(src, "emitted.py", "exec"), ns)  # the emitted file, as `import` runs it
    emitted = ns["Model"]()
    assert {o.levels for o in emitted.modules() if type(o).__name__ == "ActFakeQuant"} == {127}
    # set_activation_bits on a module compiled at 8 bits records the change in (a copy of) its IR
    m8 = archdsl.compile(G)
    q.set_activation_bits(m8, 7)
    assert m8.archdsl_ir is not G and m8.archdsl_ir.graph["act_levels"] == 127 and "levels=127" in emit(m8.archdsl_ir)


def test_act_bits_on_a_train_mode_compile_keeps_them_in_the_emitted_file(capsys, files):
    rc, _, err = run(capsys, "compile", str(files / "m.arch"), "--act-bits", "7", "-o", str(files / "t7.py"),
                     "--weights", str(files / "t7.pt"))
    assert rc == 0, err
    assert "levels=127" in (files / "t7.py").read_text()
