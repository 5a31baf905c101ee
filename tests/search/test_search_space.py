"""The search space as Optuna sees it: every choice/int/float is a distribution under its stable name,
conditional dimensions appear only where their branch was taken, and trial.params rebuild the architecture
the trial trained. Also resolved_source(): a trial's architecture as a plain .arch file."""
from __future__ import annotations

import re

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from searchutil import S, finished, load_study, precreate, search, write_arch

import archdsl
from archdsl.frontend.choices import DefaultResolver
from archdsl.ir.printer import ir_hash
from archdsl.search.resolved import resolved_source

# MNIST-1D (sequences [1, 40]); one dimension of each kind and each naming rule:
#   model parameter (`width`, `depth`, `stepped`, `lr_scale`), block parameter default per instance
#   (`body0.cell.k`), assignment (`act`), inline (`head.choice@LINE:COL`), explicit name= (`stem_k`).
SPACE_1D = """
block cell(dim, k = choice(3, 5)) {
  conv(dim, k = k) >> relu
}

model net(width = choice(4, 8), depth = int(1, 2), stepped = int(8, 16, 4), lr_scale = float(0.01, 1.0, log = true)) {
  input seq[1, 40]
  stem: conv(width, k = choice(3, 5, name = "stem_k"), stride = 2) >> relu
  body: repeat depth { cell(width) }
  act = choice(relu, gelu)
  head: gap >> linear(choice(16, 32)) >> act >> linear(10)
}

search trained over mnist1d {
  maximize accuracy(epochs = 1)
  trials = 3
}

search names over mnist1d {
  minimize params
  trials = 8
}
"""

EXPECTED = {
    "width": CategoricalDistribution(("4", "8")),
    "depth": IntDistribution(1, 2),
    "stepped": IntDistribution(8, 16, step=4),
    "lr_scale": FloatDistribution(0.01, 1.0, log=True),
    "body0.cell.k": CategoricalDistribution(("3", "5")),
    "body1.cell.k": CategoricalDistribution(("3", "5")),
    "act": CategoricalDistribution(("relu", "gelu")),
    "stem_k": CategoricalDistribution(("3", "5")),
}


def _inline_name(text: str, marker: str, prefix: str) -> str:
    """`prefix.choice@LINE:COL` of the first `choice(` after `marker` in the written (dedented) text."""
    import textwrap

    text = textwrap.dedent(text).lstrip()
    at = text.index("choice(", text.index(marker))
    line = text.count("\n", 0, at) + 1
    col = at - (text.rfind("\n", 0, at) + 1) + 1
    return f"{prefix}.choice@{line}:{col}"


EXPECTED[_inline_name(SPACE_1D, "head:", "head")] = CategoricalDistribution(("16", "32"))


def _rebuild(program, params: dict):
    """The architecture of a trial, from its params (choice labels, numbers) through --set overrides."""
    return archdsl.build(program, resolver=DefaultResolver(dict(params)))


def test_every_construct_is_a_named_distribution(tmp_path):
    arch = write_arch(tmp_path, SPACE_1D)
    study = search(arch, tmp_path / "out", sampler="random", seed=1)  # the `names` search: no training
    trials = finished(study)
    assert len(trials) == 8 and all(t.state == S.COMPLETE for t in trials)

    # the names the compiler gives (archdsl check) are the names the sampler sees
    program = archdsl.parse(arch)
    default_names = set(archdsl.build(program).graph["space"])
    assert default_names == set(EXPECTED) - {"body1.cell.k"}

    seen = set()
    for t in trials:
        depth = t.params["depth"]
        expected = {n for n in EXPECTED if n != "body1.cell.k" or depth == 2}
        assert set(t.params) == expected, (t.number, t.params)
        for name, dist in t.distributions.items():
            assert dist == EXPECTED[name], (name, dist)
        seen |= set(t.params)
        # trial.params are enough to rebuild exactly the architecture the trial trained
        G = _rebuild(program, t.params)
        assert ir_hash(G) == t.user_attrs["ir_hash"], t.params
        assert G.graph["choices"]["width"] == int(t.params["width"])
    assert "body1.cell.k" in seen  # depth 2 was drawn at least once with this seed


def test_names_are_stable_between_studies_and_training_on_mnist1d(tmp_path):
    arch = write_arch(tmp_path, SPACE_1D)
    a = search(arch, tmp_path / "a", sampler="random", seed=2, trials=4)
    b = search(arch, tmp_path / "b", search="trained", sampler="tpe", seed=3)
    names = lambda s: {n for t in s.trials for n in t.params}  # noqa: E731
    assert names(a) - {"body1.cell.k"} == names(b) - {"body1.cell.k"} == set(EXPECTED) - {"body1.cell.k"}
    assert [t.state for t in b.trials] == [S.COMPLETE] * 3
    for t in b.trials:  # trained for the one epoch asked, on MNIST-1D's validation split
        assert len(t.user_attrs["val_curve"]) == 1 and 0.0 <= t.value <= 1.0
        assert t.value == t.user_attrs["accuracy"]


COND = """
model net(kind = choice("conv", "pool"), width = choice(4, 8)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  if kind == "conv" {
    k = choice(3, 5, name = "k")
    body: conv(width, k = k) >> relu
  } else {
    body: gelu >> conv(width, k = 1)
  }
  head: gap >> linear(10)
}

search cond over digits {
  minimize params
  trials = 6
}
"""


