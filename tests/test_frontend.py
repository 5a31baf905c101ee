"""Parsing: the grammar and the AST it gives, checked against hand-written expectations."""
from __future__ import annotations

from pathlib import Path

import pytest

import archdsl
from archdsl.errors import ArchError
from archdsl.frontend import ast as A
from archdsl.frontend.parse import parse_expr, parse_text
from archdsl.ir.graph import inputs


def expr(text):
    return parse_expr(text)


def const(text):
    e = expr(text)
    assert isinstance(e, A.Const), e
    return e.value


def model_body(src):
    program = archdsl.parse(src)
    return program.model().body


def build(src, **overrides):
    return archdsl.build(archdsl.parse(src), **overrides)


# ---- numbers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("3", 3), ("0", 0), ("0.5", 0.5), ("1e-6", 1e-6), ("1E3", 1000.0), ("2.5e-3", 0.0025),
    ("50k", 50_000), ("4M", 4_000_000), ("1G", 1_000_000_000), ("1.5k", 1500), ("2.5M", 2_500_000),
])
def test_number_literals(text, value):
    v = const(text)
    assert v == value
    assert type(v) is type(value)


def test_suffixed_numbers_are_ints():
    assert isinstance(const("50k"), int) and isinstance(const("1.5k"), int)
    assert isinstance(const("1e-6"), float)


def test_number_keeps_source_text():
    assert expr("50k").text == "50k"


def test_suffix_must_end_the_number():
    # `5kx` is not a number followed by a name: it is a syntax error, not 5000 * kx
    with pytest.raises(ArchError):
        parse_text("model m() { input x[4]\n y = 5kx }")


def test_huge_literal_is_an_error():
    with pytest.raises(ArchError, match="too large"):
        parse_text("model m() { input x[4]\n y = 1e400 }")
    with pytest.raises(ArchError, match="too large"):
        parse_text("model m() { input x[4]\n y = 1e308k }")


# ---- expressions ---------------------------------------------------------------------------------------

def test_arithmetic_precedence_and_associativity():
    e = expr("1 + 2 * 3")
    assert isinstance(e, A.BinOp) and e.op == "+" and e.right.op == "*"
    e = expr("8 - 2 - 1")  # left associative: (8 - 2) - 1
    assert e.op == "-" and isinstance(e.left, A.BinOp) and e.left.op == "-" and e.right.value == 1
    e = expr("2 ** 3 ** 2")  # right associative
    assert e.op == "**" and e.right.op == "**"
    e = expr("-2 ** 2")  # as in Python: -(2 ** 2)
    assert isinstance(e, A.Unary) and e.operand.op == "**"
    e = expr("a // 2 % 3")
    assert e.op == "%" and e.left.op == "//"


@pytest.mark.parametrize("text, want", [
    ("8 - 2", 6), ("8-2", 6), ("2 * 3 - 1", 5), ("2 ** 3", 8), ("2**-1", 0.5), ("7 // 2", 3), ("7 % 4", 3),
    ("7 / 2", 3.5), ("-3 + 1", -2), ("1 + 2 * 3 - 4", 3), ("(1 + 2) * 3", 9), ("2 ** 3 ** 2", 512),
    ("[1, 2][1] - 1", 1), ("max(3, 4) - min(1, 2)", 3), ("len([1, 2, 3])", 3), ("abs(-2)", 2), ("round(2.6)", 3),
    ("1 < 2 and 2 < 3", True), ("not 1 > 2", True), ("1 == 2 or 2 != 3", True), ("\"stage\" + 1", "stage1"),
    ("[1] + [2]", [1, 2]), ("[0] * 3", [0, 0, 0]), ("str(5)", "5"),
])
def test_expression_values(text, want):
    """Expressions evaluate like the hand-computed value (evaluated in a model parameter default)."""
    G = build(f"model m(v = {text}) {{ input x[4] }}")
    assert G is not None  # builds
    from archdsl.frontend.elaborate import eval_override

    got = eval_override(archdsl.parse("model m() { input x[4] }"), text)
    assert got == want and type(got) is type(want)


def test_subtraction_in_a_statement_is_not_a_new_statement():
    # `y = 8 - 2` must be one assignment (not `y = 8` then a chain `-2`)
    G = build("model m() { input x[4, 8]\n  y = 8 - 2\n  conv(y) }")
    assert G.nodes["conv"]["shape"] == (6, 8)
    G = build("model m() { input x[4, 8]\n  conv(2 ** 3) }")
    assert G.nodes["conv"]["shape"] == (8, 8)


