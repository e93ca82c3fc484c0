"""Rendering diagnostics (flowlang/render.py): short, rich, JSON and GitHub forms."""

from __future__ import annotations

import json

import pytest

from flowlang.diagnostics import Diagnostic, Label, Severity
from flowlang.render import escape_github_data, escape_github_property, render
from flowlang.source import SourceFile, Span

ORDER = SourceFile(
    "flows/order.flow",
    "flow order\n"
    "  step ask_size\n"
    '    ask "What size?" as size\n'
    "  step confirm\n"
    "    goto ask_sise\n",
)


def _offset(source: SourceFile, needle: str) -> int:
    return source.text.index(needle)


def _span(source: SourceFile, needle: str) -> Span:
    start = _offset(source, needle)
    return Span(source.name, start, start + len(needle))


def _diagnostic(
    span: Span,
    *,
    code: str = "FL104",
    severity: Severity = Severity.ERROR,
    message: str = "flow `order` has no step `ask_sise`",
    label: str = "no step with this name",
    secondary: tuple[Label, ...] = (),
    notes: tuple[str, ...] = (),
    help: str | None = None,
) -> Diagnostic:
    return Diagnostic(code, severity, message, Label(span, label), secondary, notes, help)


UNKNOWN_STEP = _diagnostic(
    _span(ORDER, "ask_sise"),
    secondary=(Label(_span(ORDER, "step ask_size"), "this step has a similar name"),),
    notes=("`goto` can only go to a step of the same flow",),
    help="did you mean `ask_size`?",
)
SOURCES = {ORDER.name: ORDER}


# -- short


def test_short_is_one_line_per_diagnostic() -> None:
    warning = _diagnostic(
        _span(ORDER, "step confirm"),
        code="FL201",
        severity=Severity.WARNING,
        message="step `confirm` can never be reached",
    )
    assert render([UNKNOWN_STEP, warning], SOURCES, "short") == (
        "flows/order.flow:5:10: error[FL104]: flow `order` has no step `ask_sise`\n"
        "flows/order.flow:4:3: warning[FL201]: step `confirm` can never be reached"
    )


def test_nothing_to_render() -> None:
    for style in ("short", "rich", "github"):
        assert render([], SOURCES, style) == ""
    assert render([], SOURCES, "json") == "[]"


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown diagnostic style 'xml'"):
        render([UNKNOWN_STEP], SOURCES, "xml")  # type: ignore[arg-type]


# -- rich


def test_rich_shows_line_carets_labels_notes_and_help(snapshot) -> None:
    text = render([UNKNOWN_STEP], SOURCES, "rich")
    assert text == snapshot
    assert text.splitlines()[:2] == [
        "error[FL104]: flow `order` has no step `ask_sise`",
        " --> flows/order.flow:5:10",
    ]
    assert "5 |     goto ask_sise" in text
    assert "  |          ^^^^^^^^ no step with this name" in text
    assert "  |   ------------- this step has a similar name" in text
    assert "  = note: `goto` can only go to a step of the same flow" in text
    assert text.endswith("  = help: did you mean `ask_size`?")


@pytest.mark.parametrize(
    ("line", "shown", "carets"),
    [
        # A tab indent and tabs inside a text become 4 spaces; the carets follow.
        ('\tsay "hi" oops', '2 |     say "hi" oops', "  |              ^^^^ here"),
        ('say "a\tb\tc" oops', '2 | say "a    b    c" oops', "  |                   ^^^^ here"),
        # Wide characters take two columns on a terminal, a combining accent none.
        ('say "日本語" oops', '2 | say "日本語" oops', "  |              ^^^^ here"),
        ('say "e\u0301" oops', '2 | say "e\u0301" oops', "  |         ^^^^ here"),
    ],
)
def test_rich_carets_line_up_with_the_source(line: str, shown: str, carets: str) -> None:
    source = SourceFile("x.flow", f"flow a\n{line}\n")
    text = render([_diagnostic(_span(source, "oops"), label="here")], {"x.flow": source}, "rich")
    assert text.splitlines()[-2:] == [shown, carets]


def test_rich_tab_indent_is_underlined_as_wide_as_it_is_shown() -> None:
    source = SourceFile("x.flow", "flow a\n\tstep s\n")
    tab = Span("x.flow", 7, 8)
    text = render([_diagnostic(tab, label="tab")], {"x.flow": source}, "rich")
    assert "2 |     step s" in text
    assert "  | ^^^^ tab" in text


@pytest.mark.parametrize("text", ["flow", "flow a\n  step s\n", ""])
def test_rich_error_at_end_of_file(text: str, snapshot) -> None:
    source = SourceFile("x.flow", text)
    end = Span("x.flow", len(text), len(text))
    rendered = render([_diagnostic(end, label="the file ends here")], {"x.flow": source}, "rich")
    assert rendered == snapshot
    assert "^ the file ends here" in rendered


def test_rich_empty_span_gets_one_caret() -> None:
    source = SourceFile("x.flow", "flow a\n  goto\n")
    at = Span("x.flow", 9, 9)  # where `goto` starts
    rendered = render([_diagnostic(at, label="")], {"x.flow": source}, "rich")
    assert rendered.splitlines()[-1] == "  |   ^"


def test_rich_multi_line_span_is_clamped_to_its_first_line() -> None:
    source = SourceFile("x.flow", "flow a\n  step s\n    say 'x'\n")
    whole = Span("x.flow", _offset(source, "step s"), len(source.text))
    rendered = render([_diagnostic(whole, label="this step")], {"x.flow": source}, "rich")
    assert rendered.splitlines()[-1] == "  |   ^^^^^^ this step"


