"""Every .arch file under searchspaces/ builds; the example search spaces build, compile and run at every
option of every dimension; the reference models have their published parameter counts and MACs."""
from __future__ import annotations

import importlib.util
import itertools
import random
import re
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.frontend.choices import DefaultResolver
from archdsl.ir.printer import ir_hash
from archdsl.search.resolved import resolved_source
from archdsl.ir.graph import totals
from codegen.python_source import emit

ROOT = Path(__file__).resolve().parents[1] / "searchspaces"
ARCH_FILES = sorted(ROOT.rglob("*.arch"))
# The example spaces: file -> (input shape without batch, overrides for the model parameters).
SPACES = {
    "seq1d_mixers.arch": ((1, 40), {}),
    "image2d_mixers.arch": ((1, 8, 8), {}),
    "image2d_seedmixers.arch": ((1, 8, 8), {}),
    # every layer present and mixed, so each layer's mixer, dilation and MLP choices are met
    "mnist1d_deep.arch": ((1, 40), {"depth": 5, **{f"mixed{i}": True for i in range(1, 6)}}),
}
CIFAR = ((3, 32, 32), {"channels": 3, "size": 32, "patch": 4})  # image2d_mixers at CIFAR size


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _nparams(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_example_spaces_exist():
    names = {p.name for p in ARCH_FILES}
    assert set(SPACES) <= names
    assert {"inceptionnext_t.arch", "replknet_31b.arch"} <= names


# ---- every file parses and every model builds (small input, 10 classes) --------------------------------

@pytest.mark.parametrize("path", ARCH_FILES, ids=_rel)
def test_every_arch_file_builds(path):
    program = archdsl.parse(path)
    if not program.models:  # a library of blocks (metaformer.arch)
        assert program.blocks, f"{_rel(path)} defines neither a model nor a block"
        return
    for name, model in program.models.items():
        params = {p.name for p in model.params}
        overrides = {k: v for k, v in (("size", 64), ("classes", 10)) if k in params}
        G = archdsl.build(program, name, **overrides)
        if "classes" in params:  # a classifier's logits, or a segmenter's per position of the input
            out, inp = G.nodes[G.graph["output"]]["shape"], G.nodes[G.graph["input"]]["shape"]
            assert out in ((10,), (10, *inp[1:]))
        assert totals(G)["params"] > 0


# ---- the example spaces: every option of every dimension builds, compiles and runs ----------------------

def _dims(program, overrides):
    resolver = DefaultResolver(overrides)
    G = archdsl.build(program, resolver=resolver)
    assert set(G.graph["space"]) == set(resolver.dims)
    return resolver.dims


def _options(dim):
    """Every value a dimension can take, as overrides (choice labels; every integer of an int range)."""
    if dim.kind == "choice":
        return list(dim.labels)
    if dim.kind == "int":
        return list(range(int(dim.low), int(dim.high) + 1, int(dim.step or 1)))
    return sorted({dim.low, dim.default, dim.high})


def _space_points(file, shape, overrides):
    program = archdsl.parse(ROOT / file)
    dims = _dims(program, overrides)
    assert dims, f"{file} has no search dimensions"
    for name, dim in dims.items():
        if name in overrides:  # held where the file's entry puts it (its other values are the default point)
            continue
        for value in _options(dim):
            yield pytest.param(file, shape, {**overrides, name: value}, id=f"{file[:-5]}:{name}={value}")


POINTS = [p for file, (shape, ov) in SPACES.items() for p in _space_points(file, shape, ov)]


def _run(program, shape, overrides, classes=10, train=True):
    G = archdsl.build(program, **overrides)
    assert G.graph["choices"], "the space resolved no choices"
    assert G.nodes[G.graph["output"]]["shape"] == (classes,)
    module = archdsl.compile(G)
    assert _nparams(module) == totals(G)["params"]
    x = torch.randn(2, *shape)
    if train:  # one training step's forward and backward, as a search would run it
        module.train()
        y = module(x)
        assert y.shape == (2, classes)
        y.square().mean().backward()
    module.eval()
    with torch.inference_mode():
        y = module(x)
    assert y.shape == (2, classes) and torch.isfinite(y).all()
    return G


def emitted_and_deployed_agree(G, shape, tmp_path):
    """The trained module (perturbed weights, norm statistics off their init), the Python source `emit` writes for
    it (loaded with the same weights) and its deploy form compute the same function in float64."""
    torch.manual_seed(0)
    module = archdsl.compile(G).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, *shape, dtype=torch.float64)
    module.train()(x)
    module.eval()
    path = tmp_path / "model.py"
    path.write_text(emit(G))
    spec = importlib.util.spec_from_file_location(f"emitted_{abs(hash(str(tmp_path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.no_grad():
        want = module(x)
        emitted = mod.Model().double().eval()
        emitted.load_state_dict(module.state_dict())
        torch.testing.assert_close(emitted(x), want)
        torch.testing.assert_close(module.deploy()(x), want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("file, shape, overrides", POINTS)
def test_every_option_builds_compiles_and_runs(file, shape, overrides):
    _run(archdsl.parse(ROOT / file), shape, overrides)


@pytest.mark.parametrize("file", sorted(SPACES))
def test_random_points_of_the_space(file):
    """Options combine: a few random full points (every dimension at once) build and run too."""
    shape, _ = SPACES[file]
    program = archdsl.parse(ROOT / file)
    rng = random.Random(0)
    for _ in range(6):
        r = _RandomResolver(rng)  # drawn as met, so a choice that only exists under another one is drawn too
        archdsl.build(program, resolver=r)
        _run(program, shape, dict(r.values), train=False)


def test_image_space_at_cifar_size():
    shape, overrides = CIFAR
    program = archdsl.parse(ROOT / "image2d_mixers.arch")
    dims = _dims(program, overrides)
    for mixer in ("mixer1", "mixer2"):
        for label in dims[mixer].labels:
            _run(program, shape, {**overrides, mixer: label}, train=False)


# the deep space (9^5 mixer combinations) bounds its size with its search's `constraint params < 100k` instead
@pytest.mark.parametrize("file", sorted(set(SPACES) - {"mnist1d_deep.arch"}))
def test_spaces_stay_small(file):
    """The largest widths, depths, MLP ratio and kernels, with any combination of the mixer slots, stay under 100k
    parameters."""
    shape, base = SPACES[file]
    program = archdsl.parse(ROOT / file)
    dims = _dims(program, base)
    biggest = {name: (dim.high if dim.kind == "int" else max(dim.options))
               for name, dim in dims.items() if name.startswith(("width", "depth", "mlp_ratio", "k", "large_k"))}
    slots = sorted(name for name in dims if name.startswith("mixer"))
    counts = [totals(archdsl.build(program, **base, **biggest, **dict(zip(slots, mixers))))["params"]
              for mixers in itertools.product(*(dims[name].labels for name in slots))]
    assert max(counts) < 100_000


# ---- the bundled MNIST-1D search (searchspaces/mnist1d_mixers.arch) ----------------------------------

MNIST1D = "mnist1d_mixers.arch"


@pytest.mark.parametrize("file, shape, overrides", list(_space_points(MNIST1D, (1, 40), {})))
def test_mnist1d_space_every_option_builds_compiles_and_runs(file, shape, overrides):
    _run(archdsl.parse(ROOT / file), shape, overrides)


def test_mnist1d_space_keeps_the_seed_mixers_and_has_plain_blocks():
    """The mixer blocks come with and without their shortcut: the plain chain (a classic CNN's, no residual
    add) and the residual block, with every seed mixer either way."""
    program = archdsl.parse(ROOT / MNIST1D)
    dims = _dims(program, {})
    assert len(dims["mixer"].labels) == 9 and dims["shortcut"].labels
    for shortcut, adds in ((True, 2), (False, 0)):
        G = archdsl.build(program, shortcut=shortcut, depth=2, mlp=False)
        assert sum(G.nodes[n]["op"] == "add" for n in G) == adds
        D = archdsl.compile(G, mode="deploy").archdsl_ir
        members = [op for n in D for op in (D.nodes[n]["attrs"].get("ops") or (D.nodes[n]["op"],))]
        assert members.count("add") == adds


def test_mnist1d_deep_points_write_back_exactly():
    """Each of the deep space's choices stands once in the source (named after its layer), so any point of it,
    written back as a plain .arch file (what a trial stores and the report emits), rebuilds the same network."""
    program = archdsl.parse(ROOT / "mnist1d_deep.arch")
    rng = random.Random(1)
    seen = set()
    for _ in range(8):
        r = _RandomResolver(rng)
        G = archdsl.build(program, resolver=r)
        seen.add(G.graph["choices"]["depth"])
        text = resolved_source(program, r, G)
        assert not re.search(r"\b(choice|int)\s*\(", text), text
        assert ir_hash(archdsl.build(archdsl.parse(text, file="<resolved>"))) == ir_hash(G), text
    assert len(seen) > 2


class _RandomResolver(DefaultResolver):
    """Every dimension at a random value, drawn as the builder meets it (so conditional ones are drawn too)."""

    def __init__(self, rng):
        super().__init__({})
        self.rng = rng

    def pick(self, dim):
        return self.rng.choice(dim.options) if dim.kind == "choice" else self.rng.randint(int(dim.low), int(dim.high))


# ---- reference models: exact parameter counts, MACs, a forward pass ------------------------------------

def test_inceptionnext_t_matches_timm():
    program = archdsl.parse(ROOT / "models" / "inceptionnext_t.arch")
    G = archdsl.build(program)
    t = totals(G)
    assert t["params"] == 28_055_680  # timm inception_next_tiny
    assert abs(t["macs"] / 4.19e9 - 1) < 0.02
    module = archdsl.compile(G).eval()
    assert _nparams(module) == 28_055_680
    with torch.inference_mode():
        y = module(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_replknet_31b_matches_the_official_code():
    program = archdsl.parse(ROOT / "models" / "replknet_31b.arch")
    t = totals(archdsl.build(program))
    assert t["params"] == 79_864_168  # official create_RepLKNet31B, before re-parameterisation
    assert abs(t["macs"] / 15.3e9 - 1) < 0.02
    G = archdsl.build(program, size=64, classes=10)  # the forward pass at 224 is slow on a CPU
    module = archdsl.compile(G).eval()
    assert _nparams(module) == totals(G)["params"] == 79_864_168 - (1000 - 10) * (1024 + 1)  # a 10-class head
    with torch.inference_mode():
        y = module(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 10) and torch.isfinite(y).all()
