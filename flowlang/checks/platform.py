"""Platform features Meta retired: the list template, nested persistent menus and message
tags other than HUMAN_AGENT and CUSTOMER_FEEDBACK (FL501–FL504)."""

from __future__ import annotations

from flowlang import ast, codes
from flowlang.checks.program import Program, did_you_mean, flow_actions, walk
from flowlang.diagnostics import DiagnosticSink
from flowlang.source import Span

KNOWN_TAGS = ("HUMAN_AGENT", "CUSTOMER_FEEDBACK")
#: Refused by the Send API (error 100) from 27 April 2026.
RETIRED_TAGS = ("ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE")


def check_platform(program: Program, sink: DiagnosticSink) -> None:
    """Report retired Messenger features."""
    actions = [a for flow in program.flows for a in flow_actions(flow)]
    actions += [a for template in program.templates for a in walk(template.body)]
    for action in actions:
        if isinstance(action, ast.ListTemplate):
            sink.report(
                codes.LIST_TEMPLATE,
                Span(action.span.file, action.span.start, action.span.start + len("list")),
                label="retired by Meta in 2019",
                help="use a `carousel` with one `card` for each item instead",
            )
        elif isinstance(action, (ast.Say, ast.Carousel)):
            for tag in action.tags:
                _tag(tag, sink)
    for page in program.pages:
        for menu in page.menus:
            for item in menu.items:
                if item.children is not None:
                    sink.report(
                        codes.NESTED_MENU,
                        item.span,
                        label="submenus were removed by Meta",
                        help="put these items in the menu itself (up to 20), or make this item "
                        "start a flow that offers them as buttons",
                    )


def _tag(tag: ast.Tag, sink: DiagnosticSink) -> None:
    name = tag.name.text
    if name in KNOWN_TAGS:
        return
    if name in RETIRED_TAGS:
        sink.report(
            codes.RETIRED_TAG,
            tag.name.span,
            tag=name,
            label="Messenger refuses messages with this tag",
            help="use `tag HUMAN_AGENT` for a reply written by a person within 7 days, or send "
            "the message within 24 hours of the user's last message (no tag needed)",
        )
        return
    if name.upper() in KNOWN_TAGS:
        help_text = f"write it in capitals: `{name.upper()}`"
    else:
        help_text = did_you_mean(name.upper(), KNOWN_TAGS) or (
            "the tags Messenger accepts are HUMAN_AGENT and CUSTOMER_FEEDBACK"
        )
    sink.report(codes.UNKNOWN_TAG, tag.name.span, tag=name, label="unknown tag", help=help_text)
