"""Elaboration semantics: every expected shape, parameter count, MAC count and name is computed by hand."""
from __future__ import annotations

import pytest

import archdsl
from archdsl.errors import ArchError
from archdsl.frontend.elaborate import eval_override
from archdsl.frontend.values import OpValue
from archdsl.ir.graph import inputs, totals


def build(src, **overrides):
    return archdsl.build(archdsl.parse(src), **overrides)


def ops(G):
    """(name, op) of every node but input/output, in insertion order."""
    return [(n, d["op"]) for n, d in G.nodes(data=True) if d["op"] not in ("input", "output")]


def out_of(G):
    return inputs(G, G.graph["output"])[0]


def shape(G, node):
    return G.nodes[node]["shape"]


# ---- chains --------------------------------------------------------------------------------------------

def test_sequential_chain_shapes_params_macs():
    G = build("""model m() {
  input image[3, 16, 16]
  conv(8, k = 3) >> relu >> conv(16, k = 3, stride = 2) >> bn
}""")
    assert ops(G) == [("conv", "conv"), ("relu", "relu"), ("conv_1", "conv"), ("bn", "bn")]
    assert inputs(G, "conv") == ["image"] and inputs(G, "relu") == ["conv"]
    assert inputs(G, "conv_1") == ["relu"] and inputs(G, "bn") == ["conv_1"] and out_of(G) == "bn"
    assert shape(G, "conv") == (8, 16, 16)  # odd k pads (k-1)/2 by default: same size
    assert shape(G, "conv_1") == (16, 8, 8)  # (16 + 2 - 3) // 2 + 1 = 8
    assert G.nodes["conv"]["params"] == 8 * 3 * 9 + 8  # 224
    assert G.nodes["conv_1"]["params"] == 16 * 8 * 9 + 16  # 1168
    assert G.nodes["bn"]["params"] == 32
    assert G.nodes["conv"]["macs"] == 8 * 16 * 16 * 3 * 9
    assert G.nodes["conv_1"]["macs"] == 16 * 8 * 8 * 8 * 9
    assert totals(G) == {"params": 224 + 1168 + 32, "macs": 8 * 256 * 27 + 16 * 64 * 72}
    assert G.graph["input"] == "image" and shape(G, "output") == (16, 8, 8)


def test_chain_across_statements_continues_from_the_current_tensor():
    G = build("model m() { input x[4, 8]\n conv(6)\n relu\n linear(2) }")
    assert inputs(G, "relu") == ["conv"] and inputs(G, "linear") == ["relu"]
    assert shape(G, "linear") == (2, 8)


def test_residual_adds_the_input():
    G = build("model m() { input x[4, 8, 8]\n stem: conv(8)\n residual { dwconv(3) >> relu } }")
    assert ops(G)[-1] == ("add", "add")
    assert inputs(G, "add") == ["stem.conv", "relu"]  # x + body(x), the input first
    assert inputs(G, "dwconv") == ["stem.conv"]
    assert shape(G, "add") == (8, 8, 8) and out_of(G) == "add"


@pytest.mark.parametrize("mode, op, want", [("sum", "add", (8, 6, 6)), ("concat", "concat", (16, 6, 6)),
                                            ("mul", "mul", (8, 6, 6))])
def test_parallel_merges(mode, op, want):
    G = build(f"""model m() {{
  input x[3, 6, 6]
  parallel({mode}) {{ conv(8, k = 3) }} {{ conv(8, k = 1) >> relu }}
}}""")
    assert G.nodes[op]["op"] == op
    assert inputs(G, op) == ["conv", "relu"]  # branch order is argument order
    assert inputs(G, "conv") == ["x"] and inputs(G, "conv_1") == ["x"]  # every branch sees the input
    assert shape(G, op) == want


def test_parallel_concat_of_three_branches_with_different_channels():
    G = build("model m() { input x[3, 6]\n parallel(concat) { conv(2) } { conv(5) } { } }")
    assert inputs(G, "concat") == ["conv", "conv_1", "x"]  # an empty branch is the identity
    assert shape(G, "concat") == (2 + 5 + 3, 6)