def test_strings_booleans_lists():
    assert const('"abc"') == "abc"
    assert const("true") is True and const("false") is False
    e = expr("[1, 2, 3,]")  # trailing comma
    assert isinstance(e, A.ListExpr) and [i.value for i in e.items] == [1, 2, 3]
    assert isinstance(expr("[]"), A.ListExpr) and expr("[]").items == []


def test_call_with_positional_and_named_arguments():
    e = expr("conv(64, k = 3, stride = 2,)")
    assert isinstance(e, A.Call) and e.func == "conv"
    assert [a.value for a in e.args] == [64]
    assert list(e.kwargs) == ["k", "stride"] and e.kwargs["k"].value == 3
    assert e.text == "conv(64, k = 3, stride = 2,)"


def test_positional_after_named_is_an_error():
    with pytest.raises(ArchError, match="positional argument cannot follow"):
        expr("conv(k = 3, 64)")
    with pytest.raises(ArchError, match="given twice"):
        expr("conv(64, k = 3, k = 5)")


# ---- ranges --------------------------------------------------------------------------------------------

def test_range_end_is_not_eaten_by_the_number():
    body = model_body("model m() { input x[4]\n for i in 0..4 { relu } }")
    loop = body[1]
    assert isinstance(loop, A.For) and loop.var == "i"
    assert loop.start.value == 0 and loop.stop.value == 4


def test_range_with_expressions_and_list_loop():
    body = model_body("model m(n = 3) { input x[4]\n for i in 1..n + 1 { relu }\n for c in [8, 16] { relu } }")
    assert isinstance(body[1].stop, A.BinOp) and body[1].stop.op == "+"
    assert isinstance(body[2].start, A.ListExpr) and body[2].stop is None


def test_range_iterates_start_to_end_exclusive():
    G = build("model m() { input x[4]\n s: for i in 0..4 { linear(i + 1) } }")
    assert [G.nodes[f"s{i}.linear"]["shape"] for i in range(4)] == [(1,), (2,), (3,), (4,)]
    assert "s4.linear" not in G


# ---- comments, separators, statements ------------------------------------------------------------------

def test_comments_and_semicolons():
    src = """
# a leading comment
model m() {   # trailing comment
  input x[4, 8]; relu; gelu   # three statements on one line
  ;;                            # empty statements
  # conv(3)  commented out
  silu
}
"""
    body = model_body(src)
    assert [type(s).__name__ for s in body] == ["InputDecl", "Chain", "Chain", "Chain"]
    G = build(src)
    assert [G.nodes[n]["op"] for n in ("x", "relu", "gelu", "silu")] == ["input", "relu", "gelu", "silu"]
    assert "conv" not in G


def test_newlines_are_free():
    src = "model m(\n a = 1,\n b = 2\n) {\n input\n x[\n4,\n8]\n conv(\n 8\n)\n >>\n relu }"
    G = build(src)
    assert G.nodes["relu"]["shape"] == (8, 8)


def test_statement_kinds():
    body = model_body("""model m(k = 3) {
  input x[4, 8]
  y = 2
  lab: conv(4) >> relu
  for i in 0..2 { relu }
  rep: repeat 2 { relu }
  if k > 2 { relu } else if k > 1 { gelu } else { silu }
}""")
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["InputDecl", "Assign", "Labeled", "For", "Labeled", "If"]
    assert body[2].label == "lab" and isinstance(body[2].stmt, A.Chain) and len(body[2].stmt.elements) == 2
    assert isinstance(body[4].stmt, A.Repeat)
    chained_if = body[5]
    assert isinstance(chained_if.orelse[0], A.If) and chained_if.orelse[0].orelse  # else-if chain


def test_residual_parallel_refs_and_annotations():
    body = model_body("""model m() {
  input x[4, 8]
  a: relu
  residual { conv(4) >> relu }
  parallel(concat) { relu } { gelu } { silu }
  parallel { relu } { gelu }
  $a >> concat($a)
  @precision(bf16) @layout(channels_last) relu
}""")
    res, par, par_default, refs, ann = body[2].elements[0], body[3].elements[0], body[4].elements[0], body[5], body[6]
    assert isinstance(res, A.Residual) and len(res.body) == 1
    assert isinstance(par, A.Parallel) and par.mode == "concat" and len(par.branches) == 3
    assert par_default.mode == "sum"
    assert isinstance(refs.elements[0], A.Ref) and refs.elements[0].name == "a"
    call = refs.elements[1]
    assert isinstance(call, A.Call) and isinstance(call.args[0], A.Ref) and call.args[0].name == "a"
    outer = ann.elements[0]
    assert isinstance(outer, A.Annotated) and outer.annotation.name == "precision"
    assert isinstance(outer.element, A.Annotated) and outer.element.annotation.name == "layout"
    assert outer.element.element == A.Name(None, "relu")


