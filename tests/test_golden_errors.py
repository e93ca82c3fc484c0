"""Golden invalid programs: every diagnostic is written next to the line it points at.

Layout of tests/golden/errors/:

- `NAME.flow` holds chunks separated by a line `---`. Each chunk compiles on its own, as a
  file named `NAME.flow` whose chunk keeps its line numbers (the lines above it are blank).
- `NAME/` (a folder) is one program: its `.flow` files compile together, with names such as
  `NAME/a.flow`. Use it for what needs several files (a flow defined in two files).

Expectations are comments: `# expect: FL104 "regex on the message" FL201` on the primary line
of each diagnostic (the regex is optional). `# expect-eof: FL006 "…"` (on any line) expects a
diagnostic at the end of its file, where nothing follows but blanks and comments. Missing and
unexpected diagnostics both fail, and every span must lie inside its file.

The whole rich rendering of each golden file or folder is also snapshotted (syrupy, one text
file each), so changes in wording or caret placement show up in review."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from flowlang import codes
from flowlang.checks import names
from flowlang.compiler import CompileResult, compile_source, compile_sources
from flowlang.diagnostics import Diagnostic, Severity
from flowlang.load import compile_paths
from flowlang.render import render
from flowlang.source import SourceFile, Span

GOLDEN = Path(__file__).resolve().parent / "golden" / "errors"

_ANNOTATION = re.compile(r"#\s*expect(-eof)?:(.*)$")
_EXPECTATION = re.compile(r'\s*(FL\d{3})(?:\s+"((?:[^"\\]|\\.)*)")?')
_COMMENT = re.compile(r"#[^\n]*")


@dataclass(frozen=True)
class Expectation:
    """One `# expect:` item: a code, an optional regex, and where (None: end of file)."""

    file: str
    line: int | None
    code: str
    pattern: str | None

    def matches(self, diagnostic: Diagnostic, line: int, at_end: bool) -> bool:
        """Whether `diagnostic` (at `line`) is the one this expectation describes."""
        if diagnostic.span.file != self.file or diagnostic.code != self.code:
            return False
        if (self.line is None and not at_end) or (self.line is not None and self.line != line):
            return False
        return self.pattern is None or re.search(self.pattern, diagnostic.message) is not None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}:<end>"
        return f"{where}: {self.code}" + (f' "{self.pattern}"' if self.pattern else "")


@dataclass(frozen=True)
class Case:
    """Sources that compile together as one program, with what they must produce."""

    id: str
    group: str  # the golden file or folder, for the snapshot
    sources: tuple[SourceFile, ...]
    expectations: tuple[Expectation, ...]


def parse_expectations(source: SourceFile) -> list[Expectation]:
    """The `# expect:` annotations of a source (chunk padding lines are blank)."""
    found: list[Expectation] = []
    for number, line in enumerate(source.text.split("\n"), start=1):
        annotation = _ANNOTATION.search(line)
        if not annotation:
            continue
        rest = annotation.group(2)
        position = 0
        while rest[position:].strip():
            item = _EXPECTATION.match(rest, position)
            if item is None:
                raise ValueError(f"{source.name}:{number}: cannot read expectation {rest!r}")
            pattern = item.group(2).replace('\\"', '"') if item.group(2) is not None else None
            line_number = None if annotation.group(1) else number
            found.append(Expectation(source.name, line_number, item.group(1), pattern))
            position = item.end()
    return found


def _chunks(path: Path) -> list[Case]:
    lines = path.read_text(encoding="utf-8").split("\n")
    cases: list[Case] = []
    start = 0
    for index in range(len(lines) + 1):
        if index < len(lines) and lines[index] != "---":
            continue
        chunk = lines[start:index]
        if any(line.strip() for line in chunk):
            # Blank lines above keep the chunk's line numbers those of the golden file.
            source = SourceFile(path.name, "\n" * start + "\n".join(chunk).rstrip("\n") + "\n")
            cases.append(
                Case(
                    f"{path.stem}:{start + 1}",
                    path.name,
                    (source,),
                    tuple(parse_expectations(source)),
                )
            )
        start = index + 1
    return cases


def _folder(path: Path) -> Case:
    sources = tuple(
        SourceFile(f"{path.name}/{p.relative_to(path).as_posix()}", p.read_text(encoding="utf-8"))
        for p in sorted(path.rglob("*.flow"))
    )
    expectations = tuple(e for s in sources for e in parse_expectations(s))
    return Case(path.name, path.name, sources, expectations)


def load_cases() -> list[Case]:
    """Every golden error case: chunks of the files, then the folders."""
    cases = [c for p in sorted(GOLDEN.glob("*.flow")) for c in _chunks(p)]
    cases += [_folder(p) for p in sorted(GOLDEN.iterdir()) if p.is_dir()]
    return cases


CASES = load_cases()
GROUPS = sorted({c.group for c in CASES})


def compile_case(case: Case) -> CompileResult:
    """Compile a case as one program."""
    return compile_sources(case.sources)


def _at_end(text: str, offset: int) -> bool:
    return not _COMMENT.sub("", text[offset:]).strip()


def _describe(diagnostic: Diagnostic, result: CompileResult) -> str:
    source = result.sources.get(diagnostic.span.file)
    line = source.position(diagnostic.span.start).line if source else 0
    return f"{diagnostic.span.file}:{line}: {diagnostic.code} {diagnostic.message!r}"


def mismatches(case: Case, result: CompileResult) -> list[str]:
    """What differs between the expectations and the diagnostics, in words."""
    pending = list(case.expectations)
    unexpected: list[str] = []
    for diagnostic in result.diagnostics:
        source = result.sources.get(diagnostic.span.file)
        line = source.position(diagnostic.span.start).line if source else 0
        at_end = source is not None and _at_end(source.text, diagnostic.span.start)
        # An annotation on the line wins over one for the end of the file.
        ranked = sorted(pending, key=lambda e: e.line is None)
        match = next((e for e in ranked if e.matches(diagnostic, line, at_end)), None)
        if match is None:
            unexpected.append("unexpected " + _describe(diagnostic, result))
        else:
            pending.remove(match)
    return unexpected + [f"missing {e}" for e in pending]


def span_problems(result: CompileResult) -> list[str]:
    """Spans that are not inside the file they name."""
    problems = []
    for diagnostic in result.diagnostics:
        labels = (diagnostic.primary, *diagnostic.secondary)
        for label in labels:
            span: Span = label.span
            source = result.sources.get(span.file)
            if source is None:
                problems.append(f"{diagnostic.code}: unknown file {span.file!r}")
            elif not 0 <= span.start <= span.end <= len(source.text):
                problems.append(f"{diagnostic.code}: span {span} outside 0..{len(source.text)}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_error_case(case: Case) -> None:
    result = compile_case(case)
    problems = mismatches(case, result)
    assert not problems, f"golden case {case.id}:\n  " + "\n  ".join(problems)
    assert not span_problems(result), span_problems(result)
    if any(d.severity is Severity.ERROR for d in result.diagnostics):
        assert result.program is None


class TextSnapshot(SingleFileSnapshotExtension):
    """One reviewable `.txt` file per snapshot."""

    _write_mode = WriteMode.TEXT
    file_extension = "txt"


@pytest.fixture
def snapshot_text(snapshot: Any) -> Any:
    """Snapshots stored as plain text files."""
    return snapshot.use_extension(TextSnapshot)


@pytest.mark.parametrize("group", GROUPS)
def test_rich_rendering_of_golden_errors(group: str, snapshot_text: Any) -> None:
    parts = []
    for case in (c for c in CASES if c.group == group):
        result = compile_case(case)
        shown = render(result.diagnostics, result.sources, "rich") or "(no diagnostics)"
        parts.append(f"=== {case.id}\n{shown}")
    assert "\n\n".join(parts) + "\n" == snapshot_text


# ------------------------------------------------------------------ the harness itself


def test_missing_and_unexpected_diagnostics_are_both_reported() -> None:
    source = SourceFile(
        "t.flow",
        'flow a\n  step s\n    goto nowhere  # expect: FL105\n    say "x"  # expect: FL201\n',
    )
    case = Case("t", "t", (source,), tuple(parse_expectations(source)))
    problems = mismatches(case, compile_case(case))
    assert any(p.startswith("unexpected t.flow:3: FL104") for p in problems), problems
    assert "missing t.flow:3: FL105" in problems
    assert "missing t.flow:4: FL201" in problems
    assert any(p.startswith("unexpected t.flow:4: FL206") for p in problems), problems


def test_expectations_are_read_with_several_codes_and_regexes() -> None:
    source = SourceFile("t.flow", 'x  # expect: FL104 "a \\"b\\"" FL201\n# expect-eof: FL006\n')
    assert parse_expectations(source) == [
        Expectation("t.flow", 1, "FL104", 'a "b"'),
        Expectation("t.flow", 1, "FL201", None),
        Expectation("t.flow", None, "FL006", None),
    ]


def test_chunks_keep_the_line_numbers_of_the_golden_file() -> None:
    for case in CASES:
        if case.group.endswith(".flow"):
            first = int(case.id.rsplit(":", 1)[1])
            text = case.sources[0].text
            assert text[: first - 1] == "\n" * (first - 1)
            assert text[first - 1 :].strip()


# ------------------------------------------------------------------ codes without a golden file


def test_fl007_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.flow"
    path.write_bytes('flow caf\xe9\n  step s\n    say "Caf\xe9"\n'.encode("latin-1"))
    result = compile_paths([path])
    assert [d.code for d in result.diagnostics] == ["FL007"]
    (diagnostic,) = result.diagnostics
    assert diagnostic.span == Span(str(path), 0, 0)
    assert "UTF-8" in diagnostic.message
    assert diagnostic.notes == ("the first bad byte is at byte 8",)
    assert result.program is None


def test_fl900_a_crashing_check_becomes_one_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(names, "check_names", crash)
    text = 'flow a\n  when user says "hi"\n  step s\n    end\n  step orphan\n    end\n'
    result = compile_source(text, "t.flow")
    internal = [d for d in result.diagnostics if d.code == codes.INTERNAL.code]
    assert len(internal) == 1
    assert internal[0].severity is Severity.ERROR
    assert internal[0].span == Span("t.flow", 0, 0)
    assert any("RuntimeError: boom" in note for note in internal[0].notes)
    # The other check families still ran.
    assert [d.code for d in result.diagnostics if d is not internal[0]] == ["FL201"]
    assert result.program is None