def test_rich_secondary_labels_in_another_file_and_far_lines(snapshot) -> None:
    other = SourceFile("flows/b.flow", "# b\n\n\n\n\n\n\n\n\n\nflow order\n  step s\n    end\n")
    first = SourceFile(
        "flows/a.flow", "flow order\n  step s\n    end\n\n\n\n\n\n\n\n\n\n  title 'x'\n"
    )
    duplicate = _diagnostic(
        _span(other, "order"),
        code="FL101",
        message="there are two flows named `order`",
        label="second flow `order`",
        secondary=(
            Label(_span(first, "order"), "first defined here"),
            Label(_span(other, "end"), ""),
            Label(_span(first, "title"), "and here"),
        ),
    )
    sources = {other.name: other, first.name: first}
    rendered = render([duplicate], sources, "rich")
    assert rendered == snapshot
    assert "  --> flows/b.flow:11:6" in rendered
    assert "  ::: flows/a.flow:1:6" in rendered
    assert "..." in rendered  # lines 1 and 13 of a.flow are far apart


def test_rich_without_the_source_text_still_says_where() -> None:
    unreadable = _diagnostic(Span("gone.flow", 0, 0), code="FL007", message="not UTF-8")
    assert render([unreadable], {}, "rich") == "error[FL007]: not UTF-8\n --> gone.flow:1:1"
    assert render([unreadable], {}, "short") == "gone.flow:1:1: error[FL007]: not UTF-8"


def test_rich_multi_line_note_is_indented() -> None:
    note = _diagnostic(_span(ORDER, "ask_sise"), notes=("first\nsecond",))
    assert render([note], SOURCES, "rich").endswith("  = note: first\n          second")


def test_rich_separates_diagnostics_with_a_blank_line() -> None:
    rendered = render([UNKNOWN_STEP, UNKNOWN_STEP], SOURCES, "rich")
    one = render([UNKNOWN_STEP], SOURCES, "rich")
    assert rendered == f"{one}\n\n{one}"


# -- colour


def test_no_colour_unless_asked() -> None:
    for style in ("short", "rich", "json", "github"):
        assert "\x1b[" not in render([UNKNOWN_STEP], SOURCES, style)


def test_colour_when_asked_only_for_terminal_styles() -> None:
    assert "\x1b[1;31merror[FL104]\x1b[0m" in render([UNKNOWN_STEP], SOURCES, "short", color=True)
    rich = render([UNKNOWN_STEP], SOURCES, "rich", color=True)
    assert "\x1b[1;31m^^^^^^^^ no step with this name\x1b[0m" in rich
    for style in ("json", "github"):
        assert "\x1b[" not in render([UNKNOWN_STEP], SOURCES, style, color=True)


def test_colour_does_not_change_the_text() -> None:
    import re

    plain = render([UNKNOWN_STEP], SOURCES, "rich")
    painted = render([UNKNOWN_STEP], SOURCES, "rich", color=True)
    assert re.sub(r"\x1b\[[0-9;]*m", "", painted) == plain


# -- json


def test_json_has_exactly_the_documented_fields() -> None:
    [item] = json.loads(render([UNKNOWN_STEP], SOURCES, "json"))
    assert item == {
        "file": "flows/order.flow",
        "line": 5,
        "column": 10,
        "end_line": 5,
        "end_column": 18,  # exclusive: `ask_sise` is columns 10 to 17
        "severity": "error",
        "code": "FL104",
        "message": "flow `order` has no step `ask_sise`",
        "help": "did you mean `ask_size`?",
        "notes": ["`goto` can only go to a step of the same flow"],
    }


def test_json_help_is_null_when_missing_and_end_may_be_on_another_line() -> None:
    whole = Span(ORDER.name, _offset(ORDER, "step confirm"), len(ORDER.text))
    [item] = json.loads(render([_diagnostic(whole)], SOURCES, "json"))
    assert item["help"] is None
    assert item["notes"] == []
    assert (item["line"], item["column"], item["end_line"], item["end_column"]) == (4, 3, 6, 1)


# -- github


def test_github_workflow_command() -> None:
    assert render([UNKNOWN_STEP], SOURCES, "github") == (
        "::error file=flows/order.flow,line=5,col=10,endLine=5,endColumn=18,title=FL104::"
        "flow `order` has no step `ask_sise` — help: did you mean `ask_size`?"
    )


def test_github_severities() -> None:
    span = _span(ORDER, "ask_sise")
    lines = render(
        [_diagnostic(span, severity=s) for s in (Severity.ERROR, Severity.WARNING, Severity.NOTE)],
        SOURCES,
        "github",
    ).splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["::error", "::warning", "::notice"]


def test_github_escapes_data_and_properties() -> None:
    source = SourceFile("odd:name,1.flow", "flow a\n")
    weird = _diagnostic(
        Span("odd:name,1.flow", 0, 4),
        message="100% wrong\r\nsecond line: a, b",
        help="fix it: now",
    )
    assert render([weird], {source.name: source}, "github") == (
        "::error file=odd%3Aname%2C1.flow,line=1,col=1,endLine=1,endColumn=5,title=FL104::"
        "100%25 wrong%0D%0Asecond line: a, b — help: fix it: now"
    )


def test_github_escape_functions() -> None:
    assert escape_github_data("a%b\rc\nd:e,f") == "a%25b%0Dc%0Ad:e,f"
    assert escape_github_property("a%b\rc\nd:e,f") == "a%25b%0Dc%0Ad%3Ae%2Cf"
