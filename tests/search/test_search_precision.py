"""Precision as a search dimension: per-block precision choices, size as an objective, latency of the deploy
graph at the chosen precision (int8 kernels and bf16 weights, not fp32 with a label)."""
from searchutil import write_arch

import torch

import archdsl
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


def _bf16_weights(m) -> bool:
    """Whether a module's float weights hold bf16 values: stored as bf16, or (small convs, where the fp32 kernel
    is faster on CPU) as fp32 tensors of bf16-rounded values."""
    w = [v for v in m.state_dict().values() if v.is_floating_point()]
    return bool(w) and all(v.dtype == torch.bfloat16 or torch.equal(v, v.bfloat16().to(v.dtype)) for v in w)


def test_mixed_precision_search_measures_size_and_real_precision_latency(tmp_path, monkeypatch):
    deployed = []
    real = trial_mod._deploy

    def spy(G, module):
        out = real(G, module)
        deployed.append({(n, type(m).__name__, _bf16_weights(m)) for n, m in
                         out.named_modules() if m.state_dict() and "." not in n})
        return out

    monkeypatch.setattr(trial_mod, "_deploy", spy)
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
    assert any(cls == "QConv" for _, cls, _ in kinds)  # int8 trials timed with PyTorch's quantized kernels
    assert any(bf16 for _, cls, bf16 in kinds if cls != "QConv")  # bf16 trials with bf16 weights
