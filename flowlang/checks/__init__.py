"""Static checks over the syntax tree of a whole program, one rule family per module.

Each `check_*` function takes the modules and the sink, reports what it finds and never
raises for an author's mistake."""

from __future__ import annotations

from collections.abc import Sequence

from flowlang import ast
from flowlang.diagnostics import DiagnosticSink


def check_program(modules: Sequence[ast.Module], sink: DiagnosticSink) -> None:
    """Run every check over a parsed program."""
