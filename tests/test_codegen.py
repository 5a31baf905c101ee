"""Backends: the torch.fx GraphModule (names, numerics against explicit torch code) and the emitted Python
source (imports only torch, math and collections.OrderedDict, reproduces the outputs in a fresh process, never executes .arch strings)."""
from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.graph import totals
from codegen.python_source import emit

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"


def build(src, **overrides):
    return archdsl.build(archdsl.parse(src), **overrides)


def randomize(module, seed=0, scale=0.3):
    """Replace every parameter with random values (so layer scales of 1e-6 do not hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


# ---- the GraphModule -----------------------------------------------------------------------------------

CONVNEXT = """
block convnext_block(dim, k = 7, mixer = dwconv(k)) {
  residual { mixer >> ln(eps = 1e-6) >> linear(4 * dim) >> gelu >> linear(dim) >> layerscale(1e-6) }
}
model tiny_convnext(dims = [8, 16], classes = 10) {
  input image[3, 16, 16]
  stem: conv(dims[0], k = 4, stride = 4, padding = 0) >> ln(eps = 1e-6)
  stage: for i in 0..2 {
    if i > 0 { down: ln(eps = 1e-6) >> conv(dims[i], k = 2, stride = 2, padding = 0) }
    block: repeat 2 { convnext_block(dims[i]) }
  }
  head: gap >> ln(eps = 1e-6) >> linear(classes)
}
"""


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an (N, C, H, W) tensor, written with F.layer_norm on NHWC."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class RefBlock(nn.Module):
    """The ConvNeXt block as in the official code: dwconv 7x7, LN, Linear 4C, GELU, Linear C, gamma, + x."""

    def __init__(self, d):
        super().__init__()
        self.dwconv = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pwconv1 = nn.Linear(d, 4 * d)
        self.pwconv2 = nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.full((d,), 1e-6))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class RefConvNeXt(nn.Module):
    def __init__(self, dims=(8, 16), classes=10):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, dims[0], 4, stride=4)
        self.stem_norm = LayerNorm2d(dims[0])
        self.down_norm = LayerNorm2d(dims[0])
        self.down_conv = nn.Conv2d(dims[0], dims[1], 2, stride=2)
        self.stages = nn.ModuleList([nn.ModuleList([RefBlock(d) for _ in range(2)]) for d in dims])
        self.head_norm = nn.LayerNorm(dims[1], eps=1e-6)
        self.head_fc = nn.Linear(dims[1], classes)

    def forward(self, x):
        x = self.stem_norm(self.stem_conv(x))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.down_conv(self.down_norm(x))
            for block in stage:
                x = block(x)
        return self.head_fc(self.head_norm(x.mean((2, 3))))


def _name_map():
    """compiled state_dict key -> reference key, written out by hand."""
    out = {}
    for p in ("weight", "bias"):
        out[f"stem.conv.{p}"] = f"stem_conv.{p}"
        out[f"stem.ln.{p}"] = f"stem_norm.{p}"
        out[f"stage1.down.ln.{p}"] = f"down_norm.{p}"
        out[f"stage1.down.conv.{p}"] = f"down_conv.{p}"
        out[f"head.ln.{p}"] = f"head_norm.{p}"
        out[f"head.linear.{p}"] = f"head_fc.{p}"
        for i in range(2):
            for j in range(2):
                pre = f"stage{i}.block{j}.convnext_block"
                for ours, theirs in (("mixer", "dwconv"), ("ln", "norm"), ("linear", "pwconv1"), ("linear_1", "pwconv2")):
                    out[f"{pre}.{ours}.{p}"] = f"stages.{i}.{j}.{theirs}.{p}"
    for i in range(2):
        for j in range(2):
            out[f"stage{i}.block{j}.convnext_block.layerscale.gamma"] = f"stages.{i}.{j}.gamma"
    return out


def test_compile_returns_a_graph_module_with_hierarchical_names():
    G = build(CONVNEXT)
    gm = archdsl.compile(G)
    assert isinstance(gm, fx.GraphModule)
    assert gm.archdsl_ir is G
    keys = set(gm.state_dict())
    assert "stage0.block0.convnext_block.mixer.weight" in keys
    assert "stage1.block1.convnext_block.layerscale.gamma" in keys
    assert keys == set(_name_map())
    assert isinstance(gm.get_submodule("stage0.block0.convnext_block.mixer"), nn.Conv2d)
    assert sum(p.numel() for p in gm.parameters()) == totals(G)["params"]


def test_compiled_module_equals_explicit_torch_code():
    gm = randomize(archdsl.compile(build(CONVNEXT)), seed=1).eval()
    ref = RefConvNeXt().eval()
    mapping = _name_map()
    assert set(mapping.values()) == set(ref.state_dict())
    ours = gm.state_dict()
    ref.load_state_dict({mapping[k]: v for k, v in ours.items()}, strict=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = ref(x), gm(x)
    assert got.shape == (2, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want.abs().max() > 1e-2  # not trivially zero


def test_compile_from_text_path_and_with_overrides(tmp_path):
    path = tmp_path / "n.arch"
    path.write_text("model n(c = 4) { input x[3, 8]\n conv(c, k = 3) >> relu }")
    assert archdsl.compile(str(path), c=6)(torch.randn(1, 3, 8)).shape == (1, 6, 8)
    with pytest.raises(ArchError, match="unknown mode"):
        archdsl.compile(str(path), mode="fast")
    with pytest.raises(ArchError, match="unknown backend"):
        archdsl.compile(str(path), backend="jax")


def test_merges_lower_to_functions_not_modules():
    gm = archdsl.compile(build("model m() { input x[4, 8]\n a: relu\n parallel(concat) { } { gelu }\n"
                               " parallel(sum) { } { conv(8) }\n parallel(mul) { } { sigmoid } }"))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.cat in targets
    assert sum(t.__name__ in ("add", "mul") for t in targets if hasattr(t, "__name__")) == 2
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        a = torch.relu(x)
        c = torch.cat([a, F.gelu(a)], 1)
        conv = gm.get_submodule("conv")
        s = c + F.conv1d(c, conv.weight, conv.bias)
        torch.testing.assert_close(gm(x), s * torch.sigmoid(s))


# ---- the emitted Python source -------------------------------------------------------------------------

COVERAGE = """
block mf(dim, mixer) {
  residual { ln(bias = false) >> mixer }
  residual { linear(2 * dim, bias = false) >> starrelu >> linear(dim, bias = false) }
}
model coverage() {
  input x[8, 6, 6]
  stem: conv(8, k = 3) >> bn >> relu
  parallel(concat) { dwconv(3) } { conv(4) >> gelu }
  linear(8)
  b1: mf(8, mhsa(heads = 2))
  b2: mf(8, sepconv(k = 3))
  s: for i in 0..2 { dcls(5, 3, share = "pos") }
  parallel(sum) { resscale(1.0) } { poolmix(3) >> layerscale }
  head: gap >> ln >> linear(5)
}
"""
SEQ = "model seq() { input s[2, 12]\n conv(4, k = 3) >> residual { dwconv(5) >> silu } >> gmp >> linear(3) }"
VOL = "model vol() { input v[1, 4, 6, 6]\n conv(2, k = 3) >> avgpool(2) >> upsample(2) >> gap >> linear(2) }"
PAYLOAD = "x'); __import__('pathlib').Path('PWNED').touch(); ('"


ALLOWED_IMPORTS = {"torch", "math", "collections"}  # OrderedDict names the children of an nn.Sequential


def _imports(source):
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    return roots


def _import_lines(source):
    return [line for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))]


def _code_names(source):
    """NAME tokens of the source: everything that is code, not a string literal or a comment."""
    return {t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.NAME}


def test_emit_imports_only_torch_and_the_standard_library():
    source = emit(build(COVERAGE))
    assert _imports(source) <= ALLOWED_IMPORTS
    for line in _import_lines(source):
        assert line.strip() in ("import math", "from collections import OrderedDict", "import torch",
                                "import torch.nn.functional as F", "from torch import nn"), line
    assert "archdsl" not in _code_names(source) and "codegen" not in _code_names(source)
    tree = ast.parse(source)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "Coverage" in classes
    assert any(isinstance(n, ast.Assign) and n.targets[0].id == "Model" for n in tree.body
               if isinstance(n, ast.Assign))


def _case(tmp_path, name, G, shape, seed):
    """Write the emitted source, the in-memory module's state dict, an input and its output."""
    big = totals(G)["params"] > 1_000_000  # deep nets with BN in eval: keep activations moderate
    gm = randomize(archdsl.compile(G), seed, scale=0.02 if big else 0.3).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = gm(x)
    d = tmp_path / name
    d.mkdir()
    (d / "model.py").write_text(emit(G))
    torch.save(gm.state_dict(), d / "state.pt")
    torch.save({"x": x, "y": y}, d / "io.pt")
    return d


