"""Precision as a search dimension: per-block precision choices, size as an objective, latency of the deploy
graph at the chosen precision (int8 kernels and bf16 weights, not fp32 with a label)."""
from searchutil import write_arch

import archdsl
import archdsl.passes.lower_precision as lower_precision_module
import archdsl.search.trial as trial_mod
from archdsl.search.study import run_search

SPACE = """
    model net(p1 = choice(fp32, int8, bf16), p2 = choice(fp32, int8, bf16)) {
      input img[1, 8, 8]
      @precision(p1) { conv(8, k = 3) >> relu >> conv(8, k = 3) >> relu }
      @precision(p2) { gap >> linear(10) }
    }
    search mixed over digits {
      maximize accuracy(epochs = 1)
      minimize size
      minimize latency(batch = 1, runs = 5)
      sampler = grid
    }
"""


def test_mixed_precision_search_measures_size_and_real_precision_latency(tmp_path, monkeypatch):
    deployed = []
    real = trial_mod._deploy

    def spy(G, module, act_bits=8):
        out = real(G, module, act_bits)
        deployed.append({(n, type(m).__name__, str(next(iter(m.state_dict().values())).dtype)) for n, m in
                         out.named_modules() if m.state_dict() and "." not in n})
        return out

    monkeypatch.setattr(trial_mod, "_deploy", spy)
    # these 8-channel convs are below the size where bf16 kernels pay (they would run fp32 kernels on
    # bf16-rounded weights, tests/passes/test_lower_precision.py); here bf16 trials keep bf16 kernels
    monkeypatch.setattr(lower_precision_module, "LOW_FLOAT_PAYS_MACS", 0)
    monkeypatch.setattr(lower_precision_module, "NATIVE_LOW_FLOAT", {"bf16": True, "fp16": True})
    arch = write_arch(tmp_path, SPACE)
    study, *_ = run_search(archdsl.parse(arch), out=tmp_path / "out", progress=False, trials=9)
    done = {(t.params["p1"], t.params["p2"]): t for t in study.trials if "size" in t.user_attrs}
    assert len(done) == 9
    weights = 8 * 9 + 8 + 8 * 8 * 9 + 8  # the two convs; the classifier has 8 * 10 + 10
    for (p1, p2), t in done.items():
        nbytes = {"fp32": 4, "bf16": 2, "int8": 1}
        assert t.user_attrs["size"] == weights * nbytes[p1] + 90 * nbytes[p2]
        assert t.user_attrs["latency_ms"] > 0 and 0 <= t.user_attrs["accuracy"] <= 1
    kinds = [k for mods in deployed for k in mods]
    assert any(cls == "QConv" for _, cls, _ in kinds)  # int8 trials timed on PyTorch's quantized kernels
    assert any(dtype == "torch.bfloat16" for _, _, dtype in kinds)  # bf16 trials with bf16 weights


def test_seven_bit_int8_search_times_trains_and_reports_on_seven_bit_activations(tmp_path, monkeypatch):
    import json

    from searchutil import cli

    from archdsl.ops.quantized import QConv

    kernels = []
    real = trial_mod._deploy

    def spy(G, module, act_bits=8):
        out = real(G, module, act_bits)
        kernels.extend(m.levels for m in out.modules() if isinstance(m, QConv))
        return out

    monkeypatch.setattr(trial_mod, "_deploy", spy)
    arch = write_arch(tmp_path, """
        @precision(int8)
        model net(w = choice(4, 8)) {
          input img[1, 8, 8]
          conv(w, k = 3) >> relu >> conv(8, k = 3) >> relu >> gap >> linear(10)
        }
        search seven over digits {
          maximize accuracy(epochs = 2, act_bits = 7)
          minimize latency(batch = 1, runs = 3)
          sampler = grid
        }
    """)
    rc, _, stderr = cli("search", arch, "--out", tmp_path / "out", "--trials", 2, "--quiet")
    assert rc == 0, stderr
    assert kernels and set(kernels) == {127}  # latency timed on the 7-bit kernels
    summary = json.loads((tmp_path / "out" / "pareto.json").read_text())
    member = summary["pareto"][0]
    assert "levels=127" in open(member["module"]).read()  # the emitted winner keeps its 7-bit observers
    assert member.get("test_accuracy") is not None