def test_block_literals():
    body = model_body("model m() { input x[4, 8]\n body = { conv(8) >> relu }\n body >> { gelu } }")
    assign = body[1]
    assert isinstance(assign, A.Assign) and isinstance(assign.value, A.Group)
    assert isinstance(assign.value.body[0], A.Chain) and len(assign.value.body[0].elements) == 2
    assert isinstance(body[2].elements[1], A.Group)


def test_definitions_params_and_annotations():
    program = archdsl.parse("""
@precision(bf16) @layout(channels_last)
block b(dim, k = 7, mixer = dwconv(k),) { mixer }
model m() { input x[4, 8] }
""")
    b = program.blocks["b"]
    assert b.kind == "block" and [p.name for p in b.params] == ["dim", "k", "mixer"]
    assert b.params[0].default is None and b.params[1].default.value == 7
    assert isinstance(b.params[2].default, A.Call) and b.params[2].default.func == "dwconv"
    assert [a.name for a in b.annotations] == ["precision", "layout"]
    assert program.model().name == "m" and program.model().kind == "model"


def test_block_and_model_are_usable_as_labels():
    G = build("""model m() {
  input x[4]
  model: linear(3)
  block: repeat 2 { relu }
  stage: for i in 0..1 { block: repeat 1 { model: relu } }
}""")
    assert {"model.linear", "block0.relu", "block1.relu", "stage0.block0.model.relu"} <= set(G.nodes)


def test_unknown_definition_kind():
    with pytest.raises(ArchError) as e:
        parse_text("blok b() { relu }")
    assert "expected 'block' or 'model'" in e.value.message
    assert (e.value.span.line, e.value.span.col) == (1, 1)


def test_last_model_is_default_and_model_by_name():
    program = archdsl.parse("model a() { input x[4] }\nmodel b() { input y[5] }")
    assert program.model().name == "b"
    assert program.model("a").name == "a"
    with pytest.raises(ArchError, match="no model 'c'"):
        program.model("c")


def test_defined_twice():
    with pytest.raises(ArchError, match="defined twice") as e:
        archdsl.parse("block b() { relu }\nblock b() { gelu }\nmodel m() { input x[4] }")
    assert e.value.span.line == 2


def test_spans_are_one_based_and_name_the_file(tmp_path):
    path = tmp_path / "f.arch"
    path.write_text("model m() {\n  input x[4]\n  relu\n}\n")
    program = archdsl.parse(path)
    assert program.file == str(path)
    relu = program.model().body[1].elements[0]
    assert (relu.span.file, relu.span.line, relu.span.col) == (str(path), 3, 3)


def test_parse_accepts_text_path_and_path_string(tmp_path):
    path = tmp_path / "f.arch"
    path.write_text("model m() { input x[4] }")
    assert archdsl.parse(str(path)).models.keys() == {"m"}
    assert archdsl.parse(Path(path)).models.keys() == {"m"}
    assert archdsl.parse("model q() { input x[4] }").models.keys() == {"q"}
    with pytest.raises(ArchError, match="cannot read"):
        archdsl.parse(str(tmp_path / "missing.arch"))


# ---- imports -------------------------------------------------------------------------------------------

def test_import_relative_to_the_importing_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.arch").write_text(
        'import "more.arch"\nblock double(c) { conv(2 * c) >> base }\nmodel libmodel() { input z[3] }\n')
    (tmp_path / "lib" / "more.arch").write_text("block base() { relu }\n")
    main = tmp_path / "main.arch"
    main.write_text('import "lib/blocks.arch"\nmodel m() { input x[4, 8]\n  double(4) }\n')
    program = archdsl.parse(main)
    assert set(program.blocks) == {"double", "base"}
    assert set(program.models) == {"m"}  # the imported file's model is not imported
    assert len(program.imports) == 2
    G = archdsl.build(program)
    assert G.nodes["double_.conv"]["shape"] == (8, 8)
    assert G.nodes["double_.base.relu"]["op"] == "relu"


def test_imported_models_are_not_imported_so_no_clash(tmp_path):
    (tmp_path / "a.arch").write_text("block b() { relu }\nmodel m() { input q[2] }\n")
    main = tmp_path / "main.arch"
    main.write_text('import "a.arch"\nmodel m() { input x[4]\n  b }\n')
    program = archdsl.parse(main)
    assert list(program.models) == ["m"] and program.models["m"].file == str(main)
    G = archdsl.build(program)
    assert G.graph["input"] == "x" and G.nodes["b.relu"]["shape"] == (4,)


