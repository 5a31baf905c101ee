"""Registry-driven op tests: every registered op x every one of its examples.

Each example builds the op's module from its registration and checks it against the registration's other,
independently written facts: the shape rule, the parameter count, the float64 reference, the MAC formula
(against torch's FlopCounterMode) and the attribute checks. A new op gets these tests by being registered.
"""
from __future__ import annotations

import builtins
import dis
import inspect
import sys
import types

import pytest
import torch
from torch.utils import flop_counter

from archdsl.errors import ArchError
from archdsl.ops.registry import REQUIRED, all_ops, get_op

OPS = all_ops()
CASES = [pytest.param(spec, i, id=f"{spec.name}-{i}") for spec in OPS for i in range(len(spec.examples))]
LITERALS = (int, float, bool, str, type(None))


def _inputs(ins, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=g) for shape in ins]


def _build(spec, i, seed=0):
    """(attrs, input shapes, module) for example i, with parameters moved off their init values.

    The perturbation makes the checks see generic values: a LayerScale gamma of 1e-5 or a BatchNorm bias of 0
    would hide a wrong scale or leave a gradient at exactly zero.
    """
    attrs, ins = spec.examples[i]
    ins = [tuple(s) for s in ins]
    a = spec.bind([], dict(attrs), ins)
    cls, kwargs = spec.torch(a, ins)
    torch.manual_seed(seed)
    module = cls(**kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return a, ins, module


def _literal(v):
    if isinstance(v, (tuple, list)):
        return all(_literal(x) for x in v)
    return isinstance(v, LITERALS)


def test_registry_is_not_empty():
    names = {s.name for s in OPS}
    assert {"conv", "linear", "bn", "ln", "mhsa", "gap", "relu", "starrelu", "droppath"} <= names


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
def test_every_op_has_reference_and_examples(spec):
    assert spec.reference is not None, f"{spec.name} has no reference"
    assert len(spec.examples) >= 1, f"{spec.name} has no examples"
    attr_names = [a.name for a in spec.attrs]
    assert len(set(attr_names)) == len(attr_names)
    for alias in spec.aliases:
        assert get_op(alias) is spec
    assert get_op(spec.name) is spec


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
def test_examples_cover_1d_and_2d(spec):
    ranks = {len(ins[0]) for _, ins in spec.examples}
    wanted = {2, 3} & {d + 1 for d in spec.spatial_dims}  # (C, L) and (C, H, W), where the op declares them
    assert wanted and wanted <= ranks, f"{spec.name}: examples need ranks {wanted}, have ranks {ranks}"
    for _, ins in spec.examples:
        assert len(ins[0]) - 1 in spec.spatial_dims and len(ins[0]) >= spec.min_input_rank


@pytest.mark.parametrize("spec,i", CASES)
def test_shape(spec, i):
    a, ins, module = _build(spec, i)
    _, kwargs = spec.torch(a, ins)
    assert all(_literal(v) for v in kwargs.values()), f"non-literal kwargs {kwargs}"
    expected = spec.shape(a, ins)
    assert isinstance(expected, tuple) and all(type(s) is int and s > 0 for s in expected)
    with torch.no_grad():
        y = module.eval()(*_inputs(ins, batch=2))
    assert tuple(y.shape) == (2, *expected)


@pytest.mark.parametrize("spec,i", CASES)
def test_params(spec, i):
    a, ins, module = _build(spec, i)
    # deploy-time integer ops hold their trained weights as buffers (`_frozen_weights`); they still count
    frozen = [getattr(module, b) for b in getattr(module, "_frozen_weights", ())]
    count = sum(p.numel() for p in module.parameters()) + sum(t.numel() for t in frozen if t is not None)
    assert count == spec.params(a, ins)


@pytest.mark.parametrize("spec,i", CASES)
def test_reference(spec, i):
    if spec.reference is None:
        pytest.skip("no reference (test_every_op_has_reference_and_examples fails for it)")
    a, ins, module = _build(spec, i)
    module = module.double()
    with torch.no_grad():
        # One training step first, so that running statistics (BatchNorm) are no longer their init values.
        module.train()(*[x.double() for x in _inputs(ins, batch=3, seed=1)])
        module.eval()
        xs = [x.double() for x in _inputs(ins, batch=2)]
        y = module(*xs)
        ref = spec.reference(module, *[x.clone() for x in xs])
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref.to(torch.float64), rtol=1e-9, atol=1e-11)


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(query, key, value)


# torch's FlopCounterMode counts the CUDA attention kernels but not the CPU one that
# F.scaled_dot_product_attention dispatches to here; count it with torch's own attention formula.
_CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


