"""Every kind of user error is an ArchError at the right file:line:col with a useful message and hint; a
property test checks that random and mutated programs never raise anything else."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.errors import ArchError, Span, did_you_mean
from archdsl.frontend.elaborate import eval_override

MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"


def err(src, **overrides) -> ArchError:
    with pytest.raises(ArchError) as info:
        archdsl.build(archdsl.parse(src), **overrides)
    e = info.value
    e.format()  # formatting never fails
    return e


def at(e: ArchError, line: int, col: int, file: str = "<text>"):
    assert e.span is not None, e.message
    assert (e.span.file, e.span.line, e.span.col) == (file, line, col), (e.span, e.message)


M = "model m() {\n  input x[4, 8, 8]\n"  # the statement under test is on line 3


# ---- syntax --------------------------------------------------------------------------------------------

def test_syntax_error_names_what_was_expected():
    e = err(M + "  conv(4 k = 3)\n}")
    at(e, 3, 10)
    assert e.message == "unexpected 'k'"
    assert e.hint == "expected ')' or ','"


def test_unexpected_end_of_file():
    e = err("model m() {\n  input x[4]\n  relu >>")
    assert e.message == "unexpected end of file"
    assert e.span.line == 3
    assert "expected" in e.hint and "a name" in e.hint


def test_unexpected_character():
    e = err(M + "  conv(4) ^ relu\n}")
    at(e, 3, 11)
    assert e.message == "unexpected character '^'"


def test_missing_closing_brace_in_list():
    e = err(M + "  conv(4, k = [3, 3)\n}")
    at(e, 3, 20)
    assert "']'" in e.hint


def test_error_format_shows_the_line_and_a_caret():
    e = err(M + "  relu >> dwcov(3)\n}")
    text = e.format()
    lines = text.splitlines()
    assert lines[0] == "<text>:3:11: error: unknown op 'dwcov'"
    assert lines[1] == "      relu >> dwcov(3)"
    assert lines[2] == "    " + " " * 10 + "^"
    assert lines[3].startswith("  hint: did you mean 'dwconv'")
    assert str(e) == text


def test_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "net.arch"
    path.write_text(M + "  conv(4, groups = 3)\n}\n")
    with pytest.raises(ArchError) as info:
        archdsl.build(archdsl.parse(path))
    at(info.value, 3, 3, file=str(path))
    assert info.value.format().startswith(f"{path}:3:3: error: ")


# ---- ops and attributes --------------------------------------------------------------------------------

def test_unknown_op_with_did_you_mean():
    e = err(M + "  relu >> dwcov(3)\n}")
    at(e, 3, 11)
    assert e.message == "unknown op 'dwcov'"
    assert e.hint.startswith("did you mean 'dwconv'")


def test_unknown_op_without_close_match_points_to_the_op_list():
    e = err(M + "  zzzzqqq\n}")
    at(e, 3, 3)
    assert e.message == "unknown op 'zzzzqqq'"
    assert "archdsl ops" in e.hint


def test_unknown_attribute():
    e = err(M + "  dwconv(3, dilatoin = 2)\n}")
    at(e, 3, 3)
    assert e.message == "dwconv() has no attribute 'dilatoin'"
    assert e.hint == "did you mean 'dilation'?"
    e = err(M + "  dwconv(3, wibble = 2)\n}")
    assert e.hint.startswith("signature: dwconv(k=3")


def test_too_many_positional_arguments():
    e = err(M + "  relu(1)\n}")
    at(e, 3, 3)
    assert "relu() takes at most 0 positional arguments, got 1" == e.message


def test_missing_required_attribute():
    e = err(M + "  relu >> conv()\n}")
    at(e, 3, 11)
    assert e.message == "conv() is missing required attribute 'out'"
    assert e.hint.startswith("signature: conv(out, k=1")


@pytest.mark.parametrize("call, message", [
    ("conv(4, bias = 1)", "conv(): attribute 'bias' must be true or false, got 1"),
    ("conv(4, k = \"big\")", "conv(): attribute 'k' must be an integer or a list of integers, got \"big\""),
    ("linear(2.5)", "linear(): attribute 'out' must be an integer, got 2.5"),
    ("conv(4, k = [3, 3, 3])", "conv(): attribute 'k' must have one entry per spatial dimension (2), got [3, 3, 3]"),
    ("conv(-4)", "conv(): attribute 'out' must be positive, got -4"),
    ("gelu(approximate = \"fast\")", "gelu(): attribute 'approximate' must be one of none, tanh; got 'fast'"),
    ("dropout(1.5)", "dropout(): attribute 'p' must be in [0, 1), got 1.5"),
])
def test_ill_typed_attributes(call, message):
    e = err(M + f"  {call}\n}}")
    at(e, 3, 3)
    assert e.message == message


def test_attribute_given_twice():
    e = err(M + "  conv(4, out = 5)\n}")
    at(e, 3, 3)
    assert "got attribute 'out' twice" in e.message


# ---- shapes --------------------------------------------------------------------------------------------

def test_residual_shape_mismatch_names_both_shapes():
    e = err(M + "  residual { conv(8) }\n}")
    at(e, 3, 3)
    assert e.message == ("residual branch changes the shape: its input is [4, 8, 8] but it returns [8, 8, 8]")
    assert "keep the shape" in e.hint


def test_groups_must_divide_channels():
    e = err("model m() {\n  input x[6, 8, 8]\n  relu >> conv(8, groups = 4)\n}")
    at(e, 3, 11)
    assert "groups=4 must divide both input channels 6 and output channels 8" in e.message


def test_kernel_larger_than_padded_input():
    e = err("model m() {\n  input x[4, 3, 3]\n  conv(8, k = 7, padding = 0)\n}")
    at(e, 3, 3)
    assert "kernel 7" in e.message and "larger than its padded input 3" in e.message
    assert "smaller kernel" in e.hint


def test_kernel_larger_after_downsampling():
    e = err("model m() {\n  input x[4, 16, 16]\n  conv(4, k = 4, stride = 4, padding = 0)\n"
            "  conv(4, k = 4, stride = 4, padding = 0)\n  conv(4, k = 2, stride = 2, padding = 0)\n}")
    at(e, 5, 3)
    assert "padded input 1" in e.message


def test_parallel_sum_of_different_shapes():
    e = err(M + "  parallel(sum) { conv(8) } { conv(4) }\n}")
    at(e, 3, 3)
    assert e.message == "add: the branches have different shapes: [8, 8, 8] and [4, 8, 8]"


def test_parallel_concat_of_different_sizes():
    e = err(M + "  parallel(concat) { conv(8, k = 3, stride = 2) } { conv(4) }\n}")
    at(e, 3, 3)
    assert "differ in more than channels: [8, 4, 4] and [4, 8, 8]" in e.message


def test_unknown_merge():
    e = err(M + "  parallel(max) { relu } { gelu }\n}")
    at(e, 3, 3)
    assert e.message == "unknown merge 'max'"


def test_mhsa_heads_must_divide_channels():
    e = err(M + "  mhsa(heads = 3)\n}")
    at(e, 3, 3)
    assert "heads=3 does not divide the 4 channels" in e.message


def test_spatial_op_on_a_vector():
    e = err("model m() {\n  input x[4, 8, 8]\n  gap >> conv(3, k = 3)\n}")
    at(e, 3, 10)
    assert "needs a 1-D or 2-D or 3-D input" in e.message and "[4]" in e.message


# ---- names, values, statements -------------------------------------------------------------------------

def test_unknown_name():
    e = err(M + "  conv(width)\n}")
    at(e, 3, 8)
    assert e.message == "unknown name 'width'"
    e = err("model m(width = 3) {\n  input x[4]\n  linear(widht)\n}")
    at(e, 3, 10)
    assert e.hint == "did you mean 'width'?"


def test_index_out_of_range():
    e = err("model m(d = [1, 2]) {\n  input x[4]\n  linear(d[2])\n}")
    at(e, 3, 10)
    assert e.message == "index 2 is out of range for a list of 2 items"
    assert e.hint == "valid indices are 0..1"


def test_index_of_a_non_list():
    e = err("model m(d = 3) {\n  input x[4]\n  linear(d[0])\n}")
    assert "only lists can be indexed" in e.message


def test_no_input():
    e = err("model m() {\n  conv(4)\n}")
    at(e, 2, 3)
    assert e.message == "no input to apply this to"
    assert "input x[C, H, W]" in e.hint
    e = err("model m() {\n}")
    at(e, 1, 1)
    assert e.message == "model 'm' declares no input"


def test_two_inputs_and_bad_input_shapes():
    e = err(M + "  input y[4]\n}")
    at(e, 3, 3)
    assert "only one input" in e.message
    e = err("model m() {\n  input x[0, 8]\n}")
    at(e, 2, 3)
    assert "input shape must be 1 to 4 positive integers" in e.message
    e = err("model m() {\n  input x[1, 2, 3, 4, 5]\n}")
    assert "1 to 4 positive integers" in e.message


def test_no_model():
    e = err("block b() { relu }")
    assert "defines no model" in e.message


def test_repeat_with_a_negative_count():
    e = err(M + "  repeat -1 { relu }\n}")
    at(e, 3, 10)
    assert e.message == "repeat needs a whole number of times (0 or more), got -1"
    e = err(M + "  repeat 1.5 { relu }\n}")
    assert "got 1.5" in e.message


def test_huge_loops_fail_with_a_message():
    e = err(M + "  repeat 10000000000 { }\n}")
    assert "more than" in e.message
    e = err(M + "  for i in 0..10000000000 { }\n}")
    at(e, 3, 3)
    e = err(M + "  y = [0] * 100000000000\n}")
    assert "too long" in e.message


def test_for_needs_a_list_or_integer_range():
    e = err(M + "  for i in 5 { relu }\n}")
    at(e, 3, 12)
    assert "needs a list or a range" in e.message
    e = err(M + "  for i in 0..2.5 { relu }\n}")
    assert "integer bounds" in e.message


def test_if_needs_a_boolean():
    e = err(M + "  if \"yes\" { relu }\n}")
    at(e, 3, 6)
    assert "must be true or false" in e.message


def test_cannot_apply_a_number():
    e = err(M + "  relu >> 3\n}")
    at(e, 3, 11)
    assert e.message == "cannot apply 3 to a tensor"


def test_arithmetic_errors():
    assert "division by zero" in err(M + "  y = 1 // 0\n}").message
    assert "cannot apply '*'" in err(M + "  y = \"a\" * 2\n}").message
    assert "not a real number" in err(M + "  y = (-1) ** 0.5\n}").message
    assert "number too large" in err(M + "  y = 10 ** 10 ** 10\n}").message
    assert "not a finite number" in err(M + "  y = 1e308 * 10\n}").message
    assert "cannot negate" in err(M + "  y = -\"a\"\n}").message
    assert "wrong number of arguments for round()" in err(M + "  y = round(1, 2, 3)\n}").message
    assert "takes numbers" in err(M + "  y = max(\"a\")\n}").message


def test_unknown_ref():
    e = err(M + "  stem: relu\n  $stme\n}")
    at(e, 4, 3)
    assert e.message == "no labelled result '$stme' before this point"
    assert e.hint == "did you mean 'stem'?"


def test_variable_that_is_not_an_op():
    e = err(M + "  k = 3\n  k(5)\n}")
    at(e, 4, 3)
    assert e.message == "'k' is 3, not an op or block"


def test_errors_inside_a_block_point_into_the_block():
    e = err("block b(c) {\n  relu\n  conv(c, groups = 3)\n}\nmodel m() {\n  input x[4, 8]\n  b(4)\n}")
    at(e, 3, 3)


# ---- annotations ---------------------------------------------------------------------------------------

def test_unknown_annotation():
    e = err(M + "  @precison(bf16) relu\n}")
    at(e, 3, 3)
    assert e.message == "unknown annotation '@precison'"
    assert e.hint == "did you mean 'precision'?"


def test_unknown_precision_and_layout():
    e = err(M + "  @precision(fp7) relu\n}")
    at(e, 3, 14)
    assert e.message == "@precision(fp7): not a known precision" and e.hint == "did you mean 'fp8'?"
    e = err(M + "  @precision(\"fp99\") relu\n}")
    at(e, 3, 3)
    assert e.message == '@precision("fp99"): not a known precision'
    assert "fp32, bf16, fp16" in e.hint
    e = err(M + "  @layout(\"nhwc\") relu\n}")
    assert "not a known layout" in e.message and "channels_last" in e.hint
    e = err(M + "  @precision(bf16, fp16) relu\n}")
    assert "takes one value" in e.message


def test_annotation_on_definition_is_checked():
    e = err("@precision(\"int3\")\nblock b() { relu }\nmodel m() {\n  input x[4]\n  b\n}")
    at(e, 1, 1)


# ---- search constructs ---------------------------------------------------------------------------------

def test_search_construct_errors():
    assert "needs at least one option" in err(M + "  y = choice()\n}").message
    assert "bounds must be numbers with low <= high" in err(M + "  y = int(5, 1)\n}").message
    assert "has no argument 'steps'" in err(M + "  y = int(1, 5, steps = 2)\n}").message
    assert "positive low bound" in err(M + "  y = float(0, 1, log = true)\n}").message
    assert "must be a string" in err(M + "  y = choice(1, 2, name = 3)\n}").message


def test_set_value_syntax_error_names_the_set():
    program = archdsl.parse("model m(k = 3) { input x[4] }")
    with pytest.raises(ArchError) as info:
        eval_override(program, "1 +", "k")
    assert info.value.span.file == "<--set k>"


def test_did_you_mean_helper():
    assert did_you_mean("dwcov", ["dwconv", "relu"]) == "did you mean 'dwconv'?"
    assert did_you_mean("zzz", ["dwconv", "relu"]) is None
    assert str(Span("f.arch", 3, 4)) == "f.arch:3:4"


# ---- property: nothing but ArchError -------------------------------------------------------------------

TINY = [
    "model m(k = choice(3, 5)) {\n  input x[4, 8, 8]\n  stem: conv(8, k = 3) >> relu\n"
    "  residual { dwconv(k) >> ln }\n  parallel(concat) { relu } { gelu }\n  head: gap >> linear(10)\n}\n",
    "block b(d, mixer = dwconv(3)) { residual { mixer >> linear(d) } }\n"
    "model m() {\n  input x[4, 8]\n  s: for i in 0..2 { b(4) }\n  a: relu >> concat($s)\n}\n",
    "model m(n = 2) {\n  input x[6]\n  repeat n { linear(6) >> relu }\n"
    "  if n > 1 { linear(3) } else { linear(2) }\n}\n",
    "@precision(bf16)\nblock b(c, body = { relu }) { conv(c) >> body >> @layout(channels_last) gelu }\n"
    "model m(w = int(2, 8, 2), dims = [4, 8]) {\n  input x[3, 8, 8]\n  for d in dims { b(d) }\n"
    "  parallel(sum) { conv(w) } { conv(w, k = 3) >> bn }\n  y = 2 ** 3 - 1 * w // 2 % 3\n  mhsa(heads = 2)\n}\n"
    "search s over data { maximize accuracy(epochs = 1)\n constraint params < 50k }\n",
]
REFERENCE = sorted(p for p in MODELS.glob("*.arch") if "\nmodel " in p.read_text())
REFERENCE_TEXT = {p: p.read_text() for p in REFERENCE}
TOKENS = [">>", "{", "}", "(", ")", "[", "]", ",", "=", ":", "$", "@", "..", "residual", "parallel", "for", "in",
          "repeat", "if", "else", "input", "block", "model", "import", '"x.arch"', "0", "-1", "1e-6", "50k", "4M",
          "3.5", "true", "x", "k", "conv", "relu", "choice(1, 2)", "int(1, 3)", "float(0, 1)", "*", "//", "**",
          "%", "/", "-", "+", "not", "and", "==", ";", "\n", "#", '"s"', "precision", "layout", "bf16",
          "@precision(bf16)", "$x", "concat", "gap", "linear", "999999999999", "1e308", "1e999", "0.0", "search",
          "over", "maximize", "class", "dims[9]", "$s", "mixer", "size", "{ }",
          # issue 13: names Python or torch own, compiler-internal ops, sizes that overflow, runaway growth
          "forward", "training", "none", "to", "__class__", "self", "torch", "F", "cast", "fused", "quantize",
          "int8_linear", "1" * 30, "1" * 400 + ".0", "layerscale(1e300)", "upsample(9" + "9" * 20 + ")",
          "x = x + x", "for i in 0..99 {", "if true {", "**" * 3, '"\x00.arch"', "@precision(fp16) poolmix"]
CHARS = list("(){}[]$@,:;=>-+*/#\"0123456789xk. \n\t_")


def _check(text: str, file: str, overrides: dict, emit_too: bool = False):
    try:
        program = archdsl.parse(text, file=file)
        try:
            G = archdsl.build(program, **overrides)
        except ArchError as e:
            if overrides and "--set" in e.message:  # the mutation removed an overridden parameter
                G = archdsl.build(program)
            else:
                raise
        if emit_too:  # whatever names the mutation made up, the emitted file is valid Python
            from codegen.python_source import emit

            compile(emit(G), "<emitted>", "exec")
    except ArchError as e:
        assert isinstance(e.message, str) and e.message
        text = e.format() + (e.hint or "")
        assert not any(r in text for r in ("OpValue(", "Closure(", "Tensor(node", " object at 0x")), text


def _mutate(text: str, mutations) -> str:
    for kind, where, length, token in mutations:
        i = int(where * len(text))
        if kind == "delete":
            text = text[:i] + text[i + length:]
        elif kind == "insert":
            text = text[:i] + token + text[i:]
        elif kind == "replace":
            text = text[:i] + token + text[i + length:]
        else:  # swap a whole token for another
            words = list(re.finditer(r"\w+|\S", text))
            if words:
                m = words[int(where * (len(words) - 1))]
                text = text[:m.start()] + ("" if kind == "drop_token" else token) + text[m.end():]
    return text


MUTATION = st.tuples(st.sampled_from(["delete", "insert", "replace", "drop_token", "swap_token"]),
                     st.floats(0, 1, allow_nan=False), st.integers(1, 6), st.sampled_from(TOKENS + CHARS))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=120), st.lists(st.sampled_from(TOKENS + CHARS), max_size=40).map(" ".join),
                 st.lists(st.sampled_from(TOKENS + CHARS), max_size=40).map("".join)))
def test_random_text_only_raises_arch_error(text):
    _check(text, "<text>", {})


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(TINY), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_small_programs_only_raise_arch_error(base, mutations):
    _check(_mutate(base, mutations), "<text>", {}, emit_too=True)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(REFERENCE), st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_reference_models_only_raise_arch_error(path, mutations):
    # small inputs and heads keep each build fast; the file name makes `import "metaformer.arch"` resolve
    _check(_mutate(REFERENCE_TEXT[path], mutations), str(path), {"size": 32, "classes": 10})


def test_reference_models_themselves_build_at_a_small_size():
    for path in REFERENCE:
        program = archdsl.parse(path)
        params = {p.name for p in program.model().params}
        overrides = {k: v for k, v in {"size": 32, "classes": 10}.items() if k in params}
        archdsl.build(program, **overrides)


def test_op_that_cannot_run_at_a_precision_names_op_and_line():
    e = err("@precision(int8)\nmodel m() {\n  input x[4, 16]\n  conv(4, k = 3) >> globalfilter\n}")
    at(e, 4, 21)
    assert e.message == "globalfilter cannot run at int8" and "@precision(fp32)" in e.hint