RUNNER = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    results = {}
    for d in sys.argv[1:]:
        spec = importlib.util.spec_from_file_location("emitted_" + d.replace("/", "_").replace("-", "_"),
                                                      d + "/model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.Model()
        model.load_state_dict(torch.load(d + "/state.pt", weights_only=True), strict=True)
        model.eval()
        io = torch.load(d + "/io.pt", weights_only=True)
        with torch.no_grad():
            y = model(io["x"])
        results[d] = {"shape": list(y.shape), "max_err": float((y - io["y"]).abs().max()),
                      "scale": float(io["y"].abs().max()),
                      "params": sum(p.numel() for p in model.parameters())}
    results["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in ("archdsl", "codegen", "grammar"))
    print(json.dumps(results))
""")


def test_emitted_source_reproduces_outputs_in_a_fresh_process(tmp_path):
    cases = {
        "coverage": (build(COVERAGE), (2, 8, 6, 6)),
        "seq": (build(SEQ), (2, 2, 12)),
        "vol": (build(VOL), (1, 1, 4, 6, 6)),
        "payload": (build("model p() { input x[3, 7, 7]\n s: for i in 0..2 { dcls(3, 2, share = \"" + PAYLOAD +
                          "\") } }"), (1, 3, 7, 7)),
        "convnext_t": (archdsl.build(archdsl.parse(MODELS / "convnext_t.arch"), size=64, classes=10), (1, 3, 64, 64)),
        "resnet50": (archdsl.build(archdsl.parse(MODELS / "resnet50.arch"), size=64, classes=10), (1, 3, 64, 64)),
    }
    dirs = {name: _case(tmp_path, name, G, shape, seed) for seed, (name, (G, shape)) in enumerate(cases.items())}
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    proc = subprocess.run([sys.executable, str(runner), *map(str, dirs.values())], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("leaked") == []  # the emitted files never import archdsl
    for name, d in dirs.items():
        r = results[str(d)]
        G, shape = cases[name]
        assert r["shape"] == [shape[0], *G.nodes[G.graph["output"]]["shape"]], name
        assert r["max_err"] <= 1e-4 * max(1.0, r["scale"]), (name, r)
        assert r["params"] == totals(G)["params"], name
    assert not (tmp_path / "PWNED").exists()


def test_strings_from_the_arch_file_only_appear_as_literals():
    G = build("model p() { input x[3, 7, 7]\n s: for i in 0..2 { dcls(3, 2, share = \"" + PAYLOAD + "\") } }")
    source = emit(G)
    assert PAYLOAD in source or repr(PAYLOAD) in source
    names = _code_names(source)
    assert "__import__" not in names and "PWNED" not in names and "touch" not in names
    assert _imports(source) <= ALLOWED_IMPORTS
    strings = [ast.literal_eval(t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
               if t.type == tokenize.STRING and PAYLOAD[:5] in t.string]
    assert PAYLOAD in strings  # the whole payload is one repr'd string literal


@pytest.mark.parametrize("call", [
    "gelu(approximate = \"\\\"; import os; os.system('x')\")",
    "upsample(mode = \"nearest'); import os; #\")",
    "conv(4, padding = \"same'); import os; #\")",
])
def test_injection_into_validated_string_attributes_is_rejected(call):
    with pytest.raises(ArchError):
        build("model p() { input x[3, 7, 7]\n " + call + " }")


def test_file_name_cannot_break_out_of_the_docstring(tmp_path):
    path = tmp_path / 'evil"""; import os; os.system("x"); """\\.arch'
    path.write_text("model evil() { input x[3]\n linear(2) }")
    source = emit(archdsl.build(archdsl.parse(path)))
    assert "os" not in _code_names(source) and "system" not in _code_names(source)
    assert _imports(source) <= ALLOWED_IMPORTS
    ns: dict = {}
    exec(compile(source, "emitted", "exec"), ns)  # it is valid Python, and harmless
    assert ns["Model"]()(torch.randn(1, 3)).shape == (1, 2)