def test_conditional_dimension_only_in_its_branch(tmp_path):
    arch = write_arch(tmp_path, COND)
    out = tmp_path / "out"
    # both branches for sure (the two first trials), then the sampler's own picks
    precreate(out, "cond", ["minimize"], [{"kind": '"conv"', "width": "8", "k": "5"}, {"kind": '"pool"', "width": "4"}])
    study = search(arch, out, sampler="random", seed=0)
    trials = finished(study)
    assert len(trials) == 6
    kinds = set()
    for t in trials:
        assert t.state == S.COMPLETE, t.user_attrs
        kinds.add(t.params["kind"])
        if t.params["kind"] == '"conv"':
            assert set(t.params) == {"kind", "width", "k"}
            assert t.distributions["k"] == CategoricalDistribution(("3", "5"))
        else:
            assert set(t.params) == {"kind", "width"}, t.params
        assert ir_hash(_rebuild(archdsl.parse(arch), t.params)) == t.user_attrs["ir_hash"]
    assert kinds == {'"conv"', '"pool"'}
    assert load_study(out, "cond").trials[0].params["k"] == "5"


# ----- resolved_source

RESOLVE = """
block cell(dim, k = choice(3, 5)) {
  conv(dim, k = k) >> relu
}
block pair(dim) { conv(dim, k = 3) >> relu >> conv(dim, k = 1) }

model net(width = choice(4, 8),
          mixer = choice(conv(8, k = choice(3, 5, name = "inner")), { conv(8, k = 3) >> gelu }, pair(8), relu),
          depth = int(1, 3), scale = float(0.5, 2.0), hidden = 16) {
  input img[1, 8, 8]
  stem: conv(width, k = choice(1, 3, name = "stem_k")) >> relu
  mix: conv(8, k = 1) >> mixer
  body: repeat depth { cell(8) }
  tail: conv(8, k = choice(1, 3, name = "stem_k"))
  head: gap >> linear(choice(16, 32)) >> relu >> linear(hidden) >> linear(10)
}
"""

CASES = [
    {},
    {"width": 8, "mixer": 'conv(8, k = choice(3, 5, name = "inner"))', "inner": 5, "stem_k": 3},
    {"mixer": "{...}", "depth": 2, "body0.cell.k": 5, "body1.cell.k": 5, "scale": 1.25},
    {"mixer": "pair(8)", "HEAD": 32, "hidden": 24},
    {"mixer": "relu", "depth": 3, "body0.cell.k": 5, "body1.cell.k": 5, "body2.cell.k": 5},
]


def _choice_calls(text: str) -> list:
    return re.findall(r"\b(?:choice|int|float)\s*\(", text)


@pytest.mark.parametrize("overrides", CASES, ids=[str(i) for i in range(len(CASES))])
def test_resolved_source_substitutes_the_option_text(tmp_path, overrides):
    arch = write_arch(tmp_path, RESOLVE)
    program = archdsl.parse(arch)
    overrides = dict(overrides)
    if "HEAD" in overrides:
        overrides[_inline_name(RESOLVE, "head:", "head")] = overrides.pop("HEAD")
    r = DefaultResolver(overrides)  # (a block literal option is picked by its label "{...}")
    G = archdsl.build(program, resolver=r)
    text = resolved_source(program, r, G)
    assert _choice_calls(text) == [], text
    again = archdsl.build(archdsl.parse(text, file=str(tmp_path / "resolved.arch")))
    assert ir_hash(again) == ir_hash(G), text
    start = text.index("model net(")
    model_line = " ".join(text[start:text.index(") {\n", start)].split())  # the header, on one line
    if overrides.get("mixer") == "{...}":
        assert "mixer = { conv(8, k = 3) >> gelu }" in model_line
    if overrides.get("mixer") == "pair(8)":
        assert "mixer = pair(8)" in model_line and "hidden = 24" in model_line
        assert "linear(32)" in text
    if overrides.get("mixer", "").startswith("conv(8, k = choice"):
        assert "mixer = conv(8, k = 5)" in model_line
        assert "conv(width, k = 3)" in text and "conv(8, k = 3)" in text  # both uses of stem_k
    if not overrides:
        assert "mixer = conv(8, k = 3)" in model_line and "width = 4" in model_line and "depth = 1" in model_line
        assert "scale = 0.5" in model_line


def test_resolved_source_keeps_one_value_per_block_parameter(tmp_path):
    """A block parameter taking different values in different instances has no single text: the result
    keeps the first one, and a rebuild shows it (what the report's exact_resolution reports)."""
    arch = write_arch(tmp_path, RESOLVE)
    program = archdsl.parse(arch)
    r = DefaultResolver({"depth": 2, "body0.cell.k": 3, "body1.cell.k": 5})
    G = archdsl.build(program, resolver=r)
    text = resolved_source(program, r, G)
    assert "block cell(dim, k = 3)" in text
    assert ir_hash(archdsl.build(archdsl.parse(text, file="<resolved>"))) != ir_hash(G)


def test_trial_arch_attr_is_the_resolved_source(tmp_path):
    arch = write_arch(tmp_path, COND)
    out = tmp_path / "out"
    precreate(out, "cond", ["minimize"], [{"kind": '"conv"', "width": "8", "k": "5"}, {"kind": '"pool"', "width": "4"}])
    study = search(arch, out, trials=2)
    conv, pool = study.trials
    assert "kind = \"conv\"" in conv.user_attrs["arch"] and "k = 5" in conv.user_attrs["arch"]
    assert "kind = \"pool\"" in pool.user_attrs["arch"]
    for t in (conv, pool):
        assert _choice_calls(t.user_attrs["arch"]) == []
        G = archdsl.build(archdsl.parse(t.user_attrs["arch"], file=f"<trial {t.number}>"))
        assert ir_hash(G) == t.user_attrs["ir_hash"]
