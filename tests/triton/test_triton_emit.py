"""Emitted files for the Triton backend (codegen/emit_triton.py): the readable deploy classes, with the fused
groups swapped at construction for archdsl's Triton kernels; the same state_dict names and the same outputs as
archdsl.compile(..., backend="triton") in memory. Interpreter mode here (conftest.py), the GPU elsewhere."""
from pathlib import Path

import pytest
import torch
from test_triton_backend import _quiet, small_overrides

import archdsl
from codegen.python_source import emit
from codegen.triton.lower import TritonGroup, triton_available

pytestmark = pytest.mark.skipif(not triton_available()[0], reason=triton_available()[1])


@pytest.mark.parametrize("name", ["mnist1d_cnn", "convnext_t", "resnet50", "poolformerv2_s12"])
def test_emitted_triton_module_is_the_in_memory_one(name, tmp_path):
    program, overrides = small_overrides(Path(f"searchspaces/models/{name}.arch"))
    G = archdsl.build(program, **overrides)
    torch.manual_seed(0)
    with _quiet():
        tri = archdsl.compile(G, mode="deploy", backend="triton")
    source = emit(tri.archdsl_ir, backend="triton")
    assert "from codegen.triton.lower import" in source and "runtime package codegen.triton" in source.splitlines()[0]
    assert "nn.Module()" not in source and "FusedGroup" not in source
    ns: dict = {}
    exec(compile(source, str(tmp_path / "m.py"), "exec"), ns)
    emitted = ns["Model"]().eval()
    lowered = {n for n, m in tri.named_modules() if isinstance(m, TritonGroup)}
    assert lowered and lowered == {n for n, m in emitted.named_modules() if isinstance(m, TritonGroup)}
    assert list(emitted.state_dict()) == list(tri.state_dict())
    emitted.load_state_dict(tri.state_dict(), strict=True)
    x = torch.randn(2, *G.nodes[G.graph["input"]]["shape"])
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), tri(x), rtol=0, atol=0)


def test_compile_command_emits_for_the_triton_backend(tmp_path, capsys):
    from archdsl import cli

    arch, out = "searchspaces/models/mnist1d_cnn.arch", tmp_path / "m.py"
    assert cli.main(["compile", arch, "--backend", "triton", "-o", str(out)]) == 2  # the train graph has no kernels
    assert "add --mode deploy" in capsys.readouterr().err and not out.exists()
    assert cli.main(["compile", arch, "--backend", "triton", "--mode", "deploy", "-o", str(out)]) == 0
    ns: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), ns)
    assert any(isinstance(m, TritonGroup) for m in ns["Model"]().modules())
