"""Name checks: duplicate and unknown flows, steps and templates, template arguments,
reserved names, and lines that are not allowed where they are written (FL101–FL114)."""

from __future__ import annotations

from collections.abc import Iterable

from flowlang import ast, codes
from flowlang.checks.program import (
    NAMESPACES,
    Program,
    did_you_mean,
    menu_items,
    steps_by_name,
    target_name,
    targets_of,
    walk,
)
from flowlang.diagnostics import DiagnosticSink, Label, Severity
from flowlang.source import Span

#: What a line is called in messages, for the actions a template may not contain.
_NOT_IN_TEMPLATES: dict[type, str] = {
    ast.Ask: "ask",
    ast.Set: "set",
    ast.If: "if",
    ast.Goto: "goto",
    ast.End: "end",
    ast.Call: "call",
    ast.Resume: "resume",
    ast.HandOver: "hand over",
    ast.TakeBack: "take back",
}


def check_names(program: Program, sink: DiagnosticSink) -> None:
    """Report duplicate, unknown, reserved and misplaced names."""
    _duplicates(program.flows, codes.DUPLICATE_FLOW, sink, "flow")
    _duplicates(program.templates, codes.DUPLICATE_TEMPLATE, sink, "template")
    for page in program.pages[1:]:
        sink.report(
            codes.DUPLICATE_PAGE,
            _first_word(page.span, "page"),
            label="a second `page` block",
            secondary=(Label(_first_word(program.pages[0].span, "page"), "first one here"),),
            help="keep one `page` block for the whole program and move these settings into it",
        )
    for flow in program.flows:
        _check_flow(program, flow, sink)
    for template in program.templates:
        _check_template(program, template, sink)
    for page in program.pages:
        _check_page(program, page, sink)


def _first_word(span: Span, word: str) -> Span:
    return Span(span.file, span.start, span.start + len(word))


def _duplicates(
    items: Iterable[ast.Flow | ast.Template],
    code: codes.DiagnosticCode,
    sink: DiagnosticSink,
    kind: str,
) -> None:
    first: dict[str, ast.Name] = {}
    for item in items:
        name = item.name
        if name.text not in first:
            first[name.text] = name
            continue
        sink.report(
            code,
            name.span,
            name=name.text,
            label=f"a second {kind} named `{name.text}`",
            secondary=(Label(first[name.text].span, "first defined here"),),
            help=f"rename one of them; every {kind} needs its own name",
        )


def _check_flow(program: Program, flow: ast.Flow, sink: DiagnosticSink) -> None:
    if not flow.steps:
        sink.report(
            codes.NO_STEPS,
            flow.name.span,
            flow=flow.name.text,
            label="this flow has nothing to do",
            help="add a `step` with at least one line, for example `step start` and "
            '`say "Hello!"` below it',
        )
        return
    steps = steps_by_name(flow)
    first: dict[str, ast.Step] = {}
    for step in flow.steps:
        if step.name.text in first:
            sink.report(
                codes.DUPLICATE_STEP,
                step.name.span,
                flow=flow.name.text,
                name=step.name.text,
                label="a second step with this name",
                secondary=(Label(first[step.name.text].name.span, "first defined here"),),
                help="rename one of the steps; `goto` needs to know which one you mean",
            )
        else:
            first[step.name.text] = step
    interrupting = any(t.interrupting for t in flow.triggers)
    scope = _Scope(program, sink, flow, steps)
    for step in flow.steps:
        for action in walk(step.body):
            scope.action(action)
            if isinstance(action, ast.Resume) and not interrupting:
                sink.report(
                    codes.NOT_ALLOWED_HERE,
                    action.span,
                    severity=Severity.WARNING,
                    message="`resume` only makes sense in a flow that interrupts another one, "
                    "and this flow has no `interrupt when …` line",
                    label="works like `end` here",
                    help="write `end` instead, or add an `interrupt when …` line to the flow",
                )


def _check_template(program: Program, template: ast.Template, sink: DiagnosticSink) -> None:
    seen: dict[str, ast.Name] = {}
    for param in template.params:
        if param.text in NAMESPACES:
            _reserved(param, sink)
        if param.text in seen:
            sink.report(
                codes.DUPLICATE_SETTING,
                param.span,
                setting=f"parameter `{param.text}`",
                where=f"template `{template.name.text}`",
                label="given again here",
                secondary=(Label(seen[param.text].span, "first given here"),),
                help="keep only one of them",
            )
        seen.setdefault(param.text, param)
    scope = _Scope(program, sink, None, {})
    for action in template.body:
        word = _NOT_IN_TEMPLATES.get(type(action))
        if word is None:
            scope.action(action)
            continue
        sink.report(
            codes.NOT_ALLOWED_HERE,
            _first_word(action.span, word),
            message=f"a template can only send messages; `{word}` cannot be used in a template",
            label="not allowed in a template",
            help="templates may contain `say`, `send`, `carousel`, `typing` and `pause`; move "
            "this line into a step of the flow that sends the template",
        )


def _check_page(program: Program, page: ast.Page, sink: DiagnosticSink) -> None:
    scope = _Scope(program, sink, None, {})
    for menu in page.menus:
        for item in menu_items(menu.items):
            if item.target is None:
                continue
            if item.target.kind == "phone":
                _not_allowed_target(item.target, "a menu item cannot call a phone number", sink)
            else:
                scope.target(item.target, where="the page")
    for group in page.ice_breakers:
        for question in group.questions:
            if question.target.kind in ("url", "phone"):
                verb = "open a web page" if question.target.kind == "url" else "call a number"
                _not_allowed_target(question.target, f"an ice breaker cannot {verb}", sink)
            else:
                scope.target(question.target, where="the page")


