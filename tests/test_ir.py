"""The IR: the verifier catches broken graphs, the text dump is stable (golden file), the hash ignores
formatting, edges keep argument order, and the cost tables add up."""
from __future__ import annotations

import copy
from pathlib import Path

import networkx as nx
import pytest

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.cost import block_table, summary
from archdsl.ir.graph import inputs, order, shared_duplicates, totals
from archdsl.ir.printer import dump, ir_hash
from archdsl.ir.verify import verify

GOLDEN = Path(__file__).resolve().parent / "golden"
MODELS = Path(__file__).resolve().parents[1] / "searchspaces" / "models"


def build(src, **overrides):
    return archdsl.build(archdsl.parse(src), **overrides)


@pytest.fixture()
def tiny():
    return archdsl.build(archdsl.parse(GOLDEN / "tiny.arch"))


# ---- the verifier --------------------------------------------------------------------------------------

def broken(G, fn):
    H = copy.deepcopy(G)
    fn(H)
    with pytest.raises(ArchError) as info:
        verify(H)
    return info.value


def test_valid_graph_passes(tiny):
    verify(tiny)
    verify(tiny, recheck_shapes=False)


def test_cycle(tiny):
    e = broken(tiny, lambda H: H.add_edge("head.linear", "stem.conv", args=(1,)))
    assert "has a cycle" in e.message


def test_missing_input_edge(tiny):
    e = broken(tiny, lambda H: H.remove_edge("x", "stem.conv"))
    assert e.message == "IR check failed at 'stem.conv': op has no inputs"
    assert e.span is not None and e.span.line == 4  # the node's place in tiny.arch


def test_missing_argument_of_a_merge(tiny):
    e = broken(tiny, lambda H: H.remove_edge("stem.relu", "add"))
    assert e.message == "IR check failed at 'add': argument positions [1] are not 0..0"


def test_argument_positions_not_contiguous(tiny):
    def gap_in_args(H):
        H.edges["conv", "concat"]["args"] = (2,)

    e = broken(tiny, gap_in_args)
    assert e.message == "IR check failed at 'concat': argument positions [0, 2] are not 0..1"


def test_duplicate_argument_position(tiny):
    def dup(H):
        H.edges["conv", "concat"]["args"] = (0,)

    e = broken(tiny, dup)
    assert "argument positions [0, 0]" in e.message


def test_wrong_stored_shape(tiny):
    def wrong(H):
        H.nodes["stem.conv"]["shape"] = (4, 5, 5)

    e = broken(tiny, wrong)
    assert e.message == "IR check failed at 'stem.conv': stored shape [4, 5, 5] but the shape rule gives [4, 4, 4]"


def test_wrong_output_shape(tiny):
    def wrong(H):
        H.nodes["output"]["shape"] = (11,)

    assert "output shape differs" in broken(tiny, wrong).message


@pytest.mark.parametrize("bad", ["stem.re-lu", "stem.class", "stem..relu", "1relu", "stem.relu "])
def test_bad_node_name(tiny, bad):
    e = broken(tiny, lambda H: nx.relabel_nodes(H, {"stem.relu": bad}, copy=False))
    assert e.message == f"IR check failed at '{bad}': node names must be dotted Python identifiers"


def test_missing_graph_input_or_output(tiny):
    def no_input(H):
        H.graph["input"] = "nope"

    assert broken(tiny, no_input).message == "IR check failed: graph has no input node"

    def no_output(H):
        H.graph["output"] = None

    assert broken(tiny, no_output).message == "IR check failed: graph has no output node"


def test_dead_node(tiny):
    def dead(H):
        H.add_node("extra", **{**H.nodes["gelu"]})
        H.add_edge("add", "extra", args=(0,))

    assert broken(tiny, dead).message == "IR check failed at 'extra': result is never used (dead node)"


def test_unknown_precision_layout_and_missing_keys(tiny):
    def prec(H):
        H.nodes["gelu"]["precision"] = "fp4"

    assert "unknown precision 'fp4'" in broken(tiny, prec).message

    def layout(H):
        H.nodes["gelu"]["layout"] = "nhwc"

    assert "unknown layout 'nhwc'" in broken(tiny, layout).message

    def missing(H):
        del H.nodes["gelu"]["macs"]

    assert "missing 'macs'" in broken(tiny, missing).message


def test_input_with_arguments(tiny):
    e = broken(tiny, lambda H: H.add_edge("head.gap", "x", args=(0,)))
    assert "has a cycle" in e.message or "input node takes no arguments" in e.message


# ---- the text dump -------------------------------------------------------------------------------------

def test_dump_matches_the_hand_checked_golden_file(tiny):
    assert dump(tiny) == (GOLDEN / "tiny.ir").read_text()


def test_dump_is_deterministic(tiny):
    again = archdsl.build(archdsl.parse(GOLDEN / "tiny.arch"))
    assert dump(again) == dump(tiny)


def test_dump_with_spans(tiny):
    lines = dump(tiny, spans=True).splitlines()
    conv = next(line for line in lines if line.startswith("%stem.conv ="))
    assert conv.endswith(f"@ {GOLDEN / 'tiny.arch'}:4:9")


