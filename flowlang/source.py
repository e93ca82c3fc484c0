"""Source files and spans: where every diagnostic and IR node points back to."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """A range of characters in one source file: offsets into the text, end exclusive."""

    file: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column, as editors and `file:line:col` show them."""

    line: int
    column: int


@dataclass(frozen=True)
class SourceFile:
    """The text of one `.flow` file, with a line index built once."""

    name: str
    text: str
    line_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        find = self.text.find
        i = find("\n")
        while i != -1:
            starts.append(i + 1)
            i = find("\n", i + 1)
        object.__setattr__(self, "line_starts", tuple(starts))

    def position(self, offset: int) -> Position:
        """Turn a character offset into a 1-based line and column."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect_right(self.line_starts, offset) - 1
        return Position(line + 1, offset - self.line_starts[line] + 1)

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, without its line break."""
        if line < 1 or line > len(self.line_starts):
            return ""
        start = self.line_starts[line - 1]
        end = self.text.find("\n", start)
        if end == -1:
            end = len(self.text)
        return self.text[start:end].rstrip("\r")

    def span(self, start: int, end: int) -> Span:
        """A span of this file."""
        return Span(self.name, start, end)

    def line_span(self, line: int) -> Span:
        """The span of a whole 1-based line, without indentation or line break."""
        start = self.line_starts[line - 1]
        text = self.line_text(line)
        indent = len(text) - len(text.lstrip(" \t"))
        # rstrip() also drops other blanks (U+2028, U+3000 …): a line of nothing else must not
        # end before its indentation does.
        return Span(self.name, start + indent, start + max(indent, len(text.rstrip())))