def test_parallel_default_is_sum_and_mul_broadcasts_a_gate():
    G = build("model m() { input x[4, 5, 5]\n parallel { relu } { gelu } }")
    assert G.nodes["add"]["op"] == "add"
    G = build("""model m() { input x[4, 5, 5]
  parallel(mul) { relu } { gap >> linear(4) >> sigmoid >> reshape([4, 1, 1]) } }""")
    assert shape(G, "mul") == (4, 5, 5) and inputs(G, "mul") == ["relu", "reshape"]


def test_parallel_sum_of_the_same_tensor_is_one_edge_with_two_args():
    G = build("model m() { input x[4, 5]\n parallel(sum) { } { } }")
    assert inputs(G, "add") == ["x", "x"]
    assert G.edges["x", "add"]["args"] == (0, 1)


# ---- labels and refs -----------------------------------------------------------------------------------

def test_labels_scope_names_and_refs_make_a_unet_skip():
    G = build("""model unet() {
  input x[4, 8, 8]
  enc: conv(8, k = 3) >> relu
  down: maxpool(2) >> conv(16, k = 3)
  up: upsample(2) >> conv(8, k = 1) >> concat($enc) >> conv(4, k = 3)
}""")
    assert [n for n, _ in ops(G)] == ["enc.conv", "enc.relu", "down.maxpool", "down.conv", "up.upsample", "up.conv",
                                      "up.concat", "up.conv_1"]
    assert shape(G, "down.conv") == (16, 4, 4)
    assert shape(G, "up.upsample") == (16, 8, 8)
    assert inputs(G, "up.concat") == ["up.conv", "enc.relu"]  # current first, then $enc
    assert shape(G, "up.concat") == (16, 8, 8)
    assert shape(G, "up.conv_1") == (4, 8, 8)
    assert G.nodes["up.conv_1"]["params"] == 4 * 16 * 9 + 4


def test_chain_can_start_from_a_ref():
    G = build("model m() { input x[4, 8]\n a: conv(6)\n b: relu\n $a >> gelu\n add($b) }")
    assert inputs(G, "gelu") == ["a.conv"]
    assert inputs(G, "add") == ["gelu", "b.relu"]


def test_labelled_result_can_be_bound_and_used():
    G = build("model m() { input x[4, 8]\n a: conv(6)\n s = $a\n relu\n concat(s) }")
    assert inputs(G, "concat") == ["relu", "a.conv"] and shape(G, "concat") == (12, 8)


def test_label_of_a_loop_is_its_last_result():
    G = build("model m() { input x[4, 8]\n s: for i in 0..2 { conv(4) }\n relu >> concat($s) }")
    assert inputs(G, "concat") == ["relu", "s1.conv"]


# ---- loops ---------------------------------------------------------------------------------------------

def test_for_over_a_range_and_a_list():
    G = build("model m() { input x[4, 8]\n for i in 1..3 { linear(i * 10) }\n for c in [5, 7] { linear(c) } }")
    assert [(n, shape(G, n)) for n, _ in ops(G)] == [
        ("linear", (10, 8)), ("linear_1", (20, 8)), ("linear_2", (5, 8)), ("linear_3", (7, 8))]


def test_labelled_loops_give_scopes():
    G = build("""model m() {
  input x[4, 8]
  stage: for i in 0..3 {
    if i > 0 { down: conv(4, k = 2, stride = 2, padding = 0) }
    block: repeat 2 { relu }
  }
}""")
    names = [n for n, _ in ops(G)]
    assert names == ["stage0.block0.relu", "stage0.block1.relu",
                     "stage1.down.conv", "stage1.block0.relu", "stage1.block1.relu",
                     "stage2.down.conv", "stage2.block0.relu", "stage2.block1.relu"]
    assert shape(G, "stage2.block1.relu") == (4, 2)


