"""Diagnostics: what the compiler tells a flow author, collected and never raised."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowlang.codes import DiagnosticCode
    from flowlang.source import Span


class Severity(enum.StrEnum):
    """How serious a diagnostic is. Only errors fail `flowc check` (warnings do with --strict)."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Label:
    """A span with a short text shown under the caret underline."""

    span: Span
    text: str = ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding: a stable code, a one-line message, where, and how to fix it."""

    code: str
    severity: Severity
    message: str
    primary: Label
    secondary: tuple[Label, ...] = ()
    notes: tuple[str, ...] = ()
    help: str | None = None

    @property
    def span(self) -> Span:
        """The primary span."""
        return self.primary.span


@dataclass
class DiagnosticSink:
    """Collects diagnostics from every stage; reporting never interrupts compilation."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def report(
        self,
        code: DiagnosticCode,
        span: Span,
        *,
        label: str = "",
        help: str | None = None,
        secondary: tuple[Label, ...] = (),
        notes: tuple[str, ...] = (),
        severity: Severity | None = None,
        **fields: Any,
    ) -> Diagnostic:
        """Record a diagnostic whose message is the code's template filled with `fields`."""
        diagnostic = Diagnostic(
            code=code.code,
            severity=severity or code.severity,
            message=code.template.format(**fields),
            primary=Label(span, label),
            secondary=secondary,
            notes=notes,
            help=help,
        )
        self.diagnostics.append(diagnostic)
        return diagnostic

    @property
    def has_errors(self) -> bool:
        """Whether any error (not warning) has been reported."""
        return any(d.severity is Severity.ERROR for d in self.diagnostics)
