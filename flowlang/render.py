"""Rendering diagnostics as text: short, rich (source line and carets), JSON and GitHub.

Pure functions: no I/O, and ANSI colour only when the caller asks for it. Nothing else in
Flowlang formats a diagnostic."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from flowlang.diagnostics import Diagnostic, Label, Severity
from flowlang.source import Position, SourceFile, Span

Style = Literal["short", "rich", "json", "github"]
STYLES: tuple[Style, ...] = ("rich", "short", "json", "github")

#: How many columns a tab takes in the rich form (rustc and codespan use 4 as well).
TAB_WIDTH = 4

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_SEVERITY_COLOR = {
    Severity.ERROR: "\x1b[1;31m",
    Severity.WARNING: "\x1b[1;33m",
    Severity.NOTE: "\x1b[1;36m",
}
_GUTTER_COLOR = "\x1b[1;34m"
_HELP_COLOR = "\x1b[1;36m"


def render(
    diagnostics: Iterable[Diagnostic],
    sources: dict[str, SourceFile],
    style: Style,
    color: bool = False,
) -> str:
    """Render diagnostics in one of the four styles, without a trailing line break.

    `sources` maps file names to their text; a diagnostic whose file is missing there (a file
    that could not be read) is still rendered, at line 1, column 1, without a source line.
    `color` adds ANSI colours to the short and rich styles; JSON and GitHub never have any."""
    items = list(diagnostics)
    if style == "short":
        return "\n".join(_short(d, sources, color) for d in items)
    if style == "rich":
        return "\n\n".join(_rich(d, sources, color) for d in items)
    if style == "json":
        return json.dumps([to_json(d, sources) for d in items], indent=2, ensure_ascii=False)
    if style == "github":
        return "\n".join(_github(d, sources) for d in items)
    raise ValueError(f"unknown diagnostic style {style!r}; use one of {', '.join(STYLES)}")


# -- positions


@dataclass(frozen=True, slots=True)
class _Where:
    start: Position
    end: Position


def _where(span: Span, sources: dict[str, SourceFile]) -> _Where:
    source = sources.get(span.file)
    if source is None:
        return _Where(Position(1, 1), Position(1, 1))
    return _Where(source.position(span.start), source.position(span.end))


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and text else text


def _headline(diagnostic: Diagnostic) -> str:
    return f"{diagnostic.severity.value}[{diagnostic.code}]"


# -- short


def _short(diagnostic: Diagnostic, sources: dict[str, SourceFile], color: bool) -> str:
    start = _where(diagnostic.span, sources).start
    location = f"{diagnostic.span.file}:{start.line}:{start.column}:"
    head = _paint(_headline(diagnostic), _SEVERITY_COLOR[diagnostic.severity], color)
    return f"{_paint(location, _BOLD, color)} {head}: {diagnostic.message}"


# -- json


def to_json(diagnostic: Diagnostic, sources: dict[str, SourceFile]) -> dict[str, object]:
    """One diagnostic as the `--format json` object: 1-based positions, exclusive end column."""
    where = _where(diagnostic.span, sources)
    return {
        "file": diagnostic.span.file,
        "line": where.start.line,
        "column": where.start.column,
        "end_line": where.end.line,
        "end_column": where.end.column,
        "severity": diagnostic.severity.value,
        "code": diagnostic.code,
        "message": diagnostic.message,
        "help": diagnostic.help,
        "notes": list(diagnostic.notes),
    }


# -- github

_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.NOTE: "notice"}


def escape_github_data(text: str) -> str:
    """Escape the message part of a workflow command (after `::`)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_github_property(text: str) -> str:
    """Escape a property value of a workflow command (`file=…`, `title=…`)."""
    return escape_github_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(diagnostic: Diagnostic, sources: dict[str, SourceFile]) -> str:
    where = _where(diagnostic.span, sources)
    properties = {
        "file": diagnostic.span.file,
        "line": where.start.line,
        "col": where.start.column,
        "endLine": where.end.line,
        "endColumn": where.end.column,
        "title": diagnostic.code,
    }
    props = ",".join(
        f"{key}={escape_github_property(str(value))}" for key, value in properties.items()
    )
    message = diagnostic.message
    if diagnostic.help:
        message += f" — help: {diagnostic.help}"
    command = _GITHUB_COMMAND[diagnostic.severity]
    return f"::{command} {props}::{escape_github_data(message)}"


# -- rich


def char_width(char: str) -> int:
    """Terminal columns a character takes: tabs expand, wide CJK/emoji take 2, marks take 0."""
    if char == "\t":
        return TAB_WIDTH
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _display(text: str) -> str:
    """The line as shown: tabs become spaces and control characters a visible placeholder,
    so that the caret line below can line up with it character for character."""
    out = []
    for char in text:
        if char == "\t":
            out.append(" " * TAB_WIDTH)
        elif unicodedata.category(char) == "Cc":
            out.append("\ufffd")
        else:
            out.append(char)
    return "".join(out)


