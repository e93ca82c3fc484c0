"""Static checks over the syntax tree of a whole program, one rule family per module.

Each `check_*` function takes the program's symbols and the sink, reports what it finds and
never raises for an author's mistake. A family that fails anyway (a bug in flowc) becomes one
FL900 diagnostic, and the other families still run."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

from flowlang import ast, codes
from flowlang.checks import dataflow, graph, limits, names, platform, templates, triggers
from flowlang.checks.program import Program
from flowlang.diagnostics import DiagnosticSink
from flowlang.source import Span

Check = Callable[[Program, DiagnosticSink], None]


def _families() -> tuple[tuple[str, Check], ...]:
    # Looked up at each run (not bound at import) so every family can be replaced in tests.
    return (
        ("names", names.check_names),
        ("the flow graph", graph.check_graph),
        ("variables", dataflow.check_reads),
        ("triggers", triggers.check_triggers),
        ("templates and expressions", templates.check_templates),
        ("Messenger limits", limits.check_limits),
        ("retired Messenger features", platform.check_platform),
    )


def check_program(modules: Sequence[ast.Module], sink: DiagnosticSink) -> None:
    """Run every check over a parsed program."""
    program = Program.of(modules)
    where = Span(modules[0].file, 0, 0) if modules else Span("<input>", 0, 0)
    for family, check in _families():
        try:
            check(program, sink)
        except Exception:
            sink.report(
                codes.INTERNAL,
                where,
                notes=(f"while checking {family}", traceback.format_exc().rstrip()),
                help="please report this at the Flowlang issue tracker with the file that "
                "caused it",
            )