def test_labelled_for_over_a_list():
    G = build("model m() { input x[4, 8]\n s: for c in [3, 5] { linear(c) } }")
    assert [(n, shape(G, n)) for n, _ in ops(G)] == [("s0.linear", (3, 8)), ("s1.linear", (5, 8))]


def test_repeat_and_zero_repeat():
    G = build("model m(n = 3) { input x[4, 8]\n repeat n { linear(4) >> relu }\n repeat 0 { conv(99) } }")
    assert [n for n, _ in ops(G)] == ["linear", "relu", "linear_1", "relu_1", "linear_2", "relu_2"]
    assert totals(G)["params"] == 3 * (4 * 4 + 4)


def test_loop_variable_and_string_join():
    G = build("model m() { input x[4, 5, 5]\n for i in 0..2 { dcls(3, 2, share = \"stage\" + i) } }")
    assert G.nodes["dcls"]["attrs"]["share"] == "stage0" and G.nodes["dcls_1"]["attrs"]["share"] == "stage1"


# ---- conditionals and scoping --------------------------------------------------------------------------

@pytest.mark.parametrize("a, op", [(1, "relu"), (2, "gelu"), (3, "silu"), (9, "tanh")])
def test_if_else_if_chain(a, op):
    G = build(f"""model m(a = {a}) {{
  input x[4]
  if a == 1 {{ relu }} else if a == 2 {{ gelu }} else if a == 3 {{ silu }} else {{ tanh }}
}}""")
    assert [o for _, o in ops(G)] == [op]


def test_if_without_else_and_false_condition():
    G = build("model m() { input x[4]\n if 1 > 2 { relu }\n if true and not false { gelu } }")
    assert [o for _, o in ops(G)] == ["gelu"]


def test_assignment_in_if_and_loops_is_visible_after_python_scoping():
    G = build("""model m() {
  input x[4, 8]
  c = 2
  if true { c = 6 }
  for i in 0..3 { last = i }
  repeat 2 { c = c + 1 }
  conv(c + last)
}""")
    assert shape(G, "conv") == (6 + 2 + 2, 8)


def test_block_body_does_not_see_callers_locals():
    src = """block b() { conv(c) }
model m() { input x[4, 8]\n c = 3\n b }"""
    with pytest.raises(ArchError, match="unknown name 'c'"):
        build(src)


def test_block_assignments_do_not_leak_to_the_caller():
    src = "block b() { c = 3; relu }\nmodel m() { input x[4, 8]\n b\n conv(c) }"
    with pytest.raises(ArchError, match="unknown name 'c'"):
        build(src)


# ---- blocks --------------------------------------------------------------------------------------------

def test_block_call_scope_and_parameters():
    G = build("""block pair(c, act = relu) { conv(c) >> act }
model m() { input x[4, 8]\n pair(6)\n pair(3, act = gelu) }""")
    assert ops(G) == [("pair.conv", "conv"), ("pair.act", "relu"), ("pair_1.conv", "conv"), ("pair_1.act", "gelu")]
    assert shape(G, "pair.conv") == (6, 8) and shape(G, "pair_1.conv") == (3, 8)


def test_block_defaults_reference_earlier_params():
    src = """block cb(dim, k = 7, mixer = dwconv(k), hidden = 4 * dim) {
  residual { mixer >> linear(hidden) >> linear(dim) }
}
model m(kk = 3) { input x[4, 16]\n cb(4)\n cb(4, k = kk)\n cb(4, mixer = dwconv(5, dilation = 2), hidden = 2) }"""
    G = build(src)
    assert G.nodes["cb.mixer"]["attrs"]["k"] == (7,)
    assert G.nodes["cb_1.mixer"]["attrs"]["k"] == (3,)
    assert G.nodes["cb_2.mixer"]["attrs"]["k"] == (5,) and G.nodes["cb_2.mixer"]["attrs"]["dilation"] == (2,)
    assert shape(G, "cb.linear") == (16, 16) and shape(G, "cb_2.linear") == (2, 16)
    assert G.nodes["cb.mixer"]["params"] == 4 * 7 + 4