def _columns(text: str) -> int:
    return sum(char_width(c) for c in text)


@dataclass(frozen=True, slots=True)
class _Mark:
    line: int
    start_col: int  # 1-based, on `line`
    end_col: int  # exclusive, on `line` (multi-line spans are clamped to their first line)
    text: str
    primary: bool


def _mark(label: Label, source: SourceFile, primary: bool) -> _Mark:
    start = source.position(label.span.start)
    end = source.position(max(label.span.start, label.span.end))
    line_len = len(source.line_text(start.line))
    end_col = end.column if end.line == start.line else line_len + 1
    end_col = min(end_col, line_len + 1)
    return _Mark(start.line, start.column, max(end_col, start.column), label.text, primary)


def _underline(mark: _Mark, line: str, color: bool, severity: Severity) -> str:
    before = _columns(line[: mark.start_col - 1])
    width = max(1, _columns(line[mark.start_col - 1 : mark.end_col - 1]))
    char = "^" if mark.primary else "-"
    paint = _SEVERITY_COLOR[severity] if mark.primary else _GUTTER_COLOR
    text = char * width + (f" {mark.text}" if mark.text else "")
    return " " * before + _paint(text, paint, color)


def _rich(diagnostic: Diagnostic, sources: dict[str, SourceFile], color: bool) -> str:
    severity = diagnostic.severity
    head = _paint(_headline(diagnostic), _SEVERITY_COLOR[severity], color)
    lines = [f"{head}{_paint(': ' + diagnostic.message, _BOLD, color)}"]

    # Group labels by file, primary file first, and each file's marks by line.
    labels = [(diagnostic.primary, True), *((label, False) for label in diagnostic.secondary)]
    files: dict[str, list[tuple[Label, bool]]] = {}
    for label, primary in labels:
        files.setdefault(label.span.file, []).append((label, primary))

    numbers = [
        sources[name].position(label.span.start).line
        for name, group in files.items()
        if name in sources
        for label, _ in group
    ]
    width = len(str(max(numbers, default=1)))
    pad = " " * width
    gutter = _paint(f"{pad} |", _GUTTER_COLOR, color)

    for index, (name, group) in enumerate(files.items()):
        first = group[0][0].span
        start = _where(first, sources).start
        arrow = "-->" if index == 0 else ":::"
        lines.append(
            f"{pad}{_paint(arrow, _GUTTER_COLOR, color)} {name}:{start.line}:{start.column}"
        )
        source = sources.get(name)
        if source is None:
            continue
        lines.append(gutter)
        lines.extend(_snippet(group, source, width, color, severity))
    if diagnostic.notes or diagnostic.help:
        lines.append(gutter)
    for note in diagnostic.notes:
        lines.append(_annotation(pad, "note", note, color))
    if diagnostic.help:
        lines.append(_annotation(pad, "help", diagnostic.help, color))
    return "\n".join(line.rstrip() for line in lines)


def _snippet(
    group: Sequence[tuple[Label, bool]],
    source: SourceFile,
    width: int,
    color: bool,
    severity: Severity,
) -> list[str]:
    marks = sorted(
        (_mark(label, source, primary) for label, primary in group),
        key=lambda m: (m.line, not m.primary, m.start_col),
    )
    out: list[str] = []
    previous: int | None = None
    pad = " " * width
    for line_no in dict.fromkeys(m.line for m in marks):
        if previous is not None and line_no > previous + 1:
            out.append(_paint("...", _GUTTER_COLOR, color))
        text = source.line_text(line_no)
        number = _paint(f"{line_no:>{width}} |", _GUTTER_COLOR, color)
        out.append(f"{number} {_display(text)}")
        for mark in (m for m in marks if m.line == line_no):
            underline = _underline(mark, text, color, severity)
            out.append(f"{_paint(f'{pad} |', _GUTTER_COLOR, color)} {underline}")
        previous = line_no
    return out


def _annotation(pad: str, kind: str, text: str, color: bool) -> str:
    prefix = f"{pad} = {kind}: "
    shown = _paint(f"{kind}:", _HELP_COLOR if kind == "help" else _BOLD, color)
    # Continuation lines (a multi-line note) line up under the first line's text.
    rest = text.split("\n")
    first = f"{pad} {_paint('=', _GUTTER_COLOR, color)} {shown} {rest[0]}"
    return "\n".join([first, *(" " * len(prefix) + more for more in rest[1:])])
