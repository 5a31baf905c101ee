"""The emitted Python reads like a hand-written module: one class per block, loops for repeats, labels as
attribute names; and it keeps the in-memory module's state_dict names exactly, so weights move both ways and
the outputs agree, for every reference model and example space, in train and deploy modes."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import archdsl
from codegen.python_source import emit
from test_codegen import randomize as _randomize

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p for p in (ROOT / "searchspaces" / "models").glob("*.arch") if p.stem != "metaformer")
SPACES = sorted((ROOT / "searchspaces").glob("*.arch"))
SMALL = {"size": 32, "classes": 10}  # full widths and depths; small images keep the forward cheap


def load(source: str) -> torch.nn.Module:
    ns: dict = {}
    exec(compile(source, "<emitted>", "exec"), ns)  # our own generated file, as `import m` runs it
    return ns["Model"]()


def randomize(module, seed=0, scale=0.02):  # small: layer scales of 1e-6 hide nothing, deep nets stay finite
    return _randomize(module, seed, scale)


def _graph(path: Path):
    program = archdsl.parse(path)
    params = {p.name for p in program.model().params}
    return archdsl.build(program, **{k: v for k, v in SMALL.items() if k in params and "models" in path.parts})


def _check_both_ways(ref: torch.nn.Module, source: str, x: torch.Tensor, fresh) -> None:
    emitted = load(source).eval()
    theirs, ours = ref.state_dict(), emitted.state_dict()
    assert list(ours) == list(theirs)  # the same names, in the same order
    assert all(ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype for k in ours)
    emitted.load_state_dict(theirs, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), ref(x), rtol=0, atol=0)
    # the other way: the emitted module's own (fresh) weights into a new in-memory module
    randomize(emitted, seed=1)
    back = fresh()
    back.load_state_dict(emitted.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), emitted(x), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["train", "deploy"])
@pytest.mark.parametrize("path", MODELS + SPACES, ids=lambda p: p.stem)
def test_every_model_emits_the_same_module(path, mode):
    G = _graph(path)
    gm = randomize(archdsl.compile(G)).eval()
    x = torch.randn(2, *G.nodes[G.graph["input"]]["shape"], generator=torch.Generator().manual_seed(2))
    ref = gm if mode == "train" else gm.deploy()
    source = emit(ref.archdsl_ir)
    assert "nn.Module()" not in source and "FusedGroup" not in source
    fresh = (lambda: archdsl.compile(G)) if mode == "train" else (lambda: archdsl.compile(G).deploy())
    _check_both_ways(ref, source, x, fresh)


BLOCKS = """
block mlp_block(dim, ratio = 4) {
  residual { ln >> linear(ratio * dim) >> gelu >> linear(dim) }
}
block maybe_down(dim, down) {
  if down { ln >> conv(dim, k = 2, stride = 2, padding = 0) }
  conv(dim, k = 3)
}
model net(dims = [8, 16, 24], depths = [2, 3, 1]) {
  input image[3, 16, 16]
  stem: conv(dims[0], k = 2, stride = 2, padding = 0)
  stage: for i in 0..3 {
    entry: maybe_down(dims[i], i > 0)
    block: repeat depths[i] { mlp_block(dims[i]) }
  }
  head: gap >> linear(5)
}
"""


def _classes(source: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}


def _init_args(cls: ast.ClassDef) -> list[str]:
    init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    return [a.arg for a in init.args.args[1:]]


def test_one_class_per_block_with_its_parameters_and_source_line():
    source = emit(archdsl.build(BLOCKS))
    classes = _classes(source)
    assert _init_args(classes["MlpBlock"]) == ["dim"]  # one class for blocks of three widths
    assert "self.linear = Linear(dim, 4 * dim)" in source  # `ratio * dim`, with ratio the same everywhere
    assert "# block mlp_block, <text> line 2" in source
    # `down` changes the structure: one specialization with the downsampling and one without
    assert {"MaybeDown", "MaybeDownB"} <= set(classes)
    assert "return x + y" in ast.unparse(classes["MlpBlock"])  # residual { ... }
    assert "self.stem = " in source and "self.head = " in source  # labels are attribute names
    assert "nn.Module()" not in source


def test_repeats_and_loops_become_loops():
    source = emit(archdsl.build(BLOCKS))
    assert re.search(r'for i in range\(n_block\):\n\s+self\.add_module\(f"block\{i\}"', source)  # repeat depths[i]
    assert re.search(r'for i in range\(3\):\n\s+x = getattr\(self, f"stage\{i\}"\)\(x\)', source)  # for i in 0..3
    G = archdsl.build(BLOCKS)
    gm = randomize(archdsl.compile(G), scale=0.3).eval()
    _check_both_ways(gm, source, torch.randn(2, 3, 16, 16), lambda: archdsl.compile(G))


def test_convnext_t_reads_like_a_hand_written_file():
    source = emit(archdsl.build(archdsl.parse(ROOT / "searchspaces/models/convnext_t.arch")))
    assert len(source.splitlines()) <= 150 and "nn.Module()" not in source
    classes = _classes(source)
    assert _init_args(classes["ConvnextBlock"]) == ["dim"]
    assert source.count("ConvnextBlock(") == 3  # its class, and two loops (stage 0 and stages 1-3)


REFS = """
block pair(self, torch) {
  a: conv(self, k = 3)
  b: relu >> conv(torch, k = 1)
  c: conv(torch, k = 1) >> concat($a)
}
model refs() {
  input x[3, 9, 7]
  p: pair(4, 6)
  q: pair(5, 2)
  gap
}
"""


def test_scopes_with_two_inputs_and_unsafe_parameter_names():
    # `c` reads `b` and `$a`: it cannot be called as one step, so its parent calls into it
    G = archdsl.build(REFS)
    source = emit(G)
    assert "def __init__(self, self" not in source and "torch_" in source  # block parameters made safe
    assert "self.c.conv(" in source
    gm = randomize(archdsl.compile(G), scale=0.3).eval()
    _check_both_ways(gm, source, torch.randn(2, 3, 9, 7), lambda: archdsl.compile(G))


def _options(path: Path):
    """(name, label) of every option of the space's choices that is not a plain number."""
    from archdsl.frontend.choices import DefaultResolver

    resolver = DefaultResolver()
    archdsl.build(archdsl.parse(path), resolver=resolver)
    for name, dim in resolver.dims.items():
        if dim.kind == "choice" and not all(isinstance(o, (int, float)) for o in dim.options):
            yield from ((name, label) for label in dim.labels)


@pytest.mark.filterwarnings("ignore:.*low-precision node")  # int8 without calibration runs simulated: still equal
@pytest.mark.parametrize("mode", ["train", "deploy"])
@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_option_of_the_example_spaces_emits_the_same_module(path, mode):
    program = archdsl.parse(path)
    options = list(_options(path))
    assert len(options) >= 2  # a choice and its alternatives at least (the mixer spaces have 10 and more)
    for name, label in options:
        G = archdsl.build(program, **{name: label})
        gm = randomize(archdsl.compile(G)).eval()
        x = torch.randn(2, *G.nodes[G.graph["input"]]["shape"], generator=torch.Generator().manual_seed(3))
        ref = gm if mode == "train" else gm.deploy()
        source = emit(ref.archdsl_ir)
        emitted = load(source).eval()
        assert list(emitted.state_dict()) == list(ref.state_dict()), (name, label)
        emitted.load_state_dict(ref.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), ref(x), rtol=0, atol=0, msg=f"{name}={label}")
