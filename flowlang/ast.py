"""The syntax tree of a `.flow` file: frozen dataclasses, each with the span it came from.

Lark types end in lower.py; everything after works on these nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flowlang.source import Span


@dataclass(frozen=True, slots=True)
class Name:
    """An identifier as written: a flow, step, template, variable or locale name."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Text:
    """A quoted text, with escapes resolved; `span` covers the quotes."""

    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Number:
    """A number as written (priorities, seconds, tries, app ids)."""

    value: float
    raw: str
    span: Span


@dataclass(frozen=True, slots=True)
class Expr:
    """A Jinja expression after `set`, `if` or `elif`, checked later."""

    source: str
    span: Span


TriggerKind = Literal[
    "get_started", "keyword", "postback", "quick_reply", "referral", "regex", "fallback"
]


@dataclass(frozen=True, slots=True)
class Trigger:
    """`when ...` / `interrupt when ...` in a flow header."""

    kind: TriggerKind
    values: tuple[Text, ...]
    interrupting: bool
    span: Span


TargetKind = Literal["step", "flow", "payload", "url", "phone"]


@dataclass(frozen=True, slots=True)
class Target:
    """What a button, choice or menu item does: `goto step`, `starts flow`, `sends "P"`,
    `opens "URL" [tall]`, `calls "+1…"`."""

    kind: TargetKind
    value: Name | Text
    webview: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class Button:
    """`button "Title" <target>`."""

    title: Text
    target: Target
    span: Span


@dataclass(frozen=True, slots=True)
class QuickReply:
    """`quick reply "Title" [with image "URL"] [<target>]`, `quick reply email|phone`."""

    kind: Literal["text", "email", "phone"]
    title: Text | None
    image: Text | None
    target: Target | None
    span: Span


@dataclass(frozen=True, slots=True)
class Tag:
    """`tag NAME`: a Messenger message tag for sending outside the 24-hour window."""

    name: Name
    span: Span


@dataclass(frozen=True, slots=True)
class Say:
    """`say "text" [or "variation"…]` with optional buttons, quick replies and a tag."""

    texts: tuple[Text, ...]
    buttons: tuple[Button, ...]
    quick_replies: tuple[QuickReply, ...]
    tags: tuple[Tag, ...]
    span: Span


ExpectKind = Literal["text", "number", "email", "phone", "yes_no", "pattern"]


@dataclass(frozen=True, slots=True)
class Expect:
    """`expect …`: what kind of answer an `ask` accepts."""

    kind: ExpectKind
    pattern: Text | None
    span: Span


@dataclass(frozen=True, slots=True)
class Choice:
    """`choice "Title" [goto step | starts flow | sends "P"]` inside an `ask`."""

    title: Text
    target: Target | None
    span: Span


@dataclass(frozen=True, slots=True)
class RetryLimit:
    """`after N tries goto step` / `after N tries end`; `target` None means end."""

    count: Number
    target: Target | None
    span: Span