def test_order_is_topological_and_follows_insertion(tiny):
    names = order(tiny)
    assert names[0] == "x" and names[-1] == "output"
    pos = {n: i for i, n in enumerate(names)}
    for u, v in tiny.edges:
        assert pos[u] < pos[v]
    assert pos["gelu"] < pos["conv"]  # the first parallel branch comes first


# ---- the hash ------------------------------------------------------------------------------------------

REFORMATTED = """model other_name(c=4){input x[3,8,8];stem:conv(c,k=3,stride=2,padding=1)>>bn>>relu
# a comment
residual{dwconv(3)>>@precision(bf16)linear(c)};parallel(concat){gelu}{conv(2,k=1,bias=false)}
head:gap>>@layout(channels_last)linear(10)}"""


def test_hash_ignores_formatting_and_the_model_name(tiny):
    other = build(REFORMATTED)
    assert other.graph["name"] == "other_name"
    assert ir_hash(other) == ir_hash(tiny)
    assert len(ir_hash(tiny)) == 16


def test_hash_changes_with_the_architecture(tiny):
    assert ir_hash(build(REFORMATTED.replace("dwconv(3)", "dwconv(5)"))) != ir_hash(tiny)
    assert ir_hash(build(REFORMATTED, c=8)) != ir_hash(tiny)
    assert ir_hash(build(REFORMATTED.replace("bf16", "fp16"))) != ir_hash(tiny)


def test_hash_changes_with_a_search_choice():
    src = "model m(k = choice(3, 5)) { input x[4, 16]\n dwconv(k) }"
    assert ir_hash(build(src)) == ir_hash(build(src, k=3))
    assert ir_hash(build(src)) != ir_hash(build(src, k=5))


# ---- edges and argument order --------------------------------------------------------------------------

def test_edges_keep_argument_order():
    a_first = build("model m() { input x[4, 8]\n a: conv(2)\n b: conv(3)\n $a >> concat($b) }")
    b_first = build("model m() { input x[4, 8]\n a: conv(2)\n b: conv(3)\n $b >> concat($a) }")
    assert inputs(a_first, "concat") == ["a.conv", "b.conv"]
    assert inputs(b_first, "concat") == ["b.conv", "a.conv"]
    assert a_first.edges["a.conv", "concat"]["args"] == (0,) and a_first.edges["b.conv", "concat"]["args"] == (1,)
    assert a_first.nodes["concat"]["shape"] == b_first.nodes["concat"]["shape"] == (5, 8)
    assert ir_hash(a_first) != ir_hash(b_first)  # order matters for concat


def test_same_tensor_twice_is_one_edge_with_both_positions():
    G = build("model m() { input x[4, 8]\n a: relu\n concat($a, $a) }")
    assert inputs(G, "concat") == ["a.relu", "a.relu", "a.relu"]
    assert G.edges["a.relu", "concat"]["args"] == (0, 1, 2)
    assert G.nodes["concat"]["shape"] == (12, 8)


# ---- costs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 3])
def test_block_table_sums_equal_totals(depth):
    G = archdsl.build(archdsl.parse(MODELS / "convnext_t.arch"), size=32, classes=10)
    rows = block_table(G, depth)
    t = totals(G)
    assert sum(r["params"] for r in rows) == t["params"]
    assert sum(r["macs"] for r in rows) == t["macs"]
    assert sum(r["ops"] for r in rows) == G.number_of_nodes() - 2
    assert rows[-1]["shape"] == [10]
    if depth == 1:
        assert [r["name"] for r in rows] == ["stem", "stage0", "stage1", "stage2", "stage3", "head"]


def test_block_table_rows_by_hand(tiny):
    rows = {r["name"]: r for r in block_table(tiny, 1)}
    assert rows["stem"] == {"name": "stem", "ops": 3, "params": 112 + 8, "macs": 1728, "shape": [4, 4, 4]}
    assert rows["head"] == {"name": "head", "ops": 2, "params": 70, "macs": 60, "shape": [10]}
    assert rows["linear"]["params"] == 20 and rows["dwconv"]["macs"] == 576


def test_summary(tiny):
    s = summary(tiny)
    want = {"model": "tiny", "params": 112 + 8 + 40 + 20 + 8 + 70, "macs": 1728 + 576 + 256 + 128 + 60,
            "input_shape": [3, 8, 8], "output_shape": [10], "nodes": 11, "shared_params_counted_once": 0}
    assert {k: s[k] for k in want} == want
    if "size_bytes" in s:  # fp32 params at 4 bytes, the bf16 linear's 20 at 2
        assert s["size_bytes"] == (112 + 8 + 40 + 8 + 70) * 4 + 20 * 2


def test_shared_parameters_are_counted_once():
    G = build("model m() { input x[4, 9, 9]\n s: for i in 0..3 { dcls(5, 3, share = \"pos\") } }")
    rows = block_table(G, 1)
    dup = shared_duplicates(G)
    assert dup > 0
    assert sum(r["params"] for r in rows) - dup == totals(G)["params"]
    module = archdsl.compile(G)
    assert sum(p.numel() for p in module.parameters()) == totals(G)["params"]  # parameters() dedups ties
