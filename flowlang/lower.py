"""Lowering: Lark's rule reductions become the `flowlang.ast` syntax tree, with spans.

`Lowering` is given to Lark as its inline `transformer=` (LALR), so no parse tree is ever built:
each rule's callback receives the rule's children as parsed and returns an AST node. Lark is
run with `keep_all_tokens=True` so keyword tokens arrive too: spans come from them, and they are
dropped before the rule methods see the children (the same children Lark's tree would have).

Nothing here raises for author mistakes; repeated settings are reported to the sink (FL109)
and the first one is kept."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from lark import Token

from flowlang import ast, codes
from flowlang.diagnostics import DiagnosticSink, Label
from flowlang.source import SourceFile, Span

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def unescape(raw: str) -> str:
    """Resolve `\\n`, `\\t`, `\\"` and `\\\\`; other backslashes stay (regex patterns need them)."""
    body = raw[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in _ESCAPES:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _start_of(raw: list[Any]) -> int:
    """Where a rule's text starts: its first token (with keep_all_tokens, rules start with one)."""
    for child in raw:
        if type(child) is Token:
            return child.start_pos  # type: ignore[return-value]
        span = getattr(child, "span", None)
        if span is not None:
            return span.start  # type: ignore[no-any-return]
    return 0


def _end_of(raw: list[Any]) -> int:
    """Where a rule's first line ends: at its line break (a trailing comment is not part of the
    construct), else at the end of its last child (constructs inside a line)."""
    for child in raw:
        if type(child) is Token and child.type == "_NL":
            return child.start_pos  # type: ignore[return-value]
    for child in reversed(raw):
        if type(child) is Token:
            if child.type not in ("_INDENT", "_DEDENT"):
                return child.end_pos  # type: ignore[return-value]
            continue
        span = getattr(child, "span", None)
        if span is not None:
            return span.end  # type: ignore[no-any-return]
    return _start_of(raw)