@dataclass(frozen=True, slots=True)
class Ask:
    """`ask "question" [as var]` with how to check and re-ask the answer."""

    texts: tuple[Text, ...]
    var: Name | None
    expects: tuple[Expect, ...]
    choices: tuple[Choice, ...]
    buttons: tuple[Button, ...]
    quick_replies: tuple[QuickReply, ...]
    reasks: tuple[tuple[Text, ...], ...]
    retry_limits: tuple[RetryLimit, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Set:
    """`set var = expression` (or `set var to expression`)."""

    var: Name
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Branch:
    """One `if`/`elif` condition with its lines."""

    condition: Expr
    body: tuple[Action, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class If:
    """`if … / elif … / else`."""

    branches: tuple[Branch, ...]
    else_body: tuple[Action, ...] | None
    else_span: Span | None
    span: Span


@dataclass(frozen=True, slots=True)
class Goto:
    """`goto step` (or `go to step`)."""

    step: Name
    span: Span


@dataclass(frozen=True, slots=True)
class End:
    """`end`: the flow is over (or returns to the flow that called it)."""

    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    """`call flow`: run another flow, then continue here."""

    flow: Name
    span: Span


@dataclass(frozen=True, slots=True)
class Resume:
    """`resume`: end this flow and go back to the conversation it interrupted."""

    span: Span


@dataclass(frozen=True, slots=True)
class Media:
    """`send image|video|audio|file "URL"`."""

    kind: Literal["image", "video", "audio", "file"]
    url: Text
    span: Span


@dataclass(frozen=True, slots=True)
class Card:
    """`card "Title"` in a carousel."""

    title: Text
    subtitle: Text | None
    image: Text | None
    default_action: Target | None
    buttons: tuple[Button, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Carousel:
    """`carousel` with cards (and optional quick replies and a tag)."""

    cards: tuple[Card, ...]
    quick_replies: tuple[QuickReply, ...]
    tags: tuple[Tag, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ListTemplate:
    """`list …`: the retired list template, kept only to explain its removal."""

    span: Span


@dataclass(frozen=True, slots=True)
class Typing:
    """`typing [for N seconds]`."""

    seconds: Number | None
    span: Span


@dataclass(frozen=True, slots=True)
class Pause:
    """`pause N seconds`."""

    seconds: Number
    span: Span


@dataclass(frozen=True, slots=True)
class HandOver:
    """`hand over [to page inbox | to app N] [with note "…"]`; app None means the Page Inbox."""

    app_id: Number | None
    note: Text | None
    span: Span


@dataclass(frozen=True, slots=True)
class TakeBack:
    """`take back [with note "…"]`."""

    note: Text | None
    span: Span


@dataclass(frozen=True, slots=True)
class TemplateArg:
    """`name = "value"` when sending a template."""

    name: Name
    value: Text
    span: Span


@dataclass(frozen=True, slots=True)
class UseTemplate:
    """`send template_name [with a = "…", b = "…"]`."""

    name: Name
    args: tuple[TemplateArg, ...]
    span: Span


Action = (
    Say
    | Ask
    | Set
    | If
    | Goto
    | End
    | Call
    | Resume
    | Media
    | Carousel
    | ListTemplate
    | Typing
    | Pause
    | HandOver
    | TakeBack
    | UseTemplate
)


@dataclass(frozen=True, slots=True)
class Step:
    """`step name` and its lines."""

    name: Name
    body: tuple[Action, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Flow:
    """`flow name` with its header settings, triggers and steps."""

    name: Name
    title: Text | None
    priority: Number | None
    inactive: bool
    error_message: Text | None
    triggers: tuple[Trigger, ...]
    steps: tuple[Step, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Template:
    """`template name [with a, b]`: reusable messages with parameters."""

    name: Name
    params: tuple[Name, ...]
    body: tuple[Action, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Greeting:
    """`greeting [for locale] "text"`."""

    locale: Name | None
    text: Text
    span: Span


@dataclass(frozen=True, slots=True)
class MenuItem:
    """`item "Title" <target>`, or a retired `submenu` when `children` is not None."""

    title: Text
    target: Target | None
    children: tuple[MenuItem, ...] | None
    span: Span


@dataclass(frozen=True, slots=True)
class Menu:
    """`menu [for locale]`: the persistent menu."""

    locale: Name | None
    items: tuple[MenuItem, ...]
    composer_disabled: bool
    span: Span


@dataclass(frozen=True, slots=True)
class IceBreaker:
    """`question "…" <target>`."""

    question: Text
    target: Target
    span: Span


@dataclass(frozen=True, slots=True)
class IceBreakers:
    """`ice breakers [for locale]`."""

    locale: Name | None
    questions: tuple[IceBreaker, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Page:
    """`page`: the Messenger profile of the page, as code."""

    greetings: tuple[Greeting, ...]
    get_started: Text | None
    get_started_span: Span | None
    menus: tuple[Menu, ...]
    ice_breakers: tuple[IceBreakers, ...]
    domains: tuple[Text, ...]
    error_message: Text | None
    span: Span


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed `.flow` file."""

    file: str
    flows: tuple[Flow, ...]
    templates: tuple[Template, ...]
    pages: tuple[Page, ...]
    span: Span
