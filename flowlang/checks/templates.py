"""Texts, expressions and patterns: broken Jinja, broken expressions, broken regular
expressions, greeting tokens, and variables that nothing sets (FL301–FL304, FL107)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from jinja2 import TemplateSyntaxError, nodes
from jinja2.parser import Parser

from flowlang import ast, codes
from flowlang.checks.program import (
    MESSAGE_ACTIONS,
    NAMESPACES,
    Program,
    did_you_mean,
    templated_texts,
    walk,
)
from flowlang.checks.texts import (
    ENV,
    blocks_of,
    broken_block,
    inner_span,
    locate_in_expression,
    locate_in_text,
    parse_expression,
    parse_text,
)
from flowlang.diagnostics import DiagnosticSink, Severity
from flowlang.ir import USER_FIELDS
from flowlang.source import Span

#: The only tokens Messenger replaces in a greeting.
GREETING_TOKENS = frozenset({"user_first_name", "user_last_name", "user_full_name"})
#: `user.field` outside quoted text (quotes are blanked out before this runs).
_USER_FIELD = re.compile(r"(?<![\w.])user\s*\.\s*([A-Za-z_]\w*)")
_QUOTED = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")
_GREETING_PART = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\{\{|\{%|\{#")
#: What reading a private attribute needs somewhere in the source: `._x`, `['__x']`, `attr(`.
_MAYBE_PRIVATE = re.compile(r"\._|\[\s*[\'\"]__|\battr\b")
_PRIVATE_HELP = (
    "a text can read variables, their fields (`user.first_name`) and filters; names that "
    "start with `_` belong to Python: the sandbox refuses them when the text is sent, and "
    "the person gets the error message instead"
)


def check_templates(program: Program, sink: DiagnosticSink) -> None:
    """Parse every templated text, expression and pattern of the program."""
    for flow in program.flows:
        scope = _Scope(program, sink)
        if flow.error_message is not None:
            scope.text(flow.error_message)
        for trigger in flow.triggers:
            if trigger.kind == "regex":
                for pattern in trigger.values:
                    _pattern(pattern, sink)
        for step in flow.steps:
            scope.actions(walk(step.body))
    for template in program.templates:
        # Other lines are reported by the name checks (FL112); their texts would only echo it.
        body = [a for a in template.body if isinstance(a, MESSAGE_ACTIONS)]
        _Scope(program, sink, template).actions(body)
    for page in program.pages:
        if page.error_message is not None:
            _Scope(program, sink).text(page.error_message)
        for greeting in page.greetings:
            _greeting(greeting.text, sink)


class _Scope:
    """Checks the texts of a flow or the page (which see every conversation variable), or of
    a template (which sees only its parameters, as the runtime renders it)."""

    def __init__(
        self, program: Program, sink: DiagnosticSink, template: ast.Template | None = None
    ) -> None:
        self.sink = sink
        self.template = template
        self.set_vars = program.set_vars
        if template is None:
            self.known = program.set_vars | NAMESPACES
        else:
            self.known = frozenset(p.text for p in template.params) | NAMESPACES

    def actions(self, actions: Iterable[ast.Action]) -> None:
        for action in actions:
            for text in templated_texts(action):
                self.text(text)
            if isinstance(action, ast.Set):
                self.expression(action.expr)
            elif isinstance(action, ast.If):
                for branch in action.branches:
                    self.expression(branch.condition)
            elif isinstance(action, ast.Ask):
                for expect in action.expects:
                    if expect.pattern is not None:
                        _pattern(expect.pattern, self.sink)

    def text(self, text: ast.Text) -> None:
        parsed = parse_text(text.value)
        if parsed.error is not None:
            self.sink.report(
                codes.TEMPLATE_SYNTAX,
                broken_block(text),
                message=parsed.error,
                label="cannot be read",
                help="values are written `{{ name }}`; to show `{{` as it is, write `{{ '{{' }}`",
            )
            return
        private = _private_attribute(text.value, expression=False)
        if private is not None:
            at = text.value.find(private)
            self.sink.report(
                codes.TEMPLATE_SYNTAX,
                text.span if at < 0 else inner_span(text, at, at + len(private)),
                message=f"`{private}` is private and cannot be read",
                label="private",
                help=_PRIVATE_HELP,
                severity=Severity.WARNING,
            )
        for name in sorted(parsed.reads - self.known):
            self.unknown(name, locate_in_text(text, name), name in parsed.guarded)
        if "user" in parsed.reads:
            for start, chunk in blocks_of(text.value):
                for offset, field in _user_fields(chunk):
                    at = start + offset
                    self.unknown_field(field, inner_span(text, at, at + len(field)))

    def expression(self, expr: ast.Expr) -> None:
        parsed = parse_expression(expr.source)
        if parsed.error is not None:
            self.sink.report(
                codes.EXPRESSION_SYNTAX,
                expr.span,
                message=parsed.error,
                label="cannot be read",
                help='for example: `score + 1`, `topic == "Billing"`, `lead_email and '
                "user.first_name`",
            )
            return
        private = _private_attribute(expr.source, expression=True)
        if private is not None:
            at = expr.source.find(private)
            self.sink.report(
                codes.EXPRESSION_SYNTAX,
                expr.span
                if at < 0
                else Span(
                    expr.span.file, expr.span.start + at, expr.span.start + at + len(private)
                ),
                message=f"`{private}` is private and cannot be read",
                label="private",
                help=_PRIVATE_HELP,
                severity=Severity.WARNING,
            )
        for name in sorted(parsed.reads - self.known):
            self.unknown(name, locate_in_expression(expr, name), name in parsed.guarded)
        if "user" in parsed.reads:
            for offset, field in _user_fields(expr.source):
                at = expr.span.start + offset
                self.unknown_field(field, Span(expr.span.file, at, at + len(field)))

    def unknown_field(self, field: str, span: Span) -> None:
        if field in USER_FIELDS:
            return
        self.sink.report(
            codes.UNKNOWN_USER_FIELD,
            span,
            field=field,
            label="not a profile field",
            help=did_you_mean(field, USER_FIELDS)
            or "the profile has: " + ", ".join(f"`user.{f}`" for f in USER_FIELDS),
        )

    def unknown(self, name: str, span: Span, guarded: bool) -> None:
        template = self.template
        if template is None:
            self.sink.report(
                codes.UNKNOWN_VARIABLE,
                span,
                name=name,
                label="never set",
                help=did_you_mean(name, self.known)
                or f"set it first with `set {name} = …` or `ask … as {name}`",
            )
            return
        # A template sees only its parameters (and user, message, page) when it is sent.
        params = [p.text for p in template.params]
        listed = ", ".join([*params, name])
        fix = (
            f"a template sees only its parameters: write `template {template.name.text} with "
            f'{listed}` and send it with `{name} = "{{{{ {name} }}}}"`'
        )
        if name not in self.set_vars:
            self.sink.report(
                codes.UNKNOWN_VARIABLE,
                span,
                name=name,
                label="never set",
                help=did_you_mean(name, params) or fix,
            )
        elif not guarded:
            # Set by a flow, but out of the template's sight: sending it fails at run time.
            self.sink.report(
                codes.TEMPLATE_ARGUMENTS,
                span,
                message=f"template `{template.name.text}` uses `{name}`, which is not one of "
                "its parameters",
                label="not a parameter",
                help=fix,
            )


def _private_attribute(source: str, *, expression: bool) -> str | None:
    """The first attribute starting with `_` that a (valid) text or expression reads:
    `x.__class__`, `x['__class__']`, `x|attr('__class__')`. The runtime's sandbox refuses them
    (a fault); a warning here tells the author before a live conversation does."""
    if _MAYBE_PRIVATE.search(source) is None:
        return None
    try:
        tree: nodes.Node = (
            Parser(ENV, source, state="variable").parse_expression()
            if expression
            else ENV.parse(source)
        )
    except (TemplateSyntaxError, RecursionError):
        return None  # reported (or not) by the syntax checks
    found: list[str] = []
    for node in (tree, *tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter))):
        if isinstance(node, nodes.Getattr):
            name: object = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
            if not (isinstance(name, str) and name.startswith("__")):
                continue
        elif (
            isinstance(node, nodes.Filter)
            and node.name == "attr"
            and node.args
            and isinstance(node.args[0], nodes.Const)
        ):
            name = node.args[0].value
        else:
            continue
        if isinstance(name, str) and name.startswith("_"):
            found.append(name)
    # The one written first (the tree lists the outermost, i.e. last, attribute first).
    return min(found, key=source.find, default=None)


def _user_fields(source: str) -> list[tuple[int, str]]:
    """The `user.field` reads in a piece of Jinja: (offset of the field, field)."""
    blanked = _QUOTED.sub(lambda m: " " * len(m.group(0)), source)
    return [(m.start(1), m.group(1)) for m in _USER_FIELD.finditer(blanked)]


def _pattern(pattern: ast.Text, sink: DiagnosticSink) -> None:
    try:
        re.compile(pattern.value)
    except re.error as exc:
        position = exc.pos
        span = pattern.span
        if position is not None:
            end = min(position + 1, len(pattern.value))
            span = inner_span(pattern, position, max(end, position))
        sink.report(
            codes.BAD_PATTERN,
            span,
            message=exc.msg,
            label="here",
            help="check the brackets and backslashes; to match a character such as `(` or `?` "
            "as it is, put a backslash before it",
        )


def _greeting(text: ast.Text, sink: DiagnosticSink) -> None:
    for part in _GREETING_PART.finditer(text.value):
        token = part.group(0)
        inner = token[2:-2].strip() if len(token) > 2 else ""
        if token[:2] == "{{" and token[2:-2] in GREETING_TOKENS:
            continue
        spaced = token[:2] == "{{" and inner in GREETING_TOKENS
        sink.report(
            codes.GREETING_TOKEN,
            inner_span(text, part.start(), part.end()),
            label="not a greeting token",
            help=(
                f"write it without spaces: `{{{{{inner}}}}}`"
                if spaced
                else "the greeting is shown before the conversation starts, so flow variables "
                "and `{{ user.… }}` are not available; use `{{user_first_name}}` instead"
            ),
        )
