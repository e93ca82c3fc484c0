"""The compiler facade: source files in, `CompileResult` (IR or diagnostics) out.

Stages: parse → lower → check → build. Each stage is gated on the errors of the one before,
and an unexpected exception anywhere becomes one FL900 diagnostic instead of a traceback."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flowlang import ast, codes
from flowlang.build import build
from flowlang.checks import check_program
from flowlang.diagnostics import Diagnostic, DiagnosticSink, Severity
from flowlang.ir import FlowProgram
from flowlang.parser import parse
from flowlang.source import SourceFile, Span


@dataclass(frozen=True)
class CompileResult:
    """The outcome of a compile: the program (None when there are errors) and all diagnostics."""

    program: FlowProgram | None
    diagnostics: tuple[Diagnostic, ...]
    sources: dict[str, SourceFile] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        """Only the errors."""
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        """Only the warnings."""
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors


log = logging.getLogger("flowlang.compiler")


def _internal_error(sink: DiagnosticSink, span: Span, stage: str) -> None:
    # The traceback goes to the log (FLOWC_DEBUG=1 shows it), never into the author's output.
    exc = sys.exc_info()[1]
    log.debug("internal compiler error while %s", stage, exc_info=True)
    sink.report(
        codes.INTERNAL,
        span,
        notes=(f"while {stage}: {type(exc).__name__}: {exc}",),
        help="please report this at the Flowlang issue tracker with the file that caused it",
    )


class _GcPause:
    """Pauses CPython's cyclic garbage collector while any compile runs (nesting and threads
    allowed; it is switched back on only if it was on).

    A compile allocates many small objects that all stay alive until it ends (syntax tree,
    IR), and every full collection that growth triggers re-scans all of them: measured by
    bench/compile.py, that made a 2,000-step flow cost ~1.5× per step what a 200-step one does.
    Reference counting still frees everything a compile drops at once; the few reference
    cycles (caught exceptions) wait for the next collection after the pause."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


_gc_paused = _GcPause()


#: Findings that are only true when every file of the program could be read.
_WHOLE_PROGRAM_CODES = frozenset(
    c.code
    for c in (
        codes.UNKNOWN_FLOW,
        codes.UNKNOWN_TEMPLATE,
        codes.UNKNOWN_VARIABLE,
        codes.FLOW_NEVER_STARTS,
    )
)


def compile_sources(
    sources: Iterable[SourceFile], *, extra: Sequence[Diagnostic] = ()
) -> CompileResult:
    """Compile several files as one program (flows may refer to each other)."""
    with _gc_paused:
        return _compile_sources(sources, extra)


def _compile_sources(sources: Iterable[SourceFile], extra: Sequence[Diagnostic]) -> CompileResult:
    files = {s.name: s for s in sources}
    sink = DiagnosticSink(list(extra))
    modules: list[ast.Module] = []
    for source in files.values():
        file_sink = DiagnosticSink()
        try:
            module = parse(source, file_sink)  # parses and lowers to the AST in one pass
            if module is not None:
                modules.append(module)
        except Exception:
            _internal_error(file_sink, Span(source.name, 0, 0), f"reading {source.name}")
        sink.diagnostics.extend(file_sink.diagnostics)
    # A file that could not be read or parsed leaves the program incomplete: the other files
    # are still checked, but findings that depend on the whole program are left out (a flow
    # "not found" may well be in the broken file), and nothing is built.
    incomplete = len(modules) < len(files) or any(d.severity is Severity.ERROR for d in extra)
    if modules:
        check_sink = DiagnosticSink()
        try:
            check_program(modules, check_sink)
        except Exception:
            first = next(iter(files), "<input>")
            _internal_error(check_sink, Span(first, 0, 0), "checking the flows")
        found = check_sink.diagnostics
        if incomplete:
            found = [d for d in found if d.code not in _WHOLE_PROGRAM_CODES]
        sink.diagnostics.extend(found)
    program = None
    if not incomplete and not sink.has_errors:
        try:
            program = build(modules, files)
        except Exception:
            first = next(iter(files), "<input>")
            _internal_error(sink, Span(first, 0, 0), "building the compiled flows")
    return CompileResult(program, tuple(sort_diagnostics(sink.diagnostics, files)), files)


def compile_source(text: str, name: str = "<input>") -> CompileResult:
    """Compile one file's text."""
    return compile_sources([SourceFile(name, text)])


def sort_diagnostics(
    diagnostics: Iterable[Diagnostic], files: dict[str, SourceFile]
) -> list[Diagnostic]:
    """Order diagnostics by file (as given), then position."""
    order = {name: i for i, name in enumerate(files)}
    return sorted(
        diagnostics, key=lambda d: (order.get(d.span.file, len(order)), d.span.start, d.code)
    )
