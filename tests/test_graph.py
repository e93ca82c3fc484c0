"""Drawing flows (flowlang/graph.py): nodes, labelled edges, Mermaid and DOT text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowlang import ir
from flowlang.compiler import compile_source
from flowlang.graph import Edge, build_graph, dot_string, mermaid_label, to_dot, to_mermaid
from flowlang.load import compile_paths

GRAPH = Path(__file__).parent / "fixtures" / "cli" / "graph"


@pytest.fixture(scope="module")
def program() -> ir.FlowProgram:
    result = compile_paths([GRAPH])
    assert result.errors == (), result.errors
    assert result.program is not None
    return result.program


def _flow(text: str, name: str) -> ir.Flow:
    result = compile_source(text, "t.flow")
    assert result.program is not None, result.diagnostics
    return result.program.flows[name]


def _edges(flow: ir.Flow) -> set[tuple[str, str, str]]:
    graph = build_graph(flow)
    labels = {node.id: node.label for _, nodes in graph.groups for node in nodes}
    labels |= {node.id: node.label for node in graph.shared}
    return {(labels[e.source], labels[e.target], e.label) for e in graph.edges}


def test_every_kind_of_transition_is_an_edge(program: ir.FlowProgram) -> None:
    edges = _edges(program.flows["shop"])
    assert edges == {
        ('Shop "Deluxe"', "start", ""),  # the flow starts at its first step
        ("start", "offers", "See offers"),  # a button to a step
        ("start", "flow sales", "Talk to sales"),  # a button that starts a flow
        ("start", "shoes", "Shoes"),  # a choice to a step
        ("start", "flow sales", "Sales"),  # a choice that starts a flow
        ("start", "end", "after 3 tries"),  # a choice question gives up after 3 tries
        ("start", "offers", 'product == "Socks & <more>"'),  # goto inside `elif`
        ("start", "end", "else"),  # end inside `else`
        ("start", "offers", ""),  # falling through to the next step
        ("offers", "start", "after 3 tries"),  # `after 3 tries goto start`
        ("offers", "flow sales", "call"),  # call another flow
        ("offers", "end", ""),  # `end`
        ("shoes", "offers", "Offers"),  # a quick reply to a step
        ("shoes", "end", ""),  # the last step falls through to the end
    }


def test_calls_are_marked_and_resume_has_its_own_node(program: ir.FlowProgram) -> None:
    graph = build_graph(program.flows["shop"])
    assert [e.label for e in graph.edges if e.call] == ["call"]
    assert _edges(program.flows["help"]) == {
        ("Help", "start", ""),
        ("start", "back to the interrupted flow", ""),
    }


def test_mermaid_snapshot(program: ir.FlowProgram, snapshot) -> None:
    assert to_mermaid(program.flows["shop"]) == snapshot


def test_dot_snapshot(program: ir.FlowProgram, snapshot) -> None:
    assert to_dot(program.flows["shop"]) == snapshot


def test_several_flows_get_a_box_each_and_link_to_each_other(
    program: ir.FlowProgram, snapshot
) -> None:
    flows = [program.flows["shop"], program.flows["sales"]]
    mermaid, dot = to_mermaid(flows), to_dot(flows)
    assert (mermaid, dot) == snapshot
    assert '  subgraph g0["shop"]' in mermaid
    assert '  subgraph g1["sales"]' in mermaid
    assert 'subgraph "cluster_1" {' in dot
    # `sales` is drawn, so buttons to it point at its start instead of a separate box.
    assert "F_sales" not in mermaid
    assert 's0_start -->|"Talk to sales"| b1' in mermaid


def test_conditional_call_keeps_both_the_condition_and_the_call() -> None:
    flow = _flow(
        'flow a\n  step s\n    ask "?" as x\n    if x == 1\n      call b\n'
        '    say "done"\nflow b\n  step t\n    say "b"\n',
        "a",
    )
    assert ("s", "flow b", "x == 1 (call)") in _edges(flow)


def test_step_that_always_leaves_does_not_fall_through() -> None:
    flow = _flow(
        'flow a\n  step one\n    ask "?" as x\n    if x\n      goto three\n    else\n      end\n'
        '  step two\n    say "never fallen into"\n  step three\n    say "c"\n',
        "a",
    )
    edges = _edges(flow)
    assert ("one", "two", "") not in edges
    assert ("one", "three", "x") in edges
    assert ("one", "end", "else") in edges


def test_if_without_else_falls_through() -> None:
    flow = _flow(
        'flow a\n  step one\n    ask "?" as x\n    if x\n      goto three\n'
        '  step two\n    say "b"\n  step three\n    say "c"\n',
        "a",
    )
    assert ("one", "two", "") in _edges(flow)


@pytest.mark.parametrize(("last", "falls_through"), [("goto t", False), ("", True)])
def test_choice_question_falls_through_only_if_some_choice_stays(
    last: str, falls_through: bool
) -> None:
    flow = _flow(
        'flow a\n  step s\n    ask "Ok?"\n      choice "Yes" goto t\n      choice "No" starts b\n'
        f'      choice "Maybe" {last}\n  step t\n    say "t"\nflow b\n  step u\n    say "b"\n',
        "a",
    )
    assert (("s", "t", "") in _edges(flow)) is falls_through


def test_a_text_question_never_gives_up_but_a_checked_one_does() -> None:
    flow = _flow(
        'flow a\n  step s\n    ask "Name?" as name\n    ask "Age?" as age\n      expect a number\n'
        "      after 2 tries end\n",
        "a",
    )
    assert [e.label for e in build_graph(flow).edges if e.label] == ["after 2 tries"]


def test_node_ids_are_unique_and_safe() -> None:
    flow = _flow(
        'flow a\n  step end_\n    say "x"\n  step _end\n    say "y"\n  step s0_x\n    end\n', "a"
    )
    graph = build_graph([flow, flow])
    ids = [n.id for _, nodes in graph.groups for n in nodes]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", i) for i in ids)
    assert "end" not in ids  # a Mermaid keyword


def test_duplicate_edges_are_drawn_once() -> None:
    flow = _flow(
        'flow a\n  step s\n    say "x"\n      button "Go" goto t\n'
        '    say "y"\n      button "Go" goto t\n  step t\n    say "z"\n',
        "a",
    )
    assert build_graph(flow).edges.count(Edge("s0_s", "s0_t", "Go")) == 1


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ('say "hi"', "say #quot;hi#quot;"),
        ("a | b", "a #124; b"),
        ("#1 & <b>", "#35;1 #38; #60;b#62;"),
        ("`code`", "#96;code#96;"),
        ("two\nlines", "two lines"),
    ],
)
def test_mermaid_labels_are_escaped(text: str, escaped: str) -> None:
    assert mermaid_label(text) == escaped


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("two\nlines", '"two lines"'),
        ("<b> & {x}", '"<b> & {x}"'),
    ],
)
def test_dot_strings_are_escaped(text: str, quoted: str) -> None:
    assert dot_string(text) == quoted