def test_nested_blocks_and_hierarchical_names():
    G = build("""block convnext_block(dim, k = 7, mixer = dwconv(k)) {
  residual { mixer >> ln(eps = 1e-6) >> linear(4 * dim) >> gelu >> linear(dim) >> layerscale(1e-6) }
}
model m() { input x[8, 8, 8]
  stage: for i in 0..2 { block: repeat 2 { convnext_block(8) } }
}""")
    assert "stage1.block1.convnext_block.mixer" in G
    assert inputs(G, "stage0.block1.convnext_block.add") == ["stage0.block0.convnext_block.add",
                                                             "stage0.block1.convnext_block.layerscale"]
    per_block = (8 * 49 + 8) + 16 + (8 * 32 + 32) + (32 * 8 + 8) + 8
    assert totals(G)["params"] == 4 * per_block
    assert G.nodes["stage0.block0.convnext_block.ln"]["attrs"]["eps"] == 1e-6


def test_block_with_too_many_or_unknown_args():
    with pytest.raises(ArchError, match=r"takes 1 arguments, got 2"):
        build("block b(c) { conv(c) }\nmodel m() { input x[4]\n b(1, 2) }")
    with pytest.raises(ArchError, match="has no parameter 'cc'") as e:
        build("block b(c) { conv(c) }\nmodel m() { input x[4]\n b(cc = 1) }")
    assert e.value.hint == "did you mean 'c'?"
    with pytest.raises(ArchError, match="missing argument 'c'"):
        build("block b(c) { conv(c) }\nmodel m() { input x[4]\n b }")


def test_recursive_block_is_an_error():
    with pytest.raises(ArchError, match="calls itself too deeply"):
        build("block b() { relu >> b }\nmodel m() { input x[4]\n b }")


# ---- ops and blocks as values --------------------------------------------------------------------------

def test_op_values_and_calling_them_with_more_args():
    G = build("""model m(k = 3) {
  input x[4, 8, 8]
  mixer = dwconv(k)
  mixer
  mixer(dilation = 2)
  mixer(5)
}""")
    assert [n for n, _ in ops(G)] == ["mixer", "mixer_1", "mixer_2"]  # named after the variable
    a = [G.nodes[n]["attrs"] for n in ("mixer", "mixer_1", "mixer_2")]
    assert (a[0]["k"], a[0]["dilation"]) == ((3, 3), (1, 1))
    assert (a[1]["k"], a[1]["dilation"]) == ((3, 3), (2, 2))
    assert G.nodes["mixer_2"]["attrs"]["stride"] == (5, 5)  # the 2nd positional argument of dwconv is stride
    assert shape(G, "mixer_2") == (4, 2, 2)  # (8 + 2 - 3) // 5 + 1


def test_block_values_bound_to_names():
    G = build("block b(c) { conv(c) }\nmodel m() { input x[4, 8, 8]\n v = b(6)\n v >> v }")
    assert [n for n, _ in ops(G)] == ["v.conv", "v_1.conv"]
    assert G.nodes["v_1.conv"]["params"] == 6 * 6 + 6


def test_block_literals_as_values():
    G = build("model m() { input x[4, 8, 8]\n body = { conv(8) >> relu }\n body >> body }")
    assert [o for _, o in ops(G)] == ["conv", "relu", "conv", "relu"]
    # applied through a variable, a literal's nodes live under the variable's name (docs/language.md)
    assert [n for n, _ in ops(G)] == ["body.conv", "body.relu", "body_1.conv", "body_1.relu"]
    assert G.nodes["body.conv"]["params"] == 4 * 8 + 8 and G.nodes["body_1.conv"]["params"] == 8 * 8 + 8