class Lowering:
    """The rule callbacks Lark calls while it parses (its inline `transformer=`).

    One instance lives with the process's parser; `begin` binds it to the file being parsed,
    so callers must parse one file at a time per parser (flowlang.parser holds a lock)."""

    def __init__(
        self, kept_terminals: Collection[str], keep_all_rules: Collection[str] = ()
    ) -> None:
        """Install the rule callbacks. `kept_terminals` are the token types Lark keeps in a
        tree (the grammar's named terminals); `keep_all_rules` are `!rules`, which keep all."""
        self.source = SourceFile("<input>", "")
        self.file = self.source.name
        self.sink = DiagnosticSink()
        kept = frozenset(kept_terminals)
        for rule in RULES:
            method = getattr(self, rule)
            setattr(self, rule, _callback(method, kept, rule in keep_all_rules))

    def begin(self, source: SourceFile, sink: DiagnosticSink) -> None:
        """Lower the next parse into `source`'s nodes, reporting to `sink`."""
        self.source = source
        self.file = source.name
        self.sink = sink

    # -- helpers
    def _span(self, raw: list[Any]) -> Span:
        """The span of a construct's first line (where carets should point)."""
        text = self.source.text
        start = _start_of(raw)
        end = min(_end_of(raw), len(text))
        newline = text.find("\n", start, end)
        if newline != -1:
            end = newline
        while end > start and text[end - 1] in " \t\r":
            end -= 1
        return Span(self.file, start, end)

    def _tok(self, tok: Token) -> Span:
        return Span(self.file, tok.start_pos, tok.end_pos)

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), self._tok(tok))

    def _text(self, tok: Token) -> ast.Text:
        return ast.Text(unescape(str(tok)), self._tok(tok))

    def _number(self, tok: Token) -> ast.Number:
        return ast.Number(float(tok), str(tok), self._tok(tok))

    def _expr(self, tok: Token) -> ast.Expr:
        raw = str(tok).rstrip()
        return ast.Expr(raw, Span(self.file, tok.start_pos, tok.start_pos + len(raw)))

    def _first(self, items: list[Any], kind: type, setting: str, where: str) -> Any:
        found = [i for i in items if type(i) is kind]  # exact: _ErrorMessage subclasses _Title
        for extra in found[1:]:
            self.sink.report(
                codes.DUPLICATE_SETTING,
                extra.span,
                setting=setting,
                where=where,
                label="given again here",
                secondary=(Label(found[0].span, "first given here"),),
                help="keep only one of them",
            )
        return found[0] if found else None

    # -- file and flows
    def start(self, meta: Any, children: list[Any]) -> ast.Module:
        end = len(self.source.text)
        return ast.Module(
            file=self.file,
            flows=tuple(c for c in children if isinstance(c, ast.Flow)),
            templates=tuple(c for c in children if isinstance(c, ast.Template)),
            pages=tuple(c for c in children if isinstance(c, ast.Page)),
            span=Span(self.file, 0, end),
        )

    def flow(self, meta: Any, children: list[Any]) -> ast.Flow:
        name = self._name(children[0])
        members = children[1:]
        where = f"flow `{name.text}`"
        title = self._first(members, _Title, "title", where)
        priority = self._first(members, _Priority, "priority", where)
        inactive = self._first(members, _Inactive, "inactive", where)
        error = self._first(members, _ErrorMessage, "error message", where)
        return ast.Flow(
            name=name,
            title=title.text if title else None,
            priority=priority.number if priority else None,
            inactive=inactive is not None,
            error_message=error.text if error else None,
            triggers=tuple(m for m in members if isinstance(m, ast.Trigger)),
            steps=tuple(m for m in members if isinstance(m, ast.Step)),
            span=self._span(meta),
        )

    def title(self, meta: Any, c: list[Any]) -> _Title:
        return _Title(self._text(c[0]), self._span(meta))

    def priority(self, meta: Any, c: list[Any]) -> _Priority:
        return _Priority(self._number(c[0]), self._span(meta))

    def inactive(self, meta: Any, c: list[Any]) -> _Inactive:
        return _Inactive(self._span(meta))

    def error_message(self, meta: Any, c: list[Any]) -> _ErrorMessage:
        return _ErrorMessage(self._text(c[0]), self._span(meta))

    def trigger(self, meta: Any, c: list[Any]) -> ast.Trigger:
        interrupting = bool(c) and isinstance(c[0], Token) and c[0].type == "INTERRUPT"
        kind, values = c[-1]
        return ast.Trigger(kind, values, interrupting, self._span(meta))

    def _trigger_values(self, kind: str, c: list[Any]) -> tuple[str, tuple[ast.Text, ...]]:
        return kind, tuple(self._text(t) for t in c)

    def get_started_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("get_started", c)

    def keyword_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("keyword", c)

    def postback_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("postback", c)

    def quick_reply_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("quick_reply", c)

    def referral_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("referral", c)

    def regex_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("regex", c)

    def fallback_trigger(self, meta: Any, c: list[Any]) -> Any:
        return self._trigger_values("fallback", c)

    def step(self, meta: Any, c: list[Any]) -> ast.Step:
        return ast.Step(self._name(c[0]), tuple(c[1:]), self._span(meta))

    # -- messages
    def texts(self, meta: Any, c: list[Any]) -> tuple[ast.Text, ...]:
        return tuple(self._text(t) for t in c)

    def say(self, meta: Any, c: list[Any]) -> ast.Say:
        options = c[1] if len(c) > 1 else []
        return ast.Say(
            texts=c[0],
            buttons=tuple(o for o in options if isinstance(o, ast.Button)),
            quick_replies=tuple(o for o in options if isinstance(o, ast.QuickReply)),
            tags=tuple(o for o in options if isinstance(o, ast.Tag)),
            span=self._span(meta),
        )

    def say_options(self, meta: Any, c: list[Any]) -> list[Any]:
        return c

    def button(self, meta: Any, c: list[Any]) -> ast.Button:
        return ast.Button(self._text(c[0]), c[1], self._span(meta))

    def _make_target(
        self, kind: ast.TargetKind, value: Any, meta: Any, webview: str | None = None
    ) -> ast.Target:
        return ast.Target(kind, value, webview, self._span(meta))

    def to_step(self, meta: Any, c: list[Any]) -> ast.Target:
        return self._make_target("step", self._name(c[-1]), meta)

    def to_flow(self, meta: Any, c: list[Any]) -> ast.Target:
        return self._make_target("flow", self._name(c[0]), meta)

    def to_payload(self, meta: Any, c: list[Any]) -> ast.Target:
        return self._make_target("payload", self._text(c[0]), meta)

    def to_url(self, meta: Any, c: list[Any]) -> ast.Target:
        webview = str(c[1]) if len(c) > 1 else None
        return self._make_target("url", self._text(c[0]), meta, webview)

    def to_phone(self, meta: Any, c: list[Any]) -> ast.Target:
        return self._make_target("phone", self._text(c[0]), meta)

    def quick_reply(self, meta: Any, c: list[Any]) -> ast.QuickReply:
        image = next((x for x in c[1:] if isinstance(x, _Image)), None)
        target = next((x for x in c[1:] if isinstance(x, ast.Target)), None)
        return ast.QuickReply(
            "text", self._text(c[0]), image.text if image else None, target, self._span(meta)
        )

    def qr_image(self, meta: Any, c: list[Any]) -> _Image:
        return _Image(self._text(c[0]), self._span(meta))

    def email_quick_reply(self, meta: Any, c: list[Any]) -> ast.QuickReply:
        return ast.QuickReply("email", None, None, None, self._span(meta))

    def phone_quick_reply(self, meta: Any, c: list[Any]) -> ast.QuickReply:
        return ast.QuickReply("phone", None, None, None, self._span(meta))

    def tag(self, meta: Any, c: list[Any]) -> ast.Tag:
        return ast.Tag(self._name(c[0]), self._span(meta))

    # -- questions
    def ask(self, meta: Any, c: list[Any]) -> ast.Ask:
        var = next((x for x in c[1:] if isinstance(x, ast.Name)), None)
        options: list[Any] = next((x for x in c[1:] if isinstance(x, list)), [])
        where = "this question"
        expect = self._first(options, ast.Expect, "expect", where)
        reask = self._first(options, _Reask, "if invalid say", where)
        retry = self._first(options, ast.RetryLimit, "after … tries", where)
        return ast.Ask(
            texts=c[0],
            var=var,
            expects=(expect,) if expect else (),
            choices=tuple(o for o in options if isinstance(o, ast.Choice)),
            buttons=tuple(o for o in options if isinstance(o, ast.Button)),
            quick_replies=tuple(o for o in options if isinstance(o, ast.QuickReply)),
            reasks=(reask.texts,) if reask else (),
            retry_limits=(retry,) if retry else (),
            span=self._span(meta),
        )

    def ask_var(self, meta: Any, c: list[Any]) -> ast.Name:
        return self._name(c[0])

    def ask_options(self, meta: Any, c: list[Any]) -> list[Any]:
        return c

    def expect(self, meta: Any, c: list[Any]) -> ast.Expect:
        kind, pattern = c[-1]
        return ast.Expect(kind, pattern, self._span(meta))

    def expect_text(self, meta: Any, c: list[Any]) -> Any:
        return "text", None

    def expect_number(self, meta: Any, c: list[Any]) -> Any:
        return "number", None

    def expect_email(self, meta: Any, c: list[Any]) -> Any:
        return "email", None

    def expect_phone(self, meta: Any, c: list[Any]) -> Any:
        return "phone", None

    def expect_yes_no(self, meta: Any, c: list[Any]) -> Any:
        return "yes_no", None

    def expect_pattern(self, meta: Any, c: list[Any]) -> Any:
        return "pattern", self._text(c[0])

    def choice(self, meta: Any, c: list[Any]) -> ast.Choice:
        return ast.Choice(self._text(c[0]), c[1] if len(c) > 1 else None, self._span(meta))

    def reask(self, meta: Any, c: list[Any]) -> _Reask:
        return _Reask(c[0], self._span(meta))

    def retry_limit(self, meta: Any, c: list[Any]) -> ast.RetryLimit:
        target = c[-1] if isinstance(c[-1], ast.Target) else None
        return ast.RetryLimit(self._number(c[0]), target, self._span(meta))

    def retry_end(self, meta: Any, c: list[Any]) -> None:
        return None

    # -- logic
    def set(self, meta: Any, c: list[Any]) -> ast.Set:
        return ast.Set(self._name(c[0]), self._expr(c[1]), self._span(meta))

    def if_block(self, meta: Any, c: list[Any]) -> ast.If:
        branches = [
            ast.Branch(
                self._expr(c[0]),
                tuple(a for a in c[1:] if not isinstance(a, (ast.Branch, _Else))),
                self._span(meta),
            )
        ]
        branches += [x for x in c[1:] if isinstance(x, ast.Branch)]
        else_clause = next((x for x in c[1:] if isinstance(x, _Else)), None)
        return ast.If(
            branches=tuple(branches),
            else_body=else_clause.body if else_clause else None,
            else_span=else_clause.span if else_clause else None,
            span=self._span(meta),
        )

    def elif_clause(self, meta: Any, c: list[Any]) -> ast.Branch:
        return ast.Branch(self._expr(c[0]), tuple(c[1:]), self._span(meta))

    def else_clause(self, meta: Any, c: list[Any]) -> _Else:
        return _Else(tuple(c), self._span(meta))

    def goto(self, meta: Any, c: list[Any]) -> ast.Goto:
        return ast.Goto(self._name(c[-1]), self._span(meta))

    def end(self, meta: Any, c: list[Any]) -> ast.End:
        return ast.End(self._span(meta))

    def call(self, meta: Any, c: list[Any]) -> ast.Call:
        return ast.Call(self._name(c[0]), self._span(meta))

    def resume(self, meta: Any, c: list[Any]) -> ast.Resume:
        return ast.Resume(self._span(meta))

    # -- rich messages
    def media(self, meta: Any, c: list[Any]) -> ast.Media:
        return ast.Media(c[0], self._text(c[1]), self._span(meta))

    def media_kind(self, meta: Any, c: list[Any]) -> str:
        return str(c[0])

    def carousel(self, meta: Any, c: list[Any]) -> ast.Carousel:
        return ast.Carousel(
            cards=tuple(x for x in c if isinstance(x, ast.Card)),
            quick_replies=tuple(x for x in c if isinstance(x, ast.QuickReply)),
            tags=tuple(x for x in c if isinstance(x, ast.Tag)),
            span=self._span(meta),
        )

    def card(self, meta: Any, c: list[Any]) -> ast.Card:
        options: list[Any] = c[1] if len(c) > 1 else []
        where = "this card"
        subtitle = self._first(options, _Subtitle, "subtitle", where)
        image = self._first(options, _Image, "image", where)
        default = self._first(options, _DefaultAction, "opens", where)
        return ast.Card(
            title=self._text(c[0]),
            subtitle=subtitle.text if subtitle else None,
            image=image.text if image else None,
            default_action=default.target if default else None,
            buttons=tuple(o for o in options if isinstance(o, ast.Button)),
            span=self._span(meta),
        )

    def card_options(self, meta: Any, c: list[Any]) -> list[Any]:
        return c

    def subtitle(self, meta: Any, c: list[Any]) -> _Subtitle:
        return _Subtitle(self._text(c[0]), self._span(meta))

    def card_image(self, meta: Any, c: list[Any]) -> _Image:
        return _Image(self._text(c[0]), self._span(meta))

    def default_action(self, meta: Any, c: list[Any]) -> _DefaultAction:
        webview = str(c[1]) if len(c) > 1 else None
        span = self._span(meta)
        return _DefaultAction(ast.Target("url", self._text(c[0]), webview, span), span)

    def list_template(self, meta: Any, c: list[Any]) -> ast.ListTemplate:
        return ast.ListTemplate(self._span(meta))

    def typing(self, meta: Any, c: list[Any]) -> ast.Typing:
        return ast.Typing(c[0] if c else None, self._span(meta))

    def pause(self, meta: Any, c: list[Any]) -> ast.Pause:
        return ast.Pause(c[0], self._span(meta))

    def duration(self, meta: Any, c: list[Any]) -> ast.Number:
        return self._number(c[0])

    def hand_over(self, meta: Any, c: list[Any]) -> ast.HandOver:
        app = next((x for x in c if isinstance(x, ast.Number)), None)
        note = next((x for x in c if isinstance(x, ast.Text)), None)
        return ast.HandOver(app, note, self._span(meta))

    def to_page_inbox(self, meta: Any, c: list[Any]) -> None:
        return None

    def to_app(self, meta: Any, c: list[Any]) -> ast.Number:
        return self._number(c[0])

    def take_back(self, meta: Any, c: list[Any]) -> ast.TakeBack:
        return ast.TakeBack(c[0] if c else None, self._span(meta))

    def note(self, meta: Any, c: list[Any]) -> ast.Text:
        return self._text(c[0])

    def use_template(self, meta: Any, c: list[Any]) -> ast.UseTemplate:
        args = c[1] if len(c) > 1 else ()
        return ast.UseTemplate(self._name(c[0]), tuple(args), self._span(meta))

    def template_args(self, meta: Any, c: list[Any]) -> list[ast.TemplateArg]:
        return c

    def template_arg(self, meta: Any, c: list[Any]) -> ast.TemplateArg:
        return ast.TemplateArg(self._name(c[0]), self._text(c[1]), self._span(meta))

    # -- templates
    def template(self, meta: Any, c: list[Any]) -> ast.Template:
        params = c[1] if len(c) > 1 and isinstance(c[1], tuple) else ()
        body = tuple(x for x in c[1:] if not isinstance(x, tuple))
        return ast.Template(self._name(c[0]), params, body, self._span(meta))

    def template_params(self, meta: Any, c: list[Any]) -> tuple[ast.Name, ...]:
        return tuple(self._name(t) for t in c)

    # -- page
    def page(self, meta: Any, c: list[Any]) -> ast.Page:
        where = "the page"
        started = self._first(c, _GetStarted, "get started", where)
        error = self._first(c, _ErrorMessage, "error message", where)
        domains = [x for x in c if isinstance(x, _Domains)]
        self._first(domains, _Domains, "whitelisted domains", where)
        return ast.Page(
            greetings=tuple(x for x in c if isinstance(x, ast.Greeting)),
            get_started=started.text if started else None,
            get_started_span=started.span if started else None,
            menus=tuple(x for x in c if isinstance(x, ast.Menu)),
            ice_breakers=tuple(x for x in c if isinstance(x, ast.IceBreakers)),
            domains=domains[0].texts if domains else (),
            error_message=error.text if error else None,
            span=self._span(meta),
        )

    def greeting(self, meta: Any, c: list[Any]) -> ast.Greeting:
        locale = c[0] if isinstance(c[0], ast.Name) else None
        return ast.Greeting(locale, self._text(c[-1]), self._span(meta))

    def locale(self, meta: Any, c: list[Any]) -> ast.Name:
        return self._name(c[0])

    def get_started(self, meta: Any, c: list[Any]) -> _GetStarted:
        span = self._span(meta)
        text = self._text(c[0]) if c else ast.Text("GET_STARTED", span)
        return _GetStarted(text, span)

    def menu(self, meta: Any, c: list[Any]) -> ast.Menu:
        locale = c[0] if c and isinstance(c[0], ast.Name) else None
        return ast.Menu(
            locale=locale,
            items=tuple(x for x in c if isinstance(x, ast.MenuItem)),
            composer_disabled=any(isinstance(x, _ComposerDisabled) for x in c),
            span=self._span(meta),
        )

    def menu_item(self, meta: Any, c: list[Any]) -> ast.MenuItem:
        return ast.MenuItem(self._text(c[0]), c[1], None, self._span(meta))

    def submenu(self, meta: Any, c: list[Any]) -> ast.MenuItem:
        children = tuple(x for x in c[1:] if isinstance(x, ast.MenuItem))
        return ast.MenuItem(self._text(c[0]), None, children, self._span(meta))

    def composer_disabled(self, meta: Any, c: list[Any]) -> _ComposerDisabled:
        return _ComposerDisabled(self._span(meta))

    def ice_breakers(self, meta: Any, c: list[Any]) -> ast.IceBreakers:
        locale = c[0] if c and isinstance(c[0], ast.Name) else None
        questions = tuple(x for x in c if isinstance(x, ast.IceBreaker))
        return ast.IceBreakers(locale, questions, self._span(meta))

    def ice_breaker(self, meta: Any, c: list[Any]) -> ast.IceBreaker:
        return ast.IceBreaker(self._text(c[0]), c[1], self._span(meta))

    def domains(self, meta: Any, c: list[Any]) -> _Domains:
        return _Domains(tuple(self._text(t) for t in c), self._span(meta))


