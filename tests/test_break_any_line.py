"""Breaking any single line of an example flow makes the program fail, with its first error on
that line, in plain words: (a) an unclosed quote, (b) a stray word at the end of the line,
(c) a misspelled step name (which must be FL104, unknown step)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from corpus import example_program

from flowlang.compiler import CompileResult, compile_sources
from flowlang.diagnostics import Diagnostic
from flowlang.source import SourceFile

ROOT = Path(__file__).resolve().parent.parent


# Lark's names for terminals; none may reach a flow author.
LEAKS = re.compile(r"\b(NAME|STRING|EXPR|NUMBER)\b|_NL|_INDENT|_DEDENT|\$END|__ANON|Token\(")
# Nor may the grammar's rule names (`to_payload`, `keyword_trigger`, …).
GRAMMAR = (ROOT / "grammar" / "flow.lark").read_text(encoding="utf-8")
RULE_NAMES = {
    name
    for name in re.findall(r"^[!?]?([a-z_][a-z0-9_]*)\s*:", GRAMMAR, re.MULTILINE)
    if "_" in name.strip("_")
}
# In "expected A, B or C, found D", every A, B, C is a `keyword` or words such as "a name".
EXPECTED_LIST = re.compile(r"expected (.*?), found ")
STEP_REFERENCE = re.compile(r"\bgo ?to\s+([A-Za-z_][A-Za-z0-9_]*)")
STEP_DEFINITION = re.compile(r"^\s*step\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def _texts_and_code_end(line: str) -> tuple[list[tuple[int, int]], int]:
    """The quoted texts of a line as (start, end) and where its code ends (before a comment)."""
    texts: list[tuple[int, int]] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch in "\"'":
            j = i + 1
            while j < len(line) and line[j] != ch:
                j += 2 if line[j] == "\\" else 1
            if ch == '"':
                texts.append((i, min(j + 1, len(line))))
            i = j + 1
        elif ch == "#":
            return texts, len(line[:i].rstrip())
        else:
            i += 1
    return texts, len(line.rstrip())


@dataclass(frozen=True)
class Case:
    """One broken line: which program and file, the 1-based line, and the new file text."""

    program: int
    file: int
    line: int
    kind: str
    text: str
    code: str | None = None  # the diagnostic code the first error must have, if fixed

    @property
    def id(self) -> str:
        return f"{Path(PROGRAMS[self.program][self.file].name).stem}:{self.line}:{self.kind}"


def _near_miss(name: str, taken: set[str]) -> str:
    """A misspelling of `name` that names no step: swapped letters, a dropped or added one."""
    mid = max(1, len(name) // 2)
    candidates = [
        name[: mid - 1] + name[mid] + name[mid - 1] + name[mid + 1 :] if len(name) > 2 else "",
        name[:-1],
        name + "s",
        name + "x",
    ]
    for candidate in candidates:
        if candidate.isidentifier() and candidate != name and candidate not in taken:
            return candidate
    raise AssertionError(f"no misspelling of {name!r}")


def _cases() -> list[Case]:
    cases: list[Case] = []
    for p, program in enumerate(PROGRAMS):
        for f, source in enumerate(program):
            lines = source.text.split("\n")
            steps = set(STEP_DEFINITION.findall(source.text))
            for number, line in enumerate(lines, start=1):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                texts, code_end = _texts_and_code_end(line)

                def edited(new_line: str, lines: list[str] = lines, number: int = number) -> str:
                    return "\n".join([*lines[: number - 1], new_line, *lines[number:]])

                if texts and line[texts[-1][1] - 1] == '"' and texts[-1][1] - texts[-1][0] >= 2:
                    close = texts[-1][1] - 1
                    text = edited(line[:close] + line[close + 1 :])
                    cases.append(Case(p, f, number, "unclosed-quote", text))
                text = edited(line[:code_end] + " banana" + line[code_end:])
                cases.append(Case(p, f, number, "stray-word", text))
                # Blank out texts so a `goto` inside one is not taken for a reference.
                code = list(line[:code_end])
                for start, end in texts:
                    code[start:end] = " " * (end - start)
                match = STEP_REFERENCE.search("".join(code))
                if match:
                    typo = _near_miss(match.group(1), steps)
                    new = line[: match.start(1)] + typo + line[match.end(1) :]
                    cases.append(Case(p, f, number, "misspelled-step", edited(new), "FL104"))
    return cases


PROGRAMS = [example_program()]
CASES = _cases()


def _compile(case: Case) -> CompileResult:
    program = PROGRAMS[case.program]
    broken = SourceFile(program[case.file].name, case.text)
    # The broken file comes first, so "first error" means first in that file.
    others = [s for i, s in enumerate(program) if i != case.file]
    return compile_sources([broken, *others])


def _show(diagnostic: Diagnostic, result: CompileResult) -> str:
    pos = result.sources[diagnostic.span.file].position(diagnostic.span.start)
    return f"{diagnostic.span.file}:{pos.line}:{pos.column}: {diagnostic.code} {diagnostic.message}"


def test_there_are_cases_of_every_kind() -> None:
    assert {c.kind for c in CASES} == {"unclosed-quote", "stray-word", "misspelled-step"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_breaking_a_line_reports_it_first_in_plain_words(case: Case) -> None:
    result = _compile(case)
    assert result.errors, f"no error for:\n{case.text.splitlines()[case.line - 1]}"
    first = result.errors[0]
    listing = "\n".join(_show(d, result) for d in result.errors)
    broken_name = PROGRAMS[case.program][case.file].name
    assert first.span.file == broken_name, listing
    assert result.sources[broken_name].position(first.span.start).line == case.line, listing
    if case.code is not None:
        assert first.code == case.code, listing
    program_text = "\n".join(s.text for s in result.sources.values())
    for diagnostic in result.diagnostics:
        assert_plain_words(diagnostic, program_text)


def assert_plain_words(diagnostic: Diagnostic, program_text: str) -> None:
    """No parser vocabulary in what the author reads (names from their own flows are fine)."""
    for words in (diagnostic.message, diagnostic.help or "", *diagnostic.notes):
        assert not LEAKS.search(words), f"{diagnostic.code}: {words!r}"
        for rule in RULE_NAMES:
            if re.search(rf"\b{rule}\b", words) and rule not in program_text:
                raise AssertionError(f"rule name {rule!r} in {diagnostic.code}: {words!r}")
    listed = EXPECTED_LIST.search(diagnostic.message)
    if listed:
        for item in re.split(r", | or ", listed.group(1)):
            assert item.startswith(("`", "a ", "an ", "the ", "…")), (item, diagnostic.message)
