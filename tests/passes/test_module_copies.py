"""A compiled module survives copy.deepcopy (EMA copies) and pickling (torch.save(model)) as what it was: the
same class with its IR, the same outputs, parameters still shared where the .arch shares them, and deploy()
still converting its weights."""
from __future__ import annotations

import copy
import io

import torch
from deploy_testing import compile_text, example_input, randomize, train_steps

from archdsl.ir.printer import dump
from codegen.compiled import ArchGraphModule

SRC = """model m() {
  input x[4, 9, 9]
  conv(8, k = 3) >> bn >> relu
  s: for i in 0..2 { dcls(5, 3, share = "pos") }
  residual { dwconv(3) >> bn }
  gap >> linear(3)
}"""


def _trained():
    return randomize(train_steps(compile_text(SRC)))


def _pickled(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _same_module(copied, original):
    assert isinstance(copied, ArchGraphModule) and copied is not original
    assert copied.archdsl_ir is not original.archdsl_ir and dump(copied.archdsl_ir) == dump(original.archdsl_ir)
    assert copied.training == original.training
    assert copied.s0.dcls.P is copied.s1.dcls.P  # `share = "pos"`: one tensor, as in the original
    want = {k: v for k, v in original.state_dict().items()}
    got = copied.state_dict()
    assert got.keys() == want.keys()
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)


def _deploys_like(copied, original):
    original.eval()
    x = example_input(original)
    with torch.no_grad():
        want = original(x)
        assert torch.equal(copied.eval()(x), want)
        got = copied.deploy()(x)
    assert got.dtype == want.dtype and torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_deepcopy_keeps_the_ir_and_deploys():
    m = _trained()
    c = copy.deepcopy(m)
    _same_module(c, m)
    _deploys_like(c, m)
    with torch.no_grad():  # a copy, not a view: training the original leaves it alone
        m.conv.weight.add_(1.0)
    assert not torch.equal(c.conv.weight, m.conv.weight)


def test_pickle_round_trip_keeps_the_ir_dtype_and_deploys():
    m = _trained().train()
    p = _pickled(m)
    _same_module(p, m)
    _deploys_like(p, m)


def test_deploy_module_pickles_and_deploys_again():
    d = _trained().eval().deploy()
    p = _pickled(d)
    x = example_input(d)
    with torch.no_grad():
        assert torch.equal(p.eval()(x), d(x))
    assert dump(p.archdsl_ir) == dump(d.archdsl_ir)
    assert dump(p.deploy().archdsl_ir) == dump(d.archdsl_ir)  # nothing left to rewrite


def test_an_int8_model_keeps_its_observed_ranges_through_a_pickle():
    # the int8 observers' ranges are buffers of the Precision wrappers: deploy reads them for the int8 kernels
    src = "@precision(int8)\nmodel q() { input x[1, 20]\n conv(4, k = 3, stride = 2) >> relu >> flatten >> linear(3) }"
    m = compile_text(src, dtype=torch.float32)
    x = example_input(m)
    m.train()(x)
    p = _pickled(m.eval())
    with torch.no_grad():
        assert torch.equal(p(x), m(x))
        d = p.deploy(log=lambda msg: None)
        assert torch.equal(d(x), m.deploy(log=lambda msg: None)(x))
    ops = {d.archdsl_ir.nodes[n]["op"] for n in d.archdsl_ir}
    assert {"qconv", "qlinear"} <= ops, ops  # PyTorch's quantized kernels: the observed ranges came through