def test_block_literal_sees_the_variables_where_it_was_written():
    G = build("""block apply(f) { f >> f }
model m() { input x[4, 8]\n c = 5\n apply({ linear(c) }) }""")
    assert [shape(G, n) for n, _ in ops(G)] == [(5, 8), (5, 8)]


def test_group_in_a_chain_runs_in_place():
    G = build("model m() { input x[4, 8]\n relu >> { linear(3) >> gelu } >> silu }")
    assert [o for _, o in ops(G)] == ["relu", "linear", "gelu", "silu"]
    assert inputs(G, "silu") == ["gelu"]


def test_list_of_ops_applies_in_order():
    G = build("model m() { input x[4, 8]\n layers = [linear(3), relu, linear(2)]\n layers }")
    assert [(o, shape(G, n)) for n, o in ops(G)] == [("linear", (3, 8)), ("relu", (3, 8)), ("linear", (2, 8))]


# ---- choices and overrides -----------------------------------------------------------------------------

SPACE = """block inner(c, k = choice(3, 5)) { dwconv(k) }
model m(mixer = choice(poolmix(3), dwconv(3), poolmix, { relu >> gelu }), width = int(2, 8, 2),
        drop = float(0.0, 0.5), classes = 10) {
  input x[4, 8, 8]
  mixer
  stage: for i in 0..2 { inner(4) }
  conv(width)
  head: gap >> linear(classes)
}"""


def test_choice_defaults_are_first_option_and_low_bound():
    G = build(SPACE)
    assert G.nodes["mixer"]["op"] == "poolmix" and G.nodes["mixer"]["attrs"]["k"] == 3
    assert shape(G, "conv") == (2, 8, 8)
    assert G.graph["choices"]["drop"] == 0.0
    assert G.graph["choices"]["width"] == 2
    assert G.nodes["stage0.inner.dwconv"]["attrs"]["k"] == (3, 3)
    assert G.graph["space"] == {
        "mixer": "choice(poolmix(3), dwconv(3), poolmix, {...})", "width": "int(2, 8, step=2)",
        "drop": "float(0.0, 0.5)", "stage0.inner.k": "choice(3, 5)", "stage1.inner.k": "choice(3, 5)"}


def test_override_plain_model_parameter():
    G = build(SPACE, classes=7)
    assert shape(G, "head.linear") == (7,)


@pytest.mark.parametrize("value, op, k", [("poolmix(3)", "poolmix", 3), ("dwconv(3)", "dwconv", (3, 3)),
                                          ("poolmix", "poolmix", 3)])
def test_override_choice_by_label_text(value, op, k):
    G = build(SPACE, mixer=value)
    assert G.nodes["mixer"]["op"] == op and G.nodes["mixer"]["attrs"]["k"] == k


def test_override_choice_by_label_of_a_block_literal():
    G = build(SPACE, mixer="{...}")
    assert [o for n, o in ops(G)][:2] == ["relu", "gelu"]


def test_override_choice_by_value():
    program = archdsl.parse(SPACE)
    value = eval_override(program, "dwconv(3)")
    assert value == OpValue("dwconv", (3,))
    G = archdsl.build(program, mixer=value)
    assert G.nodes["mixer"]["op"] == "dwconv"
    G = archdsl.build(program, **{"stage1.inner.k": 5})
    assert G.nodes["stage0.inner.dwconv"]["attrs"]["k"] == (3, 3)
    assert G.nodes["stage1.inner.dwconv"]["attrs"]["k"] == (5, 5)


def test_override_int_and_float_ranges():
    G = build(SPACE, width=8, drop=0.25)
    assert shape(G, "conv") == (8, 8, 8) and G.graph["choices"]["drop"] == 0.25
    with pytest.raises(ArchError, match=r"outside the range of 'width': \[2, 8\]"):
        build(SPACE, width=10)
    with pytest.raises(ArchError, match="in steps of 2"):
        build(SPACE, width=3)
    with pytest.raises(ArchError, match="takes a number"):
        build(SPACE, width="big")
    with pytest.raises(ArchError, match="outside the range of 'drop'"):
        build(SPACE, drop=0.9)