def _not_allowed_target(target: ast.Target, message: str, sink: DiagnosticSink) -> None:
    sink.report(
        codes.NOT_ALLOWED_HERE,
        target.span,
        message=message,
        label="not allowed here",
        help='use `starts flow_name` or `sends "PAYLOAD"` instead',
    )


def _reserved(name: ast.Name, sink: DiagnosticSink) -> None:
    sink.report(
        codes.RESERVED_NAME,
        name.span,
        name=name.text,
        label="reserved",
        help=f"`{name.text}` holds what Messenger tells us (as in `{{{{ {name.text}.… }}}}`); "
        f"choose another name, such as `{name.text}_answer`",
    )


class _Scope:
    """Checks the references of actions in one flow, template or page."""

    def __init__(
        self,
        program: Program,
        sink: DiagnosticSink,
        flow: ast.Flow | None,
        steps: dict[str, int],
    ) -> None:
        self.program = program
        self.sink = sink
        self.flow = flow
        self.steps = steps

    def action(self, action: ast.Action) -> None:
        match action:
            case ast.Goto():
                self.step(action.step, where="a template")
            case ast.Call():
                self.flow_ref(action.flow)
            case ast.UseTemplate():
                self.use_template(action)
            case ast.Set():
                if action.var.text in NAMESPACES:
                    _reserved(action.var, self.sink)
            case ast.Ask():
                self.ask(action)
        for target in targets_of(action):
            self.target(target, where="a template")

    def target(self, target: ast.Target, where: str) -> None:
        name = target_name(target)
        if name is None:
            return
        if target.kind == "step":
            self.step(name, where)
        else:
            self.flow_ref(name)

    def step(self, name: ast.Name, where: str) -> None:
        if self.flow is None:
            self.sink.report(
                codes.NOT_ALLOWED_HERE,
                name.span,
                message=f"{where} is not inside a flow, so it has no step `{name.text}` to go to",
                label="no steps here",
                help='use `starts flow_name` to start a flow, or `sends "PAYLOAD"`',
            )
            return
        if name.text not in self.steps:
            self.sink.report(
                codes.UNKNOWN_STEP,
                name.span,
                flow=self.flow.name.text,
                name=name.text,
                label="no step with this name",
                help=did_you_mean(name.text, self.steps),
            )

    def flow_ref(self, name: ast.Name) -> None:
        if name.text not in self.program.flow_by_name:
            self.sink.report(
                codes.UNKNOWN_FLOW,
                name.span,
                name=name.text,
                label="no flow with this name",
                help=did_you_mean(name.text, self.program.flow_by_name),
            )

    def use_template(self, action: ast.UseTemplate) -> None:
        template = self.program.template_by_name.get(action.name.text)
        if template is None:
            self.sink.report(
                codes.UNKNOWN_TEMPLATE,
                action.name.span,
                name=action.name.text,
                label="no template with this name",
                help=did_you_mean(action.name.text, self.program.template_by_name),
            )
            return
        params = [p.text for p in template.params]
        given: dict[str, ast.TemplateArg] = {}
        for arg in action.args:
            name = arg.name.text
            if name in given:
                self.sink.report(
                    codes.TEMPLATE_ARGUMENTS,
                    arg.name.span,
                    message=f"`{name}` is given twice",
                    label="given again here",
                    secondary=(Label(given[name].name.span, "first given here"),),
                    help="keep only one of them",
                )
            elif name not in params:
                known = ", ".join(f"`{p}`" for p in params) or "none"
                self.sink.report(
                    codes.TEMPLATE_ARGUMENTS,
                    arg.name.span,
                    message=f"template `{template.name.text}` has no parameter `{name}`",
                    label="unknown parameter",
                    help=did_you_mean(name, params) or f"its parameters are: {known}",
                    secondary=(Label(template.name.span, "template defined here"),),
                )
            given.setdefault(name, arg)
        missing = [p for p in params if p not in given]
        if missing:
            listed = _join(f"`{p}`" for p in missing)
            values = "a value" if len(missing) == 1 else "values"
            self.sink.report(
                codes.TEMPLATE_ARGUMENTS,
                action.name.span,
                message=f"template `{template.name.text}` needs {values} for {listed}",
                label="missing " + listed,
                help=(
                    f'add `{missing[0]} = "…"` after `with`'
                    if action.args
                    else f'add `with {missing[0]} = "…"` after the template name'
                ),
                secondary=(Label(template.name.span, "template defined here"),),
            )

    def ask(self, action: ast.Ask) -> None:
        if action.var is not None and action.var.text in NAMESPACES:
            _reserved(action.var, self.sink)
        seen: dict[str, ast.Text] = {}
        offered = [c.title for c in action.choices] + [b.title for b in action.buttons]
        for title in offered:
            key = " ".join(title.value.casefold().split())
            if key in seen:
                self.sink.report(
                    codes.DUPLICATE_CHOICE,
                    title.span,
                    title=title.value,
                    label="offered again here",
                    secondary=(Label(seen[key].span, "first offered here"),),
                    help="give each choice its own title, so the answer says which one was meant",
                )
            else:
                seen[key] = title
        for button in action.buttons:
            if button.target.kind in ("url", "phone"):
                _not_allowed_target(
                    button.target,
                    "a button of a question must give an answer; it cannot "
                    + ("open a web page" if button.target.kind == "url" else "call a number"),
                    self.sink,
                )


def _join(words: Iterable[str]) -> str:
    items = list(words)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
