"""`@scale`: a model scaled to a MAC budget by a named rule, checked against what is written here
independently: the rules' exponents as the papers state them, pycls's rounding, a brute-force walk over a
fine grid of scale factors, MACs by a hand formula and by torch's FlopCounterMode on the compiled module."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.graph import totals
from archdsl.ir.printer import ir_hash

NET = """{scale}
model net(width = {width}, depth = {depth}, size = {size}, classes = 10) {{
  input image[3, size, size]
  stem: conv(width, k = 3, stride = 2, padding = 1) >> relu
  block: repeat depth {{ conv(width, k = 3, padding = 1) >> relu }}
  head: gap >> linear(classes)
}}
"""
BASE = {"width": 24, "depth": 3, "size": 20}


def hand_macs(width, depth, size, classes=10):
    h = (size + 2 - 3) // 2 + 1  # the stride-2 stem's output side
    return h * h * width * 3 * 9 + depth * h * h * width * width * 9 + width * classes


def torch_macs(width, depth, size):
    module = archdsl.compile(NET.format(scale="", width=width, depth=depth, size=size))
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2  # a multiply-accumulate is two flops


# (depth, width, resolution) multipliers at a MAC factor s, as the papers write them
PHI = math.log(1.2 * 1.1 ** 2 * 1.15 ** 2)  # EfficientNet: alpha * beta^2 * gamma^2 (~1.92) per unit of phi
MULTIPLIERS = {
    "fast": lambda s: (s ** 0.1, s ** 0.4, s ** 0.05),  # dWr, alpha = 0.8: flop shares 0.1 / 0.8 / 0.1
    "compound": lambda s: (1.2 ** (math.log(s) / PHI), 1.1 ** (math.log(s) / PHI), 1.15 ** (math.log(s) / PHI)),
    "width": lambda s: (1.0, s ** 0.5, 1.0),
    "depth": lambda s: (s, 1.0, 1.0),
    "resolution": lambda s: (1.0, 1.0, s ** 0.5),
    "uniform": lambda s: (s ** (1 / 3), s ** (1 / 6), s ** (1 / 6)),  # the same paper's dwr, alpha = 1/3
}


def config(rule, s, base=BASE):
    """pycls's rounding (scaler.py, scale_model): depths to integers >= 1, widths to multiples of 8, sizes of 4."""
    d, w, r = MULTIPLIERS[rule](s)
    return {"width": max(8, round(base["width"] * w / 8) * 8), "depth": max(1, round(base["depth"] * d)),
            "size": max(4, round(base["size"] * r / 4) * 4)}


def scaled(budget, rule, **base):
    base = {**BASE, **base}
    scale = f"@scale(macs = {budget}, rule = {rule}, width = width, depth = depth, resolution = size)"
    return archdsl.build(NET.format(scale=scale, **base))


GRID = [10 ** (k / 4000) for k in range(-12000, 12001)]  # s from 0.001 to 1000, 0.06 % apart


@pytest.mark.parametrize("rule", list(MULTIPLIERS))
@pytest.mark.parametrize("budget", [200_000, 1_000_000, 5_000_000])
def test_the_largest_model_of_the_rule_within_the_budget(rule, budget):
    # brute force along the rule: every configuration that fits is no larger than the one chosen, and the
    # first configuration after it along the grid is over the budget
    seen = [config(rule, s) for s in GRID]
    fitting = [c for c in seen if hand_macs(**c) <= budget]
    if not fitting:  # depth alone cannot shrink the model under 200k
        with pytest.raises(ArchError, match="cannot be met"):
            scaled(budget, rule)
        return
    G = scaled(budget, rule)
    got = G.graph["scaling"]["values"]
    macs = hand_macs(**got)
    assert totals(G)["macs"] == macs <= budget
    assert max(hand_macs(**c) for c in fitting) == macs
    after = next(c for c in seen[seen.index(got) if got in seen else 0:] if c != got and hand_macs(**c) >= macs)
    assert hand_macs(**after) > budget
    assert G.graph["scaling"]["next"]["values"] == after