def test_override_outside_the_choice_is_an_error():
    with pytest.raises(ArchError, match="is not one of the choices for 'mixer'") as e:
        build(SPACE, mixer="gelu")
    assert "poolmix(3), dwconv(3), poolmix, {...}" in e.value.message
    assert e.value.span.line == 2  # the choice's place in the file
    with pytest.raises(ArchError, match="not one of the choices"):
        build(SPACE, **{"stage0.inner.k": 7})


def test_unknown_override_name_with_did_you_mean():
    with pytest.raises(ArchError, match="no model parameter or search choice is called 'widht'") as e:
        build(SPACE, widht=4)
    assert e.value.hint == "did you mean 'width'?"
    with pytest.raises(ArchError) as e:
        build(SPACE, **{"stage0.inner.kk": 5})
    assert "stage0.inner.k" in e.value.hint


def test_override_model_parameter_without_default():
    src = "model m(c) { input x[4, 8]\n conv(c) }"
    with pytest.raises(ArchError, match="'c' has no default"):
        build(src)
    assert shape(build(src, c=3), "conv") == (3, 8)


def test_override_values_parsed_like_set():
    program = archdsl.parse("model m(dims = [1, 2]) { input x[4, 8]\n conv(dims[1]) }")
    G = archdsl.build(program, dims=eval_override(program, "[5, 6 - 1 + 1]"))
    assert shape(G, "conv") == (6, 8)


def test_choice_explicit_default():
    G = build("model m(k = choice(3, 5, 7, default = 5), w = int(1, 9, default = 4)) { input x[4, 9]\n"
              " dwconv(k) >> linear(w) }")
    assert G.nodes["dwconv"]["attrs"]["k"] == (5,) and shape(G, "linear") == (4, 9)
    with pytest.raises(ArchError, match="not one of the choices"):
        build("model m(k = choice(3, 5, default = 4)) { input x[4, 9] }")


def test_derived_choice_names():
    G = build("""block b(dim, k = choice(3, 5)) { w = int(1, 3); dwconv(k) >> linear(dim * w) }
model m(act = choice(relu, gelu)) {
  input x[4, 8]
  stage: for i in 0..2 { block: repeat 1 { b(4) } }
  a = float(0.1, 0.2)
  act >> dwconv(choice(3, 7))
}""")
    assert set(G.graph["space"]) == {
        "act",  # a model parameter's default: the parameter's name
        "stage0.block0.b.k", "stage1.block0.b.k",  # a block parameter's default: one per block instance
        "stage0.block0.b.w", "stage1.block0.b.w",  # an assignment: its hierarchical path
        "a",
        "choice@6:17",  # anything else: path.choice@line:col (line 6, column 17)
    }


def test_inline_choice_inside_a_block_is_named_by_path_and_position():
    G = build("block b() { dwconv(choice(3, 5)) }\nmodel m() { input x[4, 8]\n s: for i in 0..2 { b } }")
    assert set(G.graph["space"]) == {"s0.b.choice@1:20", "s1.b.choice@1:20"}


def test_explicit_name_shares_one_dimension():
    src = """block b(k = choice(3, 5, name = "k")) { dwconv(k) }
model m() { input x[4, 8]\n s: for i in 0..3 { b }\n dwconv(choice(3, 5, name = "k")) }"""
    G = build(src)
    assert G.graph["space"] == {"k": "choice(3, 5)"}
    G = build(src, k=5)
    ks = [d["attrs"]["k"] for _, d in G.nodes(data=True) if d["op"] == "dwconv"]
    assert ks == [(5,)] * 4


def test_same_name_with_different_ranges_is_an_error():
    src = """block b(k = choice(3, 5, name = "k")) { dwconv(k) }
model m() { input x[4, 8]\n b\n dwconv(choice(3, 7, name = "k")) }"""
    with pytest.raises(ArchError, match="declared twice with different ranges") as e:
        build(src)
    assert e.value.span.line == 4
    assert "choice(3, 5)" in e.value.message and "choice(3, 7)" in e.value.message


