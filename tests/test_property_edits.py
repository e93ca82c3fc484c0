"""Random edits of the example flows never crash the compiler: every outcome is a clean compile
or diagnostics (never FL900) whose positions exist in the file they name."""

from __future__ import annotations

from pathlib import Path

from corpus import example_program
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowlang.compiler import CompileResult, compile_sources
from flowlang.diagnostics import Label
from flowlang.source import SourceFile

ROOT = Path(__file__).resolve().parent.parent


PROGRAMS = [example_program()]

# Words and characters an author might type in the wrong place.
INSERTS = (
    "say", "ask", "step", "flow", "goto", "go to", "end", "if", "elif", "else", "else if",
    "set", "=", "to", "or", "as", "choice", "button", "quick reply", "expect", "after 3 tries",
    "when", "interrupt", "template", "page", "menu", "item", "carousel", "card", "with",
    "starts", "sends", "opens", "calls", "tag", "call", "resume", "typing", "pause", "send",
    "{{", "}}", "{%", "%}", '"', "'", "#", ",", "\\", "\n", "  ", "\t", "“", "”", "‘", "’",
    "🚀", "é", "ß", "\u00a0", "\u200b", "\r\n", "0", "99999999999999999999", "-1",
)  # fmt: skip
ODD_TEXT = st.text(
    alphabet=st.sampled_from(list("abz_019 \t\"'#{}%,=.:\\“”‘’🚀é\u00a0\n-")),
    min_size=1,
    max_size=6,
)
OPS = (
    "delete line", "duplicate line", "swap lines", "insert word", "insert text",
    "delete chars", "indent", "dedent", "tab", "unicode",
)  # fmt: skip


def _edit(data: st.DataObject, text: str) -> str:
    lines = text.split("\n")
    op = data.draw(st.sampled_from(OPS), label="op")
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    if op == "delete line":
        del lines[i]
    elif op == "duplicate line":
        lines.insert(data.draw(st.integers(0, len(lines))), lines[i])
    elif op == "swap lines":
        j = data.draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "indent":
        lines[i] = " " * data.draw(st.integers(1, 4)) + lines[i]
    elif op == "dedent":
        cut = data.draw(st.integers(1, 4))
        lines[i] = lines[i][cut:] if lines[i][:cut].strip() == "" else lines[i]
    elif op == "tab":
        at = data.draw(st.sampled_from([0, len(lines[i]) - len(lines[i].lstrip())]))
        lines[i] = lines[i][:at] + "\t" + lines[i][at:]
    else:
        at = data.draw(st.integers(0, len(text)), label="offset")
        if op == "delete chars":
            return text[:at] + text[at + data.draw(st.integers(1, 12)) :]
        if op == "insert word":
            word = data.draw(st.sampled_from(INSERTS))
            return text[:at] + data.draw(st.sampled_from(["", " "])) + word + " " + text[at:]
        if op == "unicode":
            return (
                text[:at]
                + data.draw(st.sampled_from(["“", "”", "’", "🚀", "é", "\u00a0"]))
                + text[at:]
            )
        return text[:at] + data.draw(ODD_TEXT) + text[at:]
    return "\n".join(lines)


def _check_label(label: Label, result: CompileResult) -> None:
    span = label.span
    assert span.file in result.sources, f"unknown file {span.file!r}"
    source = result.sources[span.file]
    assert 0 <= span.start <= span.end <= len(source.text), span
    for offset in (span.start, span.end):
        pos = source.position(offset)
        assert 1 <= pos.line <= len(source.line_starts), (span, pos)
        start = source.line_starts[pos.line - 1]
        end = source.text.find("\n", start)
        length = (len(source.text) if end == -1 else end) - start
        assert 1 <= pos.column <= length + 1, (span, pos)


def check_result(result: CompileResult) -> None:
    """No internal error, and every diagnostic points at a place that exists."""
    internal = [d for d in result.diagnostics if d.code == "FL900"]
    assert not internal, "\n".join(internal[0].notes)
    for diagnostic in result.diagnostics:
        for label in (diagnostic.primary, *diagnostic.secondary):
            _check_label(label, result)
        assert diagnostic.message.strip(), diagnostic


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_random_edits_never_crash_and_point_at_real_places(data: st.DataObject) -> None:
    program = data.draw(st.sampled_from(PROGRAMS), label="program")
    index = data.draw(st.integers(0, len(program) - 1), label="file")
    text = program[index].text
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        text = _edit(data, text)
    edited = [*program[:index], SourceFile(program[index].name, text), *program[index + 1 :]]
    result = compile_sources(edited)  # must not raise
    check_result(result)
    assert result.ok == (result.program is not None)


def test_the_unedited_examples_compile() -> None:
    # Guards the property above: it must start from programs that compile.
    for program in PROGRAMS:
        result = compile_sources(program)
        check_result(result)
        assert result.ok, [f"{d.code} {d.message}" for d in result.errors]