# Intermediate values that exist only while lowering.
class _Spanned:
    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span


class _Title(_Spanned):
    __slots__ = ("text",)

    def __init__(self, text: ast.Text, span: Span) -> None:
        super().__init__(span)
        self.text = text


class _ErrorMessage(_Title):
    __slots__ = ()


class _Subtitle(_Title):
    __slots__ = ()


class _Image(_Title):
    __slots__ = ()


class _GetStarted(_Title):
    __slots__ = ()


class _Priority(_Spanned):
    __slots__ = ("number",)

    def __init__(self, number: ast.Number, span: Span) -> None:
        super().__init__(span)
        self.number = number


class _Inactive(_Spanned):
    __slots__ = ()


class _ComposerDisabled(_Spanned):
    __slots__ = ()


class _Reask(_Spanned):
    __slots__ = ("texts",)

    def __init__(self, texts: tuple[ast.Text, ...], span: Span) -> None:
        super().__init__(span)
        self.texts = texts


class _DefaultAction(_Spanned):
    __slots__ = ("target",)

    def __init__(self, target: ast.Target, span: Span) -> None:
        super().__init__(span)
        self.target = target


class _Domains(_Spanned):
    __slots__ = ("texts",)

    def __init__(self, texts: tuple[ast.Text, ...], span: Span) -> None:
        super().__init__(span)
        self.texts = texts


class _Else(_Spanned):
    __slots__ = ("body",)

    def __init__(self, body: tuple[Any, ...], span: Span) -> None:
        super().__init__(span)
        self.body = body


#: The grammar rules Lowering has a callback for (its public methods but `begin`).
RULES: tuple[str, ...] = tuple(
    name for name in vars(Lowering) if not name.startswith("_") and name != "begin"
)


def _callback(method: Callable[[Any, list[Any]], Any], kept: frozenset[str], keep_all: bool) -> Any:
    """Wrap a rule method: it gets the raw children (for spans) and the children Lark's tree
    would have had (keyword and layout tokens dropped)."""
    if keep_all:
        return lambda raw: method(raw, raw)

    def callback(raw: list[Any]) -> Any:
        return method(raw, [c for c in raw if type(c) is not Token or c.type in kept])

    return callback
