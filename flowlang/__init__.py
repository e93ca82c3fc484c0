r"""Flowlang: a plain-language language for Facebook Messenger flows, and its compiler.

>>> from flowlang import compile_source, render
>>> result = compile_source('flow hello\n  step start\n    say "Hi!\n', "hello.flow")
>>> result.ok
False
>>> print(render(result.diagnostics, result.sources, "short"))
hello.flow:3:9: error[FL003]: this text has no closing quote
"""

from flowlang.compiler import CompileResult, compile_source, compile_sources
from flowlang.diagnostics import Diagnostic, Severity
from flowlang.ir import IR_VERSION, FlowProgram
from flowlang.load import compile_paths
from flowlang.render import render
from flowlang.source import SourceFile, Span

__all__ = [
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