@pytest.mark.parametrize("rule", ["fast", "compound"])
def test_flop_counter_agrees_within_and_over_the_budget(rule):
    G = scaled(250_000, rule)
    within, after = G.graph["scaling"]["values"], G.graph["scaling"]["next"]["values"]
    assert torch_macs(**within) == hand_macs(**within) <= 250_000 < torch_macs(**after)


@pytest.mark.parametrize("rule, exps", [("fast", (0.1, 0.4, 0.05)),
                                        ("compound", tuple(math.log(x) / PHI for x in (1.2, 1.1, 1.15)))])
def test_the_rule_splits_a_fourfold_growth_as_the_paper_says(rule, exps):
    """Large bases so that rounding barely moves the values: at 4x the MACs, depth, width and resolution grow
    by 4^e_d, 4^e_w, 4^e_r (fast: 1.15x, 1.74x, 1.07x)."""
    base = {"width": 512, "depth": 40, "size": 128}
    G = scaled(4 * hand_macs(**base), rule, **base)
    got = G.graph["scaling"]["values"]
    s = G.graph["scaling"]["macs"] / hand_macs(**base)
    assert 3.8 < s <= 4
    for key, e in zip(("depth", "width", "size"), exps):
        assert math.log(got[key] / base[key]) == pytest.approx(e * math.log(4), abs=0.025), key


def test_a_budget_under_the_smallest_model_names_its_place():
    src = NET.format(scale="@scale(rule = width,\n       macs = 1k, width = width)", **BASE)
    with pytest.raises(ArchError) as e:
        archdsl.build(src)
    assert (e.value.span.line, e.value.span.col) == (2, 15)
    assert "1,000 MACs cannot be met" in e.value.message and "width = 8" in e.value.message


@pytest.mark.parametrize("args, words", [
    ("macs = 1M, width = wdth", "no parameter 'wdth'"),
    ("macs = 1M, rule = fats, width = width", "unknown rule"),
    ("macs = 1M, rule = depth, width = width", "grows only depth"),
    ("rule = fast, width = width", "needs a budget"),
    ("macs = -3, width = width", "positive number"),
    ("macs = 1M, width = width, depth = width", "named twice"),
    ("macs = 1M, width = 2 * width", "names model parameters"),
])
def test_bad_scale_arguments_are_errors_at_their_place(args, words):
    with pytest.raises(ArchError) as e:
        archdsl.build(NET.format(scale=f"@scale({args})", **BASE))
    assert words in e.value.message and e.value.span.line == 1


PATCHES = """
@scale(macs = choice(20k, 60k), rule = choice(fast, compound, width), width = dim, depth = depth)
model patchnet(dim = 16, depth = 2, patch = choice(1, 2, 4, 5), classes = 10) {
  input seq[1, 40]
  stem: conv(dim, k = patch, stride = patch, padding = 0)
  block: repeat depth { residual { dwconv(7) >> linear(2 * dim) >> gelu >> linear(dim) } }
  head: gap >> linear(classes)
}
"""


def patch_macs(dim, depth, patch, classes=10):
    n = 40 // patch  # tokens after the patchify stem
    return n * dim * patch + depth * n * (7 * dim + 4 * dim * dim) + dim * classes


def test_budget_rule_and_patch_size_are_search_dimensions():
    from archdsl.search.resolved import resolved_source
    from archdsl.search.trial_choices import RandomResolver

    program = archdsl.parse(PATCHES)
    G = archdsl.build(program)
    assert {"scale.macs", "scale.rule", "patch"} <= set(G.graph["space"])
    for patch in (1, 2, 4, 5):  # smaller patches, more tokens: the solver narrows the model to stay in budget
        G = archdsl.build(program, patch=patch, **{"scale.macs": 60_000, "scale.rule": "fast"})
        v = G.graph["scaling"]["values"]
        assert totals(G)["macs"] == patch_macs(v["dim"], v["depth"], patch) <= 60_000
        n = G.graph["scaling"]["next"]["values"]
        assert patch_macs(n["dim"], n["depth"], patch) > 60_000
    rng = random.Random(0)
    for _ in range(4):  # a trial's .arch holds the scaled values and no @scale: it rebuilds the same model
        resolver = RandomResolver(rng, {"scale.rule": "compound"})
        G = archdsl.build(program, resolver=resolver)
        text = resolved_source(program, resolver, G)
        assert "@scale" not in text and ir_hash(archdsl.build(archdsl.parse(text))) == ir_hash(G)


