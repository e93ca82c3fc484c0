"""Reading `.flow` files from disk: the only place the compiler touches the file system."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flowlang import codes
from flowlang.compiler import CompileResult, compile_sources
from flowlang.diagnostics import Diagnostic, DiagnosticSink
from flowlang.source import SourceFile, Span


def find_flow_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the `.flow` files under them (sorted); files are kept as given."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.flow") if p.is_file()))
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def read_source(path: Path, sink: DiagnosticSink) -> SourceFile | None:
    """Read one file as UTF-8 (a leading BOM is dropped). Problems become diagnostics."""
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        sink.report(
            codes.SYNTAX, Span(name, 0, 0), message=f"cannot read this file: {exc.strerror}"
        )
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        sink.report(
            codes.NOT_UTF8,
            Span(name, 0, 0),
            notes=(f"the first bad byte is at byte {exc.start}",),
            help="save the file with UTF-8 encoding (most editors offer it in 'Save as')",
        )
        return None
    return SourceFile(name, text)


def compile_paths(paths: Iterable[str | Path]) -> CompileResult:
    """Compile every `.flow` file found in `paths` as one program."""
    sink = DiagnosticSink()
    sources = []
    for path in find_flow_files(paths):
        source = read_source(path, sink)
        if source is not None:
            sources.append(source)
    extra: list[Diagnostic] = sink.diagnostics
    return compile_sources(sources, extra=extra)