def test_diamond_import_loads_once(tmp_path):
    (tmp_path / "base.arch").write_text("block base() { relu }\n")
    (tmp_path / "l.arch").write_text('import "base.arch"\nblock left() { base }\n')
    (tmp_path / "r.arch").write_text('import "base.arch"\nblock right() { base }\n')
    main = tmp_path / "main.arch"
    main.write_text('import "l.arch"\nimport "r.arch"\nmodel m() { input x[4]\n left >> right }\n')
    program = archdsl.parse(main)
    assert set(program.blocks) == {"base", "left", "right"}
    assert len(program.imports) == 3


def test_import_cycle_is_an_error(tmp_path):
    (tmp_path / "a.arch").write_text('import "b.arch"\nblock ba() { relu }\nmodel m() { input x[4] }\n')
    (tmp_path / "b.arch").write_text('block bb() { relu }\nimport "a.arch"\n')
    with pytest.raises(ArchError, match="import cycle") as e:
        archdsl.parse(tmp_path / "a.arch")
    assert e.value.span.file == str(tmp_path / "b.arch")
    assert (e.value.span.line, e.value.span.col) == (2, 1)


def test_self_import_is_a_cycle(tmp_path):
    (tmp_path / "a.arch").write_text('block x() { relu }\nimport "a.arch"\nmodel m() { input x[4] }\n')
    with pytest.raises(ArchError, match="import cycle"):
        archdsl.parse(tmp_path / "a.arch")


def test_missing_import_is_an_error(tmp_path):
    main = tmp_path / "main.arch"
    main.write_text('model m() { input x[4] }\n\n   import "nope/missing.arch"\n')
    with pytest.raises(ArchError, match="cannot import 'nope/missing.arch'") as e:
        archdsl.parse(main)
    assert (e.value.span.file, e.value.span.line, e.value.span.col) == (str(main), 3, 4)
    assert "relative to the importing file" in e.value.hint


def test_syntax_error_in_imported_file_points_into_it(tmp_path):
    (tmp_path / "bad.arch").write_text("block b() {\n  relu >>\n}\n")
    main = tmp_path / "main.arch"
    main.write_text('import "bad.arch"\nmodel m() { input x[4] }\n')
    with pytest.raises(ArchError) as e:
        archdsl.parse(main)
    assert e.value.span.file == str(tmp_path / "bad.arch") and e.value.span.line == 3


def test_reference_models_parse_with_their_imports():
    root = Path(__file__).resolve().parents[1] / "searchspaces" / "models"
    program = archdsl.parse(root / "caformer_s18.arch")
    assert {"metaformer_block", "meta_branch", "sepconv_mixer", "mlp_head"} <= set(program.blocks)
    assert list(program.models) == ["caformer_s18"]


# ---- search section ------------------------------------------------------------------------------------

def test_search_section_is_parsed_and_kept():
    program = archdsl.parse("""
model m() { input x[4] }
search mixers over mnist1d {
  maximize accuracy(epochs = 20)
  minimize latency(batch = 1, device = cpu)
  constraint params < 50k
  trials = 100;
  @precision(bf16)
}
""")
    assert len(program.searches) == 1
    s = program.searches[0]
    assert s.name == "mixers" and s.dataset == A.Name(None, "mnist1d")
    assert [i.kind for i in s.items] == ["maximize", "minimize", "constraint", "setting", "annotation"]
    acc = s.items[0].value
    assert acc.func == "accuracy" and acc.kwargs["epochs"].value == 20
    lat = s.items[1].value
    assert lat.kwargs["batch"].value == 1 and lat.kwargs["device"] == A.Name(None, "cpu")
    c = s.items[2].value
    assert c.op == "<" and c.left == A.Name(None, "params") and c.right.value == 50_000
    assert s.items[3].name == "trials" and s.items[3].value.value == 100
    assert s.items[4].value.name == "precision"
    # the model still builds; the search section does not change it
    assert archdsl.build(program).nodes["x"]["shape"] == (4,)


def test_anonymous_search_without_dataset():
    program = archdsl.parse("search { minimize params }\nmodel m() { input x[4] }")
    assert program.searches[0].name == "search" and program.searches[0].dataset is None


def test_searches_of_imported_files_are_not_kept(tmp_path):
    (tmp_path / "lib.arch").write_text("block b() { relu }\nsearch s { minimize params }\n")
    main = tmp_path / "main.arch"
    main.write_text('import "lib.arch"\nmodel m() { input x[4] }\nsearch mine { maximize accuracy }\n')
    assert [s.name for s in archdsl.parse(main).searches] == ["mine"]


def test_ref_as_argument_builds_an_edge():
    G = build("model m() { input x[4, 8]\n a: conv(6)\n b: relu >> concat($a) }")
    assert inputs(G, "b.concat") == ["b.relu", "a.conv"]
    assert G.nodes["b.concat"]["shape"] == (12, 8)
