"""Trigger conflicts between active flows (FL204): the same keyword at the same priority,
the same postback, quick reply or referral, two Get Started flows, two fallback flows."""

from __future__ import annotations

from flowlang import ast, codes
from flowlang.checks.program import Program
from flowlang.diagnostics import DiagnosticSink, Label
from flowlang.keywords import normalise as normalise_keyword
from flowlang.source import Span

_PAYLOAD_WORDS = {"postback": "postback", "quick_reply": "quick reply", "referral": "referral"}
#: Postbacks and quick replies share one set of payloads: either trigger matches either tap.
_PAYLOAD_GROUP = {"postback": "payload", "quick_reply": "payload", "referral": "referral"}


def check_triggers(program: Program, sink: DiagnosticSink) -> None:
    """Report triggers of two active flows that would fire on the same message."""
    keywords: dict[tuple[str, float], tuple[ast.Flow, ast.Text]] = {}
    payloads: dict[tuple[str, str], tuple[ast.Flow, ast.Text]] = {}
    singles: dict[str, tuple[ast.Flow, ast.Trigger]] = {}
    for flow in program.flows:
        if flow.inactive:
            continue
        priority = flow.priority.value if flow.priority else 0
        for trigger in flow.triggers:
            if trigger.kind == "keyword":
                for text in trigger.values:
                    key = (normalise_keyword(text.value), priority)
                    if not key[0]:
                        continue
                    first = keywords.setdefault(key, (flow, text))
                    if first[0] is not flow:
                        _keyword(text, first, priority, sink)
            elif trigger.kind in _PAYLOAD_WORDS:
                for text in trigger.values:
                    key = (_PAYLOAD_GROUP[trigger.kind], text.value)
                    first = payloads.setdefault(key, (flow, text))
                    if first[0] is not flow:
                        word = _PAYLOAD_WORDS[trigger.kind]
                        _conflict(
                            text.span,
                            first[1].span,
                            first[0],
                            f'the {word} "{text.value}" already starts flow `{first[0].name.text}`',
                            f"only one flow can start on a {word}; remove it from one of them",
                            sink,
                        )
            elif trigger.kind in ("get_started", "fallback"):
                earlier = singles.setdefault(trigger.kind, (flow, trigger))
                if earlier[0] is flow:
                    continue
                other = earlier[0].name.text
                if trigger.kind == "get_started":
                    message = f"flow `{other}` already starts when the user taps Get Started"
                else:
                    message = f"flow `{other}` already answers when nothing else matches"
                _conflict(
                    trigger.span,
                    earlier[1].span,
                    earlier[0],
                    message,
                    "only one active flow can have this trigger; remove it from one of them, or "
                    "switch one flow off with `inactive`",
                    sink,
                )


def _keyword(
    text: ast.Text,
    first: tuple[ast.Flow, ast.Text],
    priority: float,
    sink: DiagnosticSink,
) -> None:
    other_flow, other = first
    shown = f"{priority:g}"
    if other.value == text.value:
        message = (
            f'the keyword "{text.value}" also starts flow `{other_flow.name.text}`, which has '
            f"the same priority ({shown})"
        )
    else:
        message = (
            f'the keyword "{text.value}" counts as the same as "{other.value}", which starts '
            f"flow `{other_flow.name.text}` with the same priority ({shown})"
        )
    _conflict(
        text.span,
        other.span,
        other_flow,
        message,
        "give one of the two flows a higher `priority`, or keep the keyword in only one of them "
        "(case, accents and punctuation do not count)",
        sink,
    )


def _conflict(
    span: Span,
    earlier: Span,
    other: ast.Flow,
    message: str,
    help_text: str,
    sink: DiagnosticSink,
) -> None:
    sink.report(
        codes.TRIGGER_CONFLICT,
        span,
        message=message,
        label="conflicts with another flow",
        secondary=(Label(earlier, f"in flow `{other.name.text}`"),),
        help=help_text,
    )
