"""Messenger's limits: text and title lengths, how many buttons, cards, quick replies, menu
items, ice breakers and domains, web addresses, empty texts and numbers (FL401–FL414).

The numbers come from Meta's Send API and Messenger Profile API documentation (see
docs/errors.md); a message over a limit is refused by Messenger at run time."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from flowlang import ast, codes
from flowlang.checks.program import Program, flow_actions, walk
from flowlang.diagnostics import DiagnosticSink, Label
from flowlang.source import Span

TEXT_LIMIT = 2000
BUTTON_TEXT_LIMIT = 640
GREETING_LIMIT = 160
MAX_BUTTONS = 3
MAX_CARDS = 10
MAX_QUICK_REPLIES = 13
TITLE_LIMIT = 20
MENU_TITLE_LIMIT = 30
CARD_TEXT_LIMIT = 80
PAYLOAD_LIMIT = 1000
MAX_MENU_ITEMS = 20
MAX_ICE_BREAKERS = 4
MAX_DOMAINS = 50
MAX_SECONDS = 20
MAX_PRIORITY = 1000
MAX_TRIES = 10

_SCHEME = re.compile(r"https?://", re.I)


def check_limits(program: Program, sink: DiagnosticSink) -> None:
    """Report what Messenger would refuse or cut."""
    limits = _Limits(sink)
    for flow in program.flows:
        limits.flow_header(flow)
        for action in flow_actions(flow):
            limits.action(action)
    for template in program.templates:
        for action in walk(template.body):
            limits.action(action)
    for page in program.pages:
        limits.page(page)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class _Limits:
    def __init__(self, sink: DiagnosticSink) -> None:
        self.sink = sink

    # -- texts
    def empty(self, text: ast.Text, what: str) -> bool:
        """Report an empty (or blank) text; return whether it was."""
        if text.value.strip():
            return False
        self.sink.report(
            codes.EMPTY_TEXT,
            text.span,
            label=f"empty {what}",
            help=f"write the {what} between the quotes, or remove the line",
        )
        return True

    def message_text(self, text: ast.Text, limit: int, what: str = "message") -> None:
        if self.empty(text, what) or len(text.value) <= limit:
            return
        why = {
            BUTTON_TEXT_LIMIT: "a message with buttons can have at most 640 characters",
            CARD_TEXT_LIMIT: "a card subtitle can have at most 80 characters",
            GREETING_LIMIT: "a greeting can have at most 160 characters",
        }.get(limit, "too long")
        self.sink.report(
            codes.TEXT_TOO_LONG,
            text.span,
            length=len(text.value),
            limit=limit,
            label=why,
            help="shorten it, or split it into several messages",
        )

    def title(self, text: ast.Text, limit: int, what: str) -> None:
        if self.empty(text, f"{what} title") or len(text.value) <= limit:
            return
        self.sink.report(
            codes.TITLE_TOO_LONG,
            text.span,
            what=what,
            length=len(text.value),
            limit=limit,
            label="too long",
            help=f"shorten it to {limit} characters or fewer",
        )

    def payload(self, text: ast.Text) -> None:
        if self.empty(text, "payload") or len(text.value) <= PAYLOAD_LIMIT:
            return
        self.sink.report(
            codes.PAYLOAD_TOO_LONG,
            text.span,
            length=len(text.value),
            limit=PAYLOAD_LIMIT,
            label="too long",
            help='use a short code such as "PRICING"; the payload is not shown to the user',
        )

    def url(self, text: ast.Text, templated: bool) -> None:
        if self.empty(text, "web address"):
            return
        value = text.value.strip()
        if templated and "{{" in value:
            return  # only known when the message is sent
        parts = urlsplit(value) if _SCHEME.match(value) else None
        if parts is not None and parts.netloc and " " not in value:
            return
        shown = value if len(value) <= 40 else value[:37] + "…"
        self.sink.report(
            codes.BAD_URL,
            text.span,
            message=f"`{shown}` is not a web address Messenger can open",
            label="not a web address",
            help="write the whole address, starting with https:// (for example "
            '"https://example.com/page")',
        )

    # -- counts
    def too_many(
        self,
        code: codes.DiagnosticCode,
        items: Sequence[ast.Button | ast.Card | ast.Choice | ast.QuickReply | ast.MenuItem],
        limit: int,
        what: str,
        help_text: str = "",
    ) -> None:
        if len(items) <= limit:
            return
        extra = items[limit]
        self.sink.report(
            code,
            extra.span,
            count=len(items),
            limit=limit,
            label=f"the {_ordinal(limit + 1)} {what}",
            help=help_text or f"keep at most {limit} {what}s",
        )

    def buttons(self, buttons: Sequence[ast.Button], choices: Sequence[ast.Choice] = ()) -> None:
        shown = sorted([*choices, *buttons], key=lambda item: item.span.start)
        self.too_many(
            codes.TOO_MANY_BUTTONS,
            shown,
            MAX_BUTTONS,
            "button",
            "keep at most 3; in a question with buttons every `choice` is a button too"
            if choices
            else "",
        )
        for button in buttons:
            self.title(button.title, TITLE_LIMIT, "button")
            self.target(button.target, templated=True)

    def quick_replies(
        self, replies: Sequence[ast.QuickReply], choices: Sequence[ast.Choice] = ()
    ) -> None:
        offered = sorted([*choices, *replies], key=lambda item: item.span.start)
        self.too_many(codes.TOO_MANY_QUICK_REPLIES, offered, MAX_QUICK_REPLIES, "quick reply")
        for choice in choices:
            self.choice(choice)
        for reply in replies:
            if reply.title is not None:
                self.title(reply.title, TITLE_LIMIT, "quick reply")
            if reply.image is not None:
                self.url(reply.image, templated=True)
            if reply.target is not None:
                self.target(reply.target, templated=True)

    def choice(self, choice: ast.Choice) -> None:
        self.title(choice.title, TITLE_LIMIT, "choice")
        if choice.target is not None:
            self.target(choice.target, templated=True)

    def target(self, target: ast.Target, templated: bool) -> None:
        if not isinstance(target.value, ast.Text):
            return
        if target.kind == "payload":
            self.payload(target.value)
        elif target.kind == "url":
            self.url(target.value, templated)
        elif target.kind == "phone":
            self.empty(target.value, "phone number")

    # -- numbers
    def number(
        self, number: ast.Number, low: float, high: float, message: str, whole: bool = True
    ) -> None:
        value = number.value
        if (not whole or value.is_integer()) and low <= value <= high:
            return
        self.sink.report(
            codes.BAD_NUMBER, number.span, message=message, label=f"{number.raw} is not allowed"
        )

    def seconds(self, number: ast.Number, what: str) -> None:
        if 0 < number.value <= MAX_SECONDS:
            return
        self.sink.report(
            codes.BAD_NUMBER,
            number.span,
            message=f"{what} must last more than 0 and at most {MAX_SECONDS} seconds",
            label=f"{number.raw} seconds",
            help="Messenger stops showing the typing bubble after 20 seconds",
        )

    # -- actions
    def action(self, action: ast.Action) -> None:
        match action:
            case ast.Say():
                limit = BUTTON_TEXT_LIMIT if action.buttons else TEXT_LIMIT
                for text in action.texts:
                    self.message_text(text, limit)
                self.buttons(action.buttons)
                self.quick_replies(action.quick_replies)
            case ast.Ask():
                # With buttons, the question (and its re-ask) is a button template in which
                # every choice is a button; otherwise choices are quick replies.
                limit = BUTTON_TEXT_LIMIT if action.buttons else TEXT_LIMIT
                for text in action.texts:
                    self.message_text(text, limit, "question")
                for texts in action.reasks:
                    for text in texts:
                        self.message_text(text, limit)
                if action.buttons:
                    self.buttons(action.buttons, action.choices)
                    self.quick_replies(action.quick_replies)
                    for choice in action.choices:
                        self.choice(choice)
                else:
                    self.quick_replies(action.quick_replies, action.choices)
                for retry in action.retry_limits:
                    self.number(
                        retry.count,
                        1,
                        MAX_TRIES,
                        f"the number of tries must be a whole number from 1 to {MAX_TRIES}",
                    )
                for expect in action.expects:
                    if expect.pattern is not None:
                        self.empty(expect.pattern, "pattern")
            case ast.Media():
                self.url(action.url, templated=True)
            case ast.Carousel():
                self.too_many(codes.TOO_MANY_CARDS, action.cards, MAX_CARDS, "card")
                for card in action.cards:
                    self.card(card)
                self.quick_replies(action.quick_replies)
            case ast.Typing():
                if action.seconds is not None:
                    self.seconds(action.seconds, "`typing`")
            case ast.Pause():
                self.seconds(action.seconds, "a pause")
            case ast.HandOver():
                if action.app_id is not None:
                    self.number(
                        action.app_id,
                        1,
                        float("inf"),
                        "an app id is a whole number, such as 263902037430900",
                    )

    def card(self, card: ast.Card) -> None:
        self.title(card.title, CARD_TEXT_LIMIT, "card")
        if card.subtitle is not None:
            self.message_text(card.subtitle, CARD_TEXT_LIMIT, "subtitle")
        if card.image is not None:
            self.url(card.image, templated=True)
        if card.default_action is not None:
            self.target(card.default_action, templated=True)
        self.buttons(card.buttons)

    # -- flows and the page
    def flow_header(self, flow: ast.Flow) -> None:
        if flow.title is not None:
            self.empty(flow.title, "title")
        if flow.error_message is not None:
            self.empty(flow.error_message, "error message")
        if flow.priority is not None:
            self.number(
                flow.priority,
                0,
                MAX_PRIORITY,
                f"the priority must be a whole number from 0 to {MAX_PRIORITY}",
            )
        for trigger in flow.triggers:
            for value in trigger.values:
                if trigger.kind in ("postback", "quick_reply"):
                    self.payload(value)
                else:
                    self.empty(value, "keyword" if trigger.kind == "keyword" else "text")

    def page(self, page: ast.Page) -> None:
        greetings = page.greetings
        for greeting in greetings:
            self.message_text(greeting.text, GREETING_LIMIT, "greeting")
        self.locales(greetings, "greeting")
        if page.get_started is not None:
            self.payload(page.get_started)
        if page.menus and page.get_started is None:
            menu = page.menus[0]
            self.sink.report(
                codes.MENU_WITHOUT_GET_STARTED,
                Span(menu.span.file, menu.span.start, menu.span.start + len("menu")),
                label="needs `get started` in the page",
                help="add `get started` to the page block; Messenger shows the menu only after "
                "the user tapped Get Started",
            )
        self.locales(page.menus, "persistent menu")
        for menu in page.menus:
            self.too_many(codes.MENU_TOO_LARGE, menu.items, MAX_MENU_ITEMS, "menu item")
            for item in menu.items:
                self.title(item.title, MENU_TITLE_LIMIT, "menu item")
                if item.target is not None:
                    self.target(item.target, templated=False)
        self.locales(page.ice_breakers, "set of ice breakers")
        for group in page.ice_breakers:
            if len(group.questions) > MAX_ICE_BREAKERS:
                self.sink.report(
                    codes.TOO_MANY_ICE_BREAKERS,
                    group.questions[MAX_ICE_BREAKERS].span,
                    count=len(group.questions),
                    limit=MAX_ICE_BREAKERS,
                    label=f"the {_ordinal(MAX_ICE_BREAKERS + 1)} question",
                    help=f"keep at most {MAX_ICE_BREAKERS} questions for each language",
                )
            for question in group.questions:
                self.empty(question.question, "question")
                self.target(question.target, templated=False)
        self.domains(page.domains)
        if page.error_message is not None:
            self.empty(page.error_message, "error message")

    def locales(
        self, items: Sequence[ast.Greeting | ast.Menu | ast.IceBreakers], what: str
    ) -> None:
        seen: dict[str, ast.Greeting | ast.Menu | ast.IceBreakers] = {}
        for item in items:
            key = item.locale.text if item.locale else ""
            if key in seen:
                where = f" for {key}" if key else ""
                self.sink.report(
                    codes.DUPLICATE_SETTING,
                    item.span,
                    setting=f"{what}{where}",
                    where="the page",
                    label="given again here",
                    secondary=(Label(seen[key].span, "first given here"),),
                    help="keep only one of them",
                )
            seen.setdefault(key, item)
        if items and "" not in seen:
            first = items[0]
            assert first.locale is not None
            self.sink.report(
                codes.MISSING_DEFAULT_LOCALE,
                first.locale.span,
                what=what,
                label=f"only for {first.locale.text}",
                help=f"add a {what} without `for …`; it is used for every other language",
            )

    def domains(self, domains: Sequence[ast.Text]) -> None:
        if len(domains) > MAX_DOMAINS:
            self.sink.report(
                codes.TOO_MANY_DOMAINS,
                domains[MAX_DOMAINS].span,
                count=len(domains),
                limit=MAX_DOMAINS,
                label=f"the {_ordinal(MAX_DOMAINS + 1)} domain",
                help=f"keep at most {MAX_DOMAINS} domains",
            )
        for domain in domains:
            if self.empty(domain, "domain"):
                continue
            value = domain.value.strip()
            if value.lower().startswith("https://") and urlsplit(value).netloc:
                continue
            self.sink.report(
                codes.BAD_URL,
                domain.span,
                message="a whitelisted domain must be a full address starting with https://",
                label="not https://",
                help=f'write it as "https://{value.split("://")[-1]}"',
            )
