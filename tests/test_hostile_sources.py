"""Hostile `.flow` sources: random text, token soups from the language's keywords, deep
nesting, huge lines, NUL bytes, BOMs, CR and CRLF line endings, extremely long names and files
that are not UTF-8. The compiler must never raise, never report FL900 (internal error), point
every diagnostic at a place inside the source, and render every diagnostic in every style.

tests/test_property_edits.py already edits the example flows line by line; this file feeds the
compiler text no author would type (and reuses its `check_result`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import example_program
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_property_edits import check_result

from flowlang.cli import main
from flowlang.compiler import CompileResult, compile_source, compile_sources
from flowlang.load import compile_paths
from flowlang.parser import MAX_NESTING
from flowlang.render import STYLES, render
from flowlang.source import SourceFile

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = (ROOT / "grammar" / "flow.lark").read_text(encoding="utf-8")
#: Every keyword of the grammar (the quoted strings in grammar/flow.lark), and `go to`.
KEYWORDS = sorted({*re.findall(r'"([a-z][a-z ]*)"', GRAMMAR), "go to", "goto"})
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: The smallest program that compiles: the frame for the hostile pieces below.
FRAME = 'flow f\n  when user says "x"\n  step s\n    say "{}"\n'


def checked(result: CompileResult, unreadable: tuple[Path, ...] = ()) -> CompileResult:
    """`check_result`, plus: every diagnostic renders in every style, and there is a program
    exactly when there are no errors. A file that could not be read has no text: its one
    diagnostic points at its start."""
    names = {str(path) for path in unreadable}
    for diagnostic in result.diagnostics:
        if diagnostic.span.file in names:
            assert (diagnostic.code, diagnostic.span.start, diagnostic.span.end) == ("FL007", 0, 0)
    kept = tuple(d for d in result.diagnostics if d.span.file not in names)
    check_result(CompileResult(result.program, kept, result.sources))
    for style in STYLES:
        render(result.diagnostics, result.sources, style)
    assert result.ok == (result.program is not None)
    return result


def codes(result: CompileResult) -> list[str]:
    return [d.code for d in result.diagnostics]


def test_the_keywords_come_from_the_grammar() -> None:
    # Guards the token soups: they must be made of the real language.
    assert {"flow", "step", "say", "ask", "when", "if", "elif", "else", "set", "page"} <= set(
        KEYWORDS
    )


# ----------------------------------------------------------------------------- random text


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    checked(compile_source(text, "random.flow"))


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_read_as_latin1(data: bytes) -> None:
    # Every byte a character: control characters, NUL, DEL, C1 controls, NBSP …
    checked(compile_source(data.decode("latin-1"), "bytes.flow"))


PIECES = st.one_of(
    st.sampled_from(KEYWORDS),
    st.sampled_from(["f", "s", "x", "_", "a1", "user", "message", "page", "loop", "é", "ß"]),
    st.sampled_from(['"x"', '"{{ x }}"', '"{% if x %}y{% endif %}"', '"', '""', '"\\"', "'x'"]),
    st.sampled_from(["0", "1.5", "99999999999999999999999", "-1", "3 seconds", "2 tries"]),
    st.sampled_from(["=", "==", ",", ".", "(", ")", "[", "]", "{{", "}}", "{%", "%}", "#", "\\"]),
    st.sampled_from(["\x00", "\ufeff", "\u2028", "\x0b", "\x0c", "\x85", "\u200b", "\r", "\t"]),
    st.text(max_size=4),
)
LINE_ENDS = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\n\n", "\n# comment\n"])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 8), st.lists(PIECES, max_size=8), LINE_ENDS), max_size=20))
def test_token_soups(lines: list[tuple[int, list[str], str]]) -> None:
    text = "".join("  " * indent + " ".join(words) + end for indent, words, end in lines)
    checked(compile_source(text, "soup.flow"))


@FUZZ
@given(st.lists(st.sampled_from(KEYWORDS), min_size=1, max_size=12), st.sampled_from(KEYWORDS))
def test_keyword_lines_inside_a_valid_flow(words: list[str], name: str) -> None:
    # Plausible lines in plausible places: every block level of a flow that compiles.
    line = " ".join(words)
    for indent in range(5):
        text = FRAME.format("hi") + "  " * indent + line + "\n"
        checked(compile_source(text, "lines.flow"))
    checked(compile_source(f'flow {name}\n  when user says "x"\n  step {name}\n    {line}\n'))


# ----------------------------------------------------------------------------- characters


@settings(FUZZ, max_examples=60)  # each example compiles the whole example program
@given(
    st.sampled_from(["\x00", "\ufeff", "\r", "\u2028", "\x0c", "\x85", "\u202e", "\t"]),
    st.data(),
)
def test_odd_characters_anywhere_in_a_valid_program(char: str, data: st.DataObject) -> None:
    program = example_program()
    index = data.draw(st.integers(0, len(program) - 1))
    text = program[index].text
    at = data.draw(st.integers(0, len(text)))
    edited = SourceFile(
        program[index].name, text[:at] + char * data.draw(st.integers(1, 3)) + text[at:]
    )
    checked(compile_sources([*program[:index], edited, *program[index + 1 :]]))


def test_nul_inside_a_text_is_a_character_like_any_other() -> None:
    result = checked(compile_source(FRAME.format("a\x00b")))
    assert result.ok


@pytest.mark.parametrize("ending", ["\r\n", "\r", "\n\r"])
def test_line_endings(ending: str) -> None:
    lf = compile_sources(example_program())
    assert lf.ok
    program = [SourceFile(s.name, s.text.replace("\n", ending)) for s in example_program()]
    result = checked(compile_sources(program))
    if ending == "\r\n":
        # Windows line endings are just line endings: the same program, the same findings.
        assert result.ok
        assert codes(result) == codes(lf)
        assert sorted(result.program.flows) == sorted(lf.program.flows)  # type: ignore[union-attr]
    else:
        assert not result.ok


def test_a_bom_is_dropped_when_reading_a_file(tmp_path: Path) -> None:
    plain, bom = tmp_path / "plain.flow", tmp_path / "bom.flow"
    plain.write_text(FRAME.format("hi"), encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + FRAME.format("hi").encode())
    assert checked(compile_paths([bom])).ok
    assert codes(compile_paths([plain])) == codes(compile_paths([bom])) == []


def test_a_bom_in_the_middle_of_a_file_is_an_error_not_a_crash() -> None:
    text = FRAME.format("hi")
    result = checked(compile_source(text[:20] + "\ufeff" + text[20:]))
    assert not result.ok


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("depth", [1, 10, MAX_NESTING - 2, MAX_NESTING - 1, 64, 200, 2000])
def test_deeply_nested_blocks(depth: int) -> None:
    text = 'flow f\n  when user says "x"\n  step s\n    set x = 1\n'
    text += "".join("    " + "  " * i + "if x\n" for i in range(depth))
    text += "    " + "  " * depth + 'say "deep"\n'
    result = checked(compile_source(text))
    if depth <= MAX_NESTING - 2:  # flow, step and the `if`s
        assert result.ok, codes(result)
    else:
        # One clear error where the nesting goes too deep, nothing else.
        assert codes(result) == ["FL008"]
        (diagnostic,) = result.diagnostics
        assert "nesting" in diagnostic.message
        # Line 4 is the `set`, then one `if` per line: the first line too deep is reported.
        assert result.sources["<input>"].position(diagnostic.span.start).line == MAX_NESTING + 4


@pytest.mark.parametrize("depth", [20, 60, 300, 3000])  # Jinja's parser recurses per level
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param("    set y = {open}1{close}\n", id="brackets-in-a-set"),
        pytest.param('    say "{{{{ {open}1{close} }}}}"\n', id="brackets-in-a-text"),
        pytest.param('    if {nots}true\n      say "x"\n', id="nots-in-a-condition"),
        pytest.param('    say "{ifs}x{endifs}"\n', id="ifs-in-a-text"),
    ],
)
def test_deeply_nested_expressions_and_texts(depth: int, shape: str) -> None:
    line = shape.format(
        open="(" * depth,
        close=")" * depth,
        nots="not " * depth,
        ifs="{% if true %}" * depth,
        endifs="{% endif %}" * depth,
    )
    checked(compile_source('flow f\n  when user says "x"\n  step s\n' + line))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(FRAME.format("a" * 1_000_000), id="a-1MB-text"),
        pytest.param(FRAME.format("{{ x }}" * 20_000), id="20k-lookups"),
        pytest.param(FRAME.replace("flow f", "flow " + "f" * 100_000), id="100k-flow-name"),
        pytest.param(FRAME.replace("step s", "step " + "s" * 100_000), id="100k-step-name"),
        pytest.param(
            'flow f\n  when user says "x"\n  step s\n    set ' + "v" * 100_000 + " = 1\n",
            id="100k-variable",
        ),
        pytest.param(
            'flow f\n  when user says "x"\n  step s\n    set v = ' + "1 + " * 20_000 + "1\n",
            id="20k-term-expression",
        ),
        pytest.param(
            'flow f\n  when user says "x"\n  step s\n    say "x"' + ' or "y"' * 5_000 + "\n",
            id="5k-variations",
        ),
        pytest.param(FRAME + "    " + "#" * 1_000_000 + "\n", id="1MB-comment"),
        pytest.param(FRAME + "\n" * 200_000, id="200k-blank-lines"),
        pytest.param(" " * 100_000 + FRAME, id="100k-spaces-first"),
        pytest.param(FRAME.format("hi") + "    say" + ' "x"' * 10_000 + "\n", id="10k-texts"),
    ],
)
def test_huge_lines_names_and_files(text: str) -> None:
    checked(compile_source(text))


# ----------------------------------------------------------------------------- not UTF-8


@settings(FUZZ, max_examples=40)  # each example writes and compiles the example program
@given(st.data())
def test_a_file_that_is_not_utf8_is_one_error(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    program = example_program()
    index = data.draw(st.integers(0, len(program) - 1), label="file")
    raw = program[index].text.encode("utf-8")
    at = data.draw(st.integers(0, len(raw)), label="offset")
    bad = data.draw(
        st.sampled_from(
            [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe9", b"\x80", b"\xf8\x88"]
        )
    )
    folder = tmp_path_factory.mktemp("notutf8")
    for i, source in enumerate(program):
        path = folder / Path(source.name).name
        path.write_bytes(raw[:at] + bad + raw[at:] if i == index else source.text.encode())
    broken = folder / Path(program[index].name).name
    with pytest.raises(UnicodeDecodeError) as decoding:
        broken.read_bytes().decode("utf-8")
    result = checked(compile_paths([folder]), unreadable=(broken,))
    # One error for the file that cannot be read; the other files' references to its flows
    # are not reported as unknown (the program is incomplete, not wrong).
    assert [(d.code, d.span.file) for d in result.errors] == [("FL007", str(broken))]
    (diagnostic,) = result.errors
    assert diagnostic.notes == (f"the first bad byte is at byte {decoding.value.start}",)


def test_flowc_check_on_a_file_that_is_not_utf8_gives_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot: object
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("good.flow").write_text(FRAME.format("hi"), encoding="utf-8")
    Path("latin1.flow").write_bytes(
        FRAME.replace("flow f", "flow g").format("café").encode("latin-1")
    )
    Path("utf16.flow").write_bytes(FRAME.replace("flow f", "flow h").format("hi").encode("utf-16"))
    for style in ("short", "rich"):
        result = CliRunner().invoke(main, ["check", ".", "--format", style], catch_exceptions=False)
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        assert result.stdout.count("error[FL007]") == 2
        assert result.stdout == snapshot(name=style)
