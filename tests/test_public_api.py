"""The public API of the `flowlang` package is small, explicit and pinned (httpx style)."""

from __future__ import annotations

import doctest
from types import ModuleType

import flowlang
from flowlang import compiler, diagnostics, ir, load, source
from flowlang import render as render_function

PUBLIC = [
    "IR_VERSION",
    "CompileResult",
    "Diagnostic",
    "FlowProgram",
    "Severity",
    "SourceFile",
    "Span",
    "compile_paths",
    "compile_source",
    "compile_sources",
    "render",
]


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest (ruff's RUF022 order)."""
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


def test_all_is_pinned_and_sorted() -> None:
    assert flowlang.__all__ == PUBLIC
    assert flowlang.__all__ == sorted(flowlang.__all__, key=_isort_key)


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(flowlang).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(flowlang.__all__)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from flowlang import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC)


def test_names_are_the_real_objects() -> None:
    from flowlang.render import render

    assert flowlang.compile_source is compiler.compile_source
    assert flowlang.compile_sources is compiler.compile_sources
    assert flowlang.CompileResult is compiler.CompileResult
    assert flowlang.compile_paths is load.compile_paths
    assert flowlang.Diagnostic is diagnostics.Diagnostic
    assert flowlang.Severity is diagnostics.Severity
    assert flowlang.Span is source.Span
    assert flowlang.SourceFile is source.SourceFile
    assert flowlang.FlowProgram is ir.FlowProgram
    assert flowlang.IR_VERSION == ir.IR_VERSION == 1
    assert render_function is render


def test_package_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(flowlang, report=False)
    assert (failures, tried) == (0, 4)