def test_the_command_line_scales_a_file_without_scale(tmp_path, capsys):
    from archdsl.cli import main

    f = tmp_path / "net.arch"
    f.write_text(NET.format(scale="", **BASE))
    assert main(["check", str(f), "--json", "--scale", "macs = 250k, rule = fast, width = width, depth = depth, "
                 "resolution = size"]) == 0
    out = capsys.readouterr().out
    assert '"macs": ' + str(scaled(250_000, "fast").graph["scaling"]["macs"]) in out
    assert main(["check", str(f), "--scale", "macs = 1k, width = width"]) == 2
    assert "<--scale>:1:" in capsys.readouterr().err


def test_the_example_space_meets_its_budget_at_every_point():
    """searchspaces/mnist1d_scaled.arch: each budget, rule and patch size lands at or under the budget with
    the next step over it (by the hand count), or is reported unmeetable (the depth rule cannot go below one
    block at patch 1); the default point compiles and runs."""
    from tests.test_searchspaces import ROOT

    program = archdsl.parse(ROOT / "mnist1d_scaled.arch")
    for budget in (60_000, 150_000):
        for rule in ("fast", "compound", "width", "depth"):
            for patch in (4, 2, 1, 5, 8):
                point = {"scale.macs": budget, "scale.rule": rule, "patch": patch}
                try:
                    G = archdsl.build(program, **point)
                except ArchError as e:
                    assert (rule, patch) == ("depth", 1) and "cannot be met" in e.message
                    continue
                v, n = G.graph["scaling"]["values"], G.graph["scaling"]["next"]["values"]
                assert totals(G)["macs"] == example_macs(patch=patch, **v) <= budget
                assert example_macs(patch=patch, **n) > budget, point
    module = archdsl.compile(archdsl.build(program))
    assert module(torch.randn(2, 1, 40)).shape == (2, 10)


def example_macs(dim, depth, patch, classes=10):
    n = 40 // patch
    return n * dim * patch + depth * n * (7 * dim + 6 * dim * dim) + dim * classes


def test_a_model_too_small_to_build_is_an_unmet_budget():
    """The resolution rule shrinks the image until the 7x7 unpadded conv no longer fits: the budget is unmet,
    said at its place, with the reason."""
    src = """
model net(size = 32) {
  input image[3, size, size]
  conv(8, k = 7, padding = 0) >> gap >> linear(10)
}
"""
    G = archdsl.build(archdsl.parse("@scale(macs = 100k, rule = resolution, resolution = size)" + src))
    side = G.graph["scaling"]["values"]["size"] - 6
    assert totals(G)["macs"] == side * side * 8 * 3 * 49 + 80 <= 100_000 < (side + 4) ** 2 * 8 * 3 * 49 + 80
    with pytest.raises(ArchError) as e:
        archdsl.build(archdsl.parse("@scale(macs = 500, rule = resolution, resolution = size)" + src))
    assert "does not build" in e.value.message and (e.value.span.line, e.value.span.col) == (1, 15)


def test_a_rule_without_one_of_its_dimensions_shares_the_rest_as_pycls_does():
    """`fast` on a model that names no resolution: pycls's "d1_w8" weights, depth s^(1/9), width s^(4/9)."""
    src = NET.format(scale="@scale(macs = 3M, rule = fast, width = width, depth = depth)", **BASE)
    got = archdsl.build(src).graph["scaling"]["values"]
    seen = [{"width": max(8, round(24 * s ** (4 / 9) / 8) * 8), "depth": max(1, round(3 * s ** (1 / 9))), "size": 20}
            for s in GRID]
    best = max((c for c in seen if hand_macs(**c) <= 3_000_000), key=lambda c: hand_macs(**c))
    assert {**got, "size": 20} == best