def test_choice_of_blocks_and_precisions():
    src = """block small() { linear(2) }
block big() { linear(8) }
model m(body = choice(small, big), p = choice(fp32, bf16)) { input x[4, 8]\n @precision(p) body }"""
    G = build(src)
    assert shape(G, "body.linear") == (2, 8) and G.nodes["body.linear"]["precision"] == "fp32"
    G = build(src, body="big", p="bf16")
    assert shape(G, "body.linear") == (8, 8) and G.nodes["body.linear"]["precision"] == "bf16"


def test_search_constructs_can_be_shadowed_by_variables():
    G = build("model m() { input x[4, 8]\n choice = 3\n linear(choice) }")
    assert shape(G, "linear") == (3, 8) and G.graph["space"] == {}


# ---- annotations ---------------------------------------------------------------------------------------

ANNOTATED = """@precision(fp16)
block inner(c) { conv(c) >> relu }
block outer(c) { conv(c) >> inner(c) >> @precision(int8) relu >> @layout(channels_last) { gelu >> silu } }
@precision(bf16)
model m() {
  input x[4, 8, 8]
  conv(4) >> outer(4) >> @precision(fp8) outer(4) >> @layout(channels_last) conv(4)
}"""


def test_precision_and_layout_inherited_innermost_wins():
    G = build(ANNOTATED)
    want = {
        "x": ("bf16", "channels_first"),
        "conv": ("bf16", "channels_first"),
        "outer.conv": ("bf16", "channels_first"),
        "outer.inner.conv": ("fp16", "channels_first"),  # the definition's own annotation beats the model's
        "outer.inner.relu": ("fp16", "channels_first"),
        "outer.relu": ("int8", "channels_first"),
        "outer.gelu": ("bf16", "channels_last"),
        "outer.silu": ("bf16", "channels_last"),
        "outer_1.conv": ("fp8", "channels_first"),  # call-site annotation applies to the block's body
        "outer_1.inner.conv": ("fp16", "channels_first"),  # ... but the definition's annotation wins
        "outer_1.inner.relu": ("fp16", "channels_first"),
        "outer_1.relu": ("int8", "channels_first"),
        "outer_1.gelu": ("fp8", "channels_last"),
        "outer_1.silu": ("fp8", "channels_last"),
        "conv_1": ("bf16", "channels_last"),
    }
    got = {n: (d["precision"], d["layout"]) for n, d in G.nodes(data=True) if n != "output"}
    assert got == want


def test_default_precision_and_layout():
    G = build("model m() { input x[4]\n linear(2) }")
    assert all(d["precision"] == "fp32" and d["layout"] == "channels_first" for _, d in G.nodes(data=True))


def test_precision_from_a_variable_and_all_precisions():
    for p in ("fp32", "bf16", "fp16", "int8", "fp8", "fp8_e4m3", "fp8_e5m2"):
        G = build(f"model m() {{ input x[4]\n q = {p}\n @precision(q) relu }}")
        assert G.nodes["relu"]["precision"] == p


# ---- input ranks ---------------------------------------------------------------------------------------

def test_1d_sequence_input():
    G = build("""model m() { input seq[2, 40]
  conv(8, k = 5, stride = 2, padding = 2) >> bn >> relu >> maxpool(2) >> gap >> linear(3) }""")
    assert shape(G, "conv") == (8, 20)  # (40 + 4 - 5) // 2 + 1
    assert shape(G, "maxpool") == (8, 10) and shape(G, "gap") == (8,) and shape(G, "linear") == (3,)
    assert G.nodes["conv"]["params"] == 8 * 2 * 5 + 8
    assert G.nodes["conv"]["macs"] == 8 * 20 * 2 * 5
    assert G.nodes["bn"]["params"] == 16 and G.nodes["linear"]["params"] == 8 * 3 + 3


