"""archdsl.compile(..., backend="triton"): every reference model (small) runs its fused groups in Triton kernels
(interpreter mode here) and matches the torch backend; members without a kernel (dense convs) run in torch inside
their group (a split), and a group with nothing left for a kernel falls back, saying why."""
import contextlib
import warnings
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.errors import ArchError

MODELS = sorted(p for p in Path("searchspaces/models").glob("*.arch") if p.name != "metaformer.arch")
SMALL = {"dims": [32, 32, 32, 64], "widths": [4, 8, 8, 8], "depths": [1, 1, 1, 1], "kernels": [7, 5, 5, 5],
         "size": 32, "classes": 5, "channels": 6, "dim": 32, "depth": 2, "key_dim": 8}


PER_MODEL = {"cvt_13": {"heads": [1, 2, 4]},  # head counts that divide the small widths
             "convit_ti": {"local_up_to_layer": 1},  # one GPSA block, then the CLS token and an MHSA block
             "crossvit_9": {"large_size": 32},  # both branches read the 32x32 image
             "raftmlp_s": {"kernels": [[4, 8], [2, 4], [2, 4], [2]]},  # its own embedding kernels, not SMALL's
             "moat_0": {"stem": 8, "dims": [8, 16, 32, 64]},  # narrow MBConv stages: interpreter time
             "swin_unet3d": {"feature": 3, "channels": 1},  # 32^3 is its least size: narrow, still ~1 min
             "spartan_t": {"dims": [16, 16, 16, 32], "expands": [2, 2, 2, 2]}}  # narrow blocks: interpreter time


def small_overrides(path):
    program = archdsl.parse(path)
    names = {p.name for p in program.model().params}
    return program, {k: v for k, v in {**SMALL, **PER_MODEL.get(path.stem, {})}.items() if k in names}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_triton_backend_matches_torch(path):
    program, overrides = small_overrides(path)
    G = archdsl.build(program, **overrides)
    torch.manual_seed(0)
    ref = archdsl.compile(G).deploy(disable=("select_kernels",))  # the graph the triton backend lowers
    with _quiet():
        tri = archdsl.compile(G, mode="deploy", backend="triton")
    _copy_weights(ref, tri)  # the same weights in both (a lowered group keeps its members in a ModuleList)
    x = torch.randn(2, *G.nodes[G.graph["input"]]["shape"])
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-4)
    assert set(tri.lowering) == {n for n in tri.archdsl_ir if tri.archdsl_ir.nodes[n]["op"] == "fused"}
    for group, outcome in tri.lowering.items():
        if outcome.startswith("split: "):  # members without a kernel (dense convs) ran in torch inside the group
            assert outcome.startswith(f"split: group '{group}': ") and "; in torch: member " in outcome
            assert tri.get_submodule(group).group.torch_members
        else:
            assert outcome == "triton" or group in outcome  # a fallback names its group and says why


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallback notices are checked through module.lowering instead
        yield


def _copy_weights(ref, tri):
    """Load ref's parameters into tri, whose lowered groups hold the same members in a ModuleList."""
    src = dict(ref.named_modules())
    for name, mod in tri.named_modules():
        if type(mod).__name__ == "TritonGroup":
            for member_name, member in zip(mod.names, mod.members):
                member.load_state_dict(src[f"{name}.{member_name}"].state_dict())
        elif name in src:  # each module's own tensors: a bias table (MOAT's, RelAttn's) sits beside child layers
            with torch.no_grad():
                for key, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
                    t.copy_(getattr(src[name], key))


def test_some_groups_really_run_in_triton():
    program, overrides = small_overrides(Path("searchspaces/models/convnext_t.arch"))
    with _quiet():
        tri = archdsl.compile(program, mode="deploy", backend="triton", **overrides)
    assert "triton" in tri.lowering.values()
    assert any(type(m).__name__ == "TritonGroup" for m in tri.modules())


def test_triton_backend_needs_deploy_mode():
    with pytest.raises(ArchError, match="inference-only"):
        archdsl.compile("searchspaces/models/mnist1d_cnn.arch", backend="triton")


def test_triton_backend_without_gpu_or_interpreter_says_why(monkeypatch):
    import codegen.triton.lower as lower

    monkeypatch.setattr(lower, "triton_available", lambda: (False, "no CUDA GPU"))
    with pytest.raises(ArchError, match="cannot run here: no CUDA GPU"):
        archdsl.compile("searchspaces/models/mnist1d_cnn.arch", mode="deploy", backend="triton")


def test_mixed_precision_deploy_graph_lowers_its_bf16_groups(monkeypatch):
    # lower_precision runs before the groups form: a bf16 region's group holds bf16 weights and reads a cast
    import archdsl.passes.lower_precision as lower_precision_module

    # these tiny linears are below the size where CPU bf16 kernels pay; here the region keeps bf16 kernels
    monkeypatch.setattr(lower_precision_module, "LOW_FLOAT_PAYS_MACS", 0)
    monkeypatch.setattr(lower_precision_module, "NATIVE_LOW_FLOAT", {"bf16": True, "fp16": True})
    src = """
model m() {
  input x[8, 9, 7]
  @precision(bf16) { dwconv(7) >> ln >> linear(16) >> gelu >> linear(8) }
  @precision(int8) { pwconv(8) >> relu }
  gap >> linear(3)
}
"""
    G = archdsl.build(src)
    torch.manual_seed(0)
    train = archdsl.compile(G)
    archdsl.api.calibrate(train)
    with _quiet():
        ref = train.eval().deploy(disable=("select_kernels",))
        tri = train.deploy(disable=("select_kernels",))
    from codegen.triton.lower import lower_module

    lower_module(tri, lambda msg: None)
    (group,) = [n for n, outcome in tri.lowering.items() if outcome == "triton"]
    assert tri.archdsl_ir.nodes[group]["dtype"] == "bfloat16"
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(tri(x), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())