@pytest.mark.parametrize("spec,i", CASES)
def test_macs(spec, i):
    if not spec.flop_counter_exact:
        pytest.skip("FlopCounterMode cannot see this op's MACs")
    a, ins, module = _build(spec, i)
    out = spec.shape(a, ins)
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.no_grad(), counter:
        module.eval()(*_inputs(ins, batch=1))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    assert spec.macs(a, ins, out) == flops // 2


@pytest.mark.parametrize("spec,i", CASES)
def test_gradients(spec, i):
    a, ins, module = _build(spec, i)
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        pytest.skip("no parameters")
    torch.manual_seed(0)
    module.train()(*_inputs(ins, batch=2)).square().sum().backward()
    for name, p in params:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def _wrong_value(kind):
    """A value of the wrong type for an attribute kind."""
    return {"int": "abc", "float": "abc", "ints": "abc", "floats": "abc", "bool": 1, "str": 3}[kind]


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
def test_bind_errors(spec):
    attrs, ins = spec.examples[0]
    ins = [tuple(s) for s in ins]
    required = {k: v for k, v in attrs.items() if next(a for a in spec.attrs if a.name == k).default is REQUIRED}
    # An unknown attribute: a misspelling of a real one gets a did-you-mean hint; with none, the signature.
    if spec.attrs:
        real = spec.attrs[0].name
        with pytest.raises(ArchError) as err:
            spec.bind([], {**required, real + "x": 1}, ins)
        assert "did you mean" in (err.value.hint or "") and repr(real) in err.value.hint
    else:
        with pytest.raises(ArchError) as err:
            spec.bind([], {"bogus": 1}, ins)
        assert spec.name in err.value.hint
    # A wrong-typed value for each typed attribute.
    for attr in spec.attrs:
        if attr.kind == "any":
            if attr.check is None:
                continue
            bad = True  # not a list, number or string any "any" attribute here expects
        else:
            bad = _wrong_value(attr.kind)
        with pytest.raises(ArchError, match=attr.name):
            spec.bind([], {**required, attr.name: bad}, ins)
    # Too many positional arguments.
    with pytest.raises(ArchError):
        spec.bind([1] * (len(spec.attrs) + 1), {}, ins)


# What emitted code binds at module level (docs/adding_ops.md): a custom module class may use only these,
# builtins, and what it lists in `_emit_deps`.
_EMIT_GLOBALS = {"math": "math", "torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional"}


def _global_names(code):
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _check_self_contained(obj, seen):
    """Complaints about globals `obj` (a class or function copied into emitted code) uses but may not."""
    if obj in seen or not getattr(obj, "__module__", "").startswith("archdsl"):
        return []
    seen.add(obj)
    deps = tuple(getattr(obj, "_emit_deps", ()))
    allowed = set(_EMIT_GLOBALS) | set(dir(builtins)) | {d.__name__ for d in deps} | {obj.__name__}
    module_globals = vars(sys.modules[obj.__module__])
    complaints = []
    if inspect.isclass(obj):
        members = vars(obj).values()
        codes = [f.__code__ for f in members if isinstance(f, types.FunctionType)]
        codes += [f.__func__.__code__ for f in members if isinstance(f, (staticmethod, classmethod))]
        codes += [f.fget.__code__ for f in members if isinstance(f, property) and f.fget]
        for base in obj.__bases__:
            if base.__module__.startswith("archdsl") and base not in deps:
                complaints.append(f"{obj.__name__}: base class {base.__name__} is not in _emit_deps")
    else:
        codes = [obj.__code__]
    for name in sorted(set().union(set(), *map(_global_names, codes))):
        if name not in allowed:
            complaints.append(f"{obj.__name__} uses global {name!r}, not math/torch/nn/F or an _emit_deps entry")
        elif name in _EMIT_GLOBALS and name in module_globals:
            if getattr(module_globals[name], "__name__", None) != _EMIT_GLOBALS[name]:
                complaints.append(f"{obj.__name__}: {name} is not {_EMIT_GLOBALS[name]} in {obj.__module__}")
    for dep in deps:
        complaints += _check_self_contained(dep, seen)
    return complaints


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
def test_module_classes_are_self_contained(spec):
    complaints = []
    seen = set()
    for attrs, ins in spec.examples:
        ins = [tuple(s) for s in ins]
        cls, _ = spec.torch(spec.bind([], dict(attrs), ins), ins)
        complaints += _check_self_contained(cls, seen)
    assert not complaints, "; ".join(complaints)


def test_unknown_op_hint():
    with pytest.raises(ArchError) as err:
        get_op("maxpol")
    assert "maxpool" in err.value.hint