def test_2d_image_input_with_groups_and_dilation():
    G = build("model m() { input image[6, 12, 10]\n conv(4, k = [3, 5], groups = 2, dilation = 2, bias = false) }")
    # H: 12 + 2*2 - 2*(3-1) - 1 + 1 = 12; W: 10 + 2*4 - 2*(5-1) - 1 + 1 = 10 (odd k keeps the size)
    assert shape(G, "conv") == (4, 12, 10)
    assert G.nodes["conv"]["params"] == 4 * 3 * 15
    assert G.nodes["conv"]["macs"] == 4 * 12 * 10 * 3 * 15


def test_3d_volume_input():
    G = build("model m() { input vol[1, 8, 8, 8]\n conv(4, k = 3, stride = 2, padding = 1) >> gap >> linear(2) }")
    assert shape(G, "conv") == (4, 4, 4, 4)  # (8 + 2 - 3) // 2 + 1 = 4
    assert G.nodes["conv"]["params"] == 4 * 27 + 4
    assert G.nodes["conv"]["macs"] == 4 * 64 * 27
    assert shape(G, "linear") == (2,)


def test_features_only_input_with_linear_layers():
    G = build("model mlp() { input x[40]\n linear(20) >> relu >> linear(10) >> ln }")
    assert [shape(G, n) for n, _ in ops(G)] == [(20,), (20,), (10,), (10,)]
    assert totals(G) == {"params": (40 * 20 + 20) + (20 * 10 + 10) + 20, "macs": 40 * 20 + 20 * 10}


def test_spatial_op_on_features_only_input_is_an_error():
    with pytest.raises(ArchError, match="needs a 1-D or 2-D or 3-D input"):
        build("model m() { input x[40]\n conv(4, k = 3) }")


# ---- the reference search-space features ---------------------------------------------------------------

def test_metaformer_block_with_block_literal_branches():
    G = build("""block meta_branch(dim, body, res_scale = false) {
  if res_scale { parallel(sum) { resscale(1.0) } { body } } else { residual { body } }
}
block mf(dim, mixer, norm = ln(bias = false), res_scale = false) {
  meta_branch(dim, { norm >> mixer }, res_scale)
  meta_branch(dim, { norm >> linear(2 * dim, bias = false) >> starrelu >> linear(dim, bias = false) }, res_scale)
}
model m() { input x[8, 4, 4]\n mf(8, poolmix(3))\n mf(8, mhsa(heads = 2), res_scale = true) }""")
    p = {n: d["params"] for n, d in G.nodes(data=True)}
    # block 1: ln 8 + poolmix 0 | ln 8 + 8*16 + starrelu 2 + 16*8
    assert sum(v for n, v in p.items() if n.startswith("mf.")) == 8 + 8 + 128 + 2 + 128
    # block 2: resscale 8 + ln 8 + mhsa (4 * 8 * 8 + 8 proj bias) | resscale 8 + ln 8 + 8*16 + 2 + 16*8
    assert sum(v for n, v in p.items() if n.startswith("mf_1.")) == 8 + 8 + 264 + 8 + 8 + 128 + 2 + 128
    assert G.nodes["mf_1.meta_branch.add"]["op"] == "add"
    assert inputs(G, "mf_1.meta_branch.add")[0] == "mf_1.meta_branch.resscale"


def test_named_choice_shared_by_block_instances_takes_the_same_option_in_each():
    # one dimension "op", but each instance evaluates the chosen option with its own `dim`
    src = """block b(dim) { choice(linear(dim), conv(dim, k = 3), name = "op") }
model m() { input x[4, 8]; b(8); b(16) }"""
    G = build(src)
    assert [(n, G.nodes[n]["attrs"]["out"]) for n, _ in ops(G)] == [("b.linear", 8), ("b_1.linear", 16)]
    G = build(src, op="conv(dim, k = 3)")
    assert [(o, G.nodes[n]["attrs"]["out"]) for n, o in ops(G)] == [("conv", 8), ("conv", 16)]
