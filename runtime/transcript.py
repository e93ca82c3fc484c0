"""The transcript format: tests written beside flows, parsed into plain data with readable errors.

A transcript is a script of a conversation. Each test says what the user does (`user says …`,
`user taps …`) and what the bot must answer (`bot says …`), and can check variables and whether
the flow ended. `docs/testing.md` is the author's guide; this module only reads the text:
`parse_transcript(text, name)` never raises, it returns the tests and a list of
`TranscriptError`s, each with a 1-based line and column and a sentence an author can act on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from flowlang.ir import PAGE_INBOX_APP_ID
from flowlang.lower import unescape

#: Profile fields a test may set: as written (`first name`) → as flows read them (`first_name`).
PROFILE_FIELDS = {
    "first name": "first_name",
    "last name": "last_name",
    "locale": "locale",
    "timezone": "timezone",
    "gender": "gender",
    "profile pic": "profile_pic",
}
MEDIA_TYPES = ("image", "video", "audio", "file")


# ---------------------------------------------------------------------------- the parsed form


@dataclass(frozen=True)
class TranscriptError:
    """A mistake in a transcript file, at a 1-based line and column."""

    line: int
    column: int
    message: str
    help: str | None = None
    length: int = 1


InputKind = Literal[
    "says",
    "taps",
    "get_started",
    "postback",
    "quick_reply",
    "referral",
    "attachment",
    "location",
    "hands_back",
    "menu",
    "ice_breaker",
]


@dataclass(frozen=True)
class UserInput:
    """Something the user does: one inbound event.

    kind: says (text) | taps (a quick reply or button, by its title) | get_started | postback |
    quick_reply (by payload) | referral | attachment | location | menu / ice_breaker (an item
    of the page's persistent menu or an ice breaker, by its title) | hands_back (`person hands
    back`: the person in the Page Inbox gives the conversation back to the bot)."""

    line: int
    kind: Literal[
        "says",
        "taps",
        "get_started",
        "postback",
        "quick_reply",
        "referral",
        "attachment",
        "location",
    ]
    text: str | None = None
    payload: str | None = None
    ref: str | None = None
    media_type: str | None = None
    url: str | None = None
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class ExpectReply:
    """An expected quick reply: a titled one, or Messenger's email / phone number reply."""

    line: int
    content_type: Literal["text", "user_email", "user_phone_number"]
    title: str | None = None


@dataclass(frozen=True)
class ExpectCard:
    """An expected carousel card; subtitle and buttons are checked only when written."""

    line: int
    title: str
    subtitle: str | None = None
    buttons: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExpectMessage:
    """One thing the bot must send, in order.

    kind: text (a text, or a message with buttons) | media | carousel | hand_over | take_back.
    Details left out (`quick_replies`, `buttons`, `cards`, `url`, `note`…) are None and are not
    checked; details written must match exactly, all of them, in order."""

    line: int
    kind: Literal["text", "media", "carousel", "hand_over", "take_back"]
    texts: tuple[str, ...] = ()
    pattern: str | None = None
    quick_replies: tuple[ExpectReply, ...] | None = None
    buttons: tuple[str, ...] | None = None
    cards: tuple[ExpectCard, ...] | None = None
    media_type: str | None = None
    url: str | None = None
    app_id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class ExpectNothing:
    """`bot says nothing`: the user's last input gets no message at all."""

    line: int


@dataclass(frozen=True)
class Check:
    """A check on a conversation variable: is VALUE, is not VALUE, is set, is not set, matches."""

    line: int
    variable: str
    op: Literal["is", "is_not", "set", "not_set", "matches"]
    value: Any = None


@dataclass(frozen=True)
class ExpectStatus:
    """`flow ends` (no flow is running or waiting) or `bot waits for an answer`."""

    line: int
    status: Literal["ended", "waiting"]


Expectation = ExpectMessage | ExpectNothing | Check | ExpectStatus
Item = UserInput | Expectation


@dataclass(frozen=True)
class TranscriptTest:
    """One named test: a profile and the conversation, in order."""

    name: str
    line: int
    profile: dict[str, Any]
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Transcript:
    """A parsed transcript file. Tests are only meant to run when `errors` is empty."""

    name: str
    tests: tuple[TranscriptTest, ...]
    errors: tuple[TranscriptError, ...] = ()
    lines: tuple[str, ...] = field(default=(), repr=False)

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, as written."""
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""


# ---------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "string", "comma"]
    value: str
    column: int  # 1-based
    length: int


class _LineError(Exception):
    """Raised inside one line's parse and turned into a TranscriptError; never escapes."""

    def __init__(self, column: int, message: str, help: str | None = None, length: int = 1):
        super().__init__(message)
        self.error = TranscriptError(0, column, message, help, max(1, length))


#: The column of an error about a whole line (it is underlined from its first word to its end).
_WHOLE_LINE = 0
_WORD = re.compile(r'[^\s",#“”]+')
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _tokenize(text: str) -> list[_Token]:
    """Split one line into words, "strings" and commas; `#` outside a string starts a comment."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t":
            i += 1
        elif ch == "#":
            break
        elif ch == ",":
            tokens.append(_Token("comma", ",", i + 1, 1))
            i += 1
        elif ch == '"':
            match = _STRING.match(text, i)
            if match is None:
                raise _LineError(
                    i + 1,
                    "this text has no closing double quote",
                    'end the text with " on the same line',
                    len(text) - i,
                )
            tokens.append(_Token("string", unescape(match.group()), i + 1, match.end() - i))
            i = match.end()
        elif ch in "“”":
            raise _LineError(
                i + 1,
                "curly quotes are not quotes here",
                'use straight double quotes "like this" (your editor may have changed them)',
            )
        else:
            match = _WORD.match(text, i)
            assert match is not None  # every other character starts a word
            tokens.append(_Token("word", match.group(), i + 1, match.end() - i))
            i = match.end()
    return tokens


class _Cursor:
    """Reads the tokens of one line, left to right, with plain-language errors."""

    def __init__(self, tokens: list[_Token], end_column: int):
        self.tokens = tokens
        self.i = 0
        self.end_column = end_column

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at_word(self, *words: str) -> bool:
        """True when the next tokens are exactly these words (and consume them)."""
        if self.i + len(words) > len(self.tokens):
            return False
        for offset, word in enumerate(words):
            token = self.tokens[self.i + offset]
            if token.kind != "word" or token.value.lower() != word:
                return False
        self.i += len(words)
        return True

    def column(self) -> int:
        token = self.peek()
        return token.column if token else self.end_column

    def fail(self, message: str, help: str | None = None) -> _LineError:
        token = self.peek()
        return _LineError(self.column(), message, help, token.length if token else 1)

    def word(self, expected: str, choices: tuple[str, ...], help: str | None = None) -> str:
        """The next word, which must be one of `choices` (with a did-you-mean otherwise)."""
        token = self.peek()
        if token is None or token.kind != "word":
            found = "the end of the line" if token is None else _describe(token)
            raise self.fail(f"expected {expected}, but found {found}", help)
        value = token.value.lower()
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f"did you mean `{close[0]}`?" if close else help
            raise self.fail(f"expected {expected}, but found `{token.value}`", hint)
        self.i += 1
        return value

    def string(self, what: str) -> str:
        """The next token, which must be a quoted text."""
        token = self.peek()
        if token is None or token.kind != "string":
            found = "the end of the line" if token is None else _describe(token)
            example = token.value if token is not None and token.kind == "word" else "…"
            raise self.fail(
                f"expected {what} in double quotes, but found {found}",
                f'write it in double quotes, like "{example}"',
            )
        self.i += 1
        return token.value

    def number(self, what: str) -> float:
        """The next word, which must be a number."""
        token = self.peek()
        try:
            if token is None or token.kind != "word":
                raise ValueError
            value = float(token.value)
        except ValueError:
            found = "the end of the line" if token is None else _describe(token)
            raise self.fail(f"expected {what} (a number), but found {found}") from None
        self.i += 1
        return value

    def end(self, help: str | None = None) -> None:
        """The line must be over."""
        token = self.peek()
        if token is not None:
            raise self.fail(f"this line should end before {_describe(token)}", help)


def _describe(token: _Token) -> str:
    if token.kind == "string":
        return f'the text "{token.value}"'
    if token.kind == "comma":
        return "a comma"
    return f"`{token.value}`"


# ---------------------------------------------------------------------------- line parsers

_BODY_STARTS = ("user", "bot", "check", "flow", "person", "profile")
_USER_HELP = (
    'after `user`, write what they do: says "…", taps "…", taps get started, '
    'taps menu item "…", taps ice breaker "…", '
    'sends postback "…", sends quick reply "…", comes from referral "…", '
    'sends image "…", sends location 52.52, 13.40'
)
_BOT_HELP = (
    'after `bot`, write what it does: says "…", says matching "…", says nothing, '
    'sends image "…", sends carousel, hands over, takes back, waits for an answer'
)


def _parse_user(cur: _Cursor, line: int) -> UserInput:
    verb = cur.word("what the user does", ("says", "taps", "sends", "comes"), _USER_HELP)
    if verb == "says":
        return UserInput(line, "says", text=cur.string("what the user says"))
    if verb == "taps":
        if cur.at_word("get", "started"):
            return UserInput(line, "get_started")
        if cur.at_word("menu", "item") or cur.at_word("menu"):
            return UserInput(line, "menu", text=cur.string("the title of the menu item"))
        if cur.at_word("ice", "breaker"):
            return UserInput(line, "ice_breaker", text=cur.string("the ice breaker's question"))
        token = cur.peek()
        if token is not None and token.kind == "word":
            raise cur.fail(
                "expected the title of a quick reply or button in double quotes, "
                "`get started`, `menu item` or `ice breaker`",
                f'write the title as the bot shows it: user taps "{token.value}"',
            )
        return UserInput(line, "taps", text=cur.string("the title of a quick reply or button"))
    if verb == "comes":
        cur.word("`from referral`", ("from",), 'write: user comes from referral "summer_sale"')
        cur.word("`referral`", ("referral",), 'write: user comes from referral "summer_sale"')
        return UserInput(line, "referral", ref=cur.string("the referral ref"))
    what = cur.word(
        "what the user sends",
        ("postback", "quick", "location", *MEDIA_TYPES),
        'for example: sends postback "PRICING", sends quick reply "SALES", sends image "https://…"',
    )
    if what == "postback":
        return UserInput(line, "postback", payload=cur.string("the postback payload"))
    if what == "quick":
        cur.word("`reply`", ("reply",), 'write: user sends quick reply "PAYLOAD"')
        payload = cur.string("the quick reply payload")
        return UserInput(line, "quick_reply", text=payload, payload=payload)
    if what == "location":
        column = cur.column()
        latitude = cur.number("the latitude")
        if (token := cur.peek()) is not None and token.kind == "comma":
            cur.i += 1
        longitude = cur.number("the longitude")
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise _LineError(
                column,
                "this is not a place on Earth",
                "write the latitude (-90 to 90), then the longitude (-180 to 180)",
            )
        return UserInput(line, "location", latitude=latitude, longitude=longitude)
    return UserInput(line, "attachment", media_type=what, url=cur.string("the address (URL)"))


def _parse_bot(cur: _Cursor, line: int) -> Expectation:
    verb = cur.word("what the bot does", ("says", "sends", "hands", "takes", "waits"), _BOT_HELP)
    if verb == "says":
        if cur.at_word("nothing"):
            return ExpectNothing(line)
        if cur.at_word("matching"):
            column = cur.column()
            pattern = cur.string("a regular expression")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _LineError(
                    column,
                    f"this pattern is not a valid regular expression: {exc.msg}",
                    "check brackets and backslashes; to match a text exactly, use "
                    'bot says "…" without `matching`',
                ) from None
            return ExpectMessage(line, "text", pattern=pattern)
        texts = [cur.string("what the bot says")]
        while cur.at_word("or"):
            texts.append(cur.string("another text the bot may say"))
        return ExpectMessage(line, "text", texts=tuple(texts))
    if verb == "sends":
        what = cur.word("what the bot sends", ("carousel", *MEDIA_TYPES), _BOT_HELP)
        if what == "carousel":
            return ExpectMessage(line, "carousel")
        url = cur.string("the address (URL)") if cur.peek() is not None else None
        return ExpectMessage(line, "media", media_type=what, url=url)
    if verb == "hands":
        cur.word("`over`", ("over",), "write: bot hands over")
        app_id = None
        if cur.at_word("to"):
            if cur.at_word("page", "inbox"):
                app_id = PAGE_INBOX_APP_ID
            else:
                cur.word(
                    "`page inbox` or `app`", ("app",), 'write: to page inbox, or to app "1234"'
                )
                token = cur.peek()
                if token is not None and token.kind == "word":
                    app_id = token.value
                    cur.i += 1
                else:
                    app_id = cur.string("the app id")
        note = cur.string("the note") if cur.at_word("with", "note") else None
        return ExpectMessage(line, "hand_over", app_id=app_id, note=note)
    if verb == "takes":
        cur.word("`back`", ("back",), "write: bot takes back")
        note = cur.string("the note") if cur.at_word("with", "note") else None
        return ExpectMessage(line, "take_back", note=note)
    for word in ("for", "an", "answer"):
        cur.word(f"`{word}`", (word,), "write: bot waits for an answer")
    return ExpectStatus(line, "waiting")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _parse_check(cur: _Cursor, line: int) -> Check:
    token = cur.peek()
    if token is None or token.kind != "word" or not _NAME.match(token.value):
        raise cur.fail(
            "expected the name of a variable after `check`",
            'for example: check lead_email is "ada@example.com"',
        )
    cur.i += 1
    name = token.value
    if cur.at_word("matches"):
        column = cur.column()
        pattern = cur.string("a regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _LineError(
                column, f"this pattern is not a valid regular expression: {exc.msg}"
            ) from None
        return Check(line, name, "matches", pattern)
    cur.word(
        "`is` or `matches`",
        ("is",),
        'for example: check topic is "Billing", check topic is set, check topic matches "Bill.*"',
    )
    negated = cur.at_word("not")
    if cur.at_word("set"):
        return Check(line, name, "not_set" if negated else "set")
    return Check(line, name, "is_not" if negated else "is", _parse_value(cur))


def _parse_value(cur: _Cursor) -> Any:
    token = cur.peek()
    help = 'a text in double quotes ("Billing"), a number (3), yes or no, or `set`'
    if token is None:
        raise cur.fail("expected the value to check for", help)
    cur.i += 1
    if token.kind == "string":
        return token.value
    if token.kind == "word":
        word = token.value.lower()
        if word in ("yes", "true"):
            return True
        if word in ("no", "false"):
            return False
        try:
            number = float(token.value)
        except ValueError:
            pass
        else:
            return int(number) if number.is_integer() and "." not in token.value else number
    cur.i -= 1
    raise cur.fail(f"expected a value, but found {_describe(token)}", help)


# ---------------------------------------------------------------------------- file parser


@dataclass
class _Line:
    number: int
    indent: int
    text: str
    tokens: list[_Token]
    error: _LineError | None = None  # the line could not even be split into words


@dataclass
class _Block:
    """An open line that accepts indented detail lines under it."""

    kind: Literal["test", "profile", "say", "carousel", "card", "skip"]
    indent: int
    line: int
    data: dict[str, Any] = field(default_factory=dict)
    child_indent: int | None = None


class _Parser:
    def __init__(self, text: str, name: str):
        self.name = name
        self.lines = text.splitlines()
        self.errors: list[TranscriptError] = []
        self.tests: list[TranscriptTest] = []
        self.file_profile: dict[str, Any] = {}
        self.test_names: dict[str, int] = {}

    def error(self, line: int, err: _LineError) -> None:
        e = err.error
        column, length = e.column, e.length
        if column == _WHOLE_LINE:
            text = self.lines[line - 1].rstrip()
            column = len(text) - len(text.lstrip(" \t")) + 1
            length = len(text) - column + 1
        self.errors.append(TranscriptError(line, column, e.message, e.help, length))

    def lines_with_tokens(self) -> Iterator[_Line]:
        for number, raw in enumerate(self.lines, start=1):
            text = raw.rstrip("\r")
            stripped = text.lstrip(" \t")
            if not stripped or stripped.startswith("#"):
                continue
            indent_text = text[: len(text) - len(stripped)]
            if "\t" in indent_text:
                self.error(
                    number,
                    _LineError(
                        1,
                        "this line is indented with a tab",
                        "indent with 2 spaces per level (tabs look different in every editor)",
                        len(indent_text),
                    ),
                )
                continue
            try:
                tokens = _tokenize(text)
            except _LineError as err:
                yield _Line(number, len(indent_text), text, [], err)
                continue
            if tokens:
                yield _Line(number, len(indent_text), text, tokens)

    def parse(self) -> Transcript:
        stack: list[_Block] = []
        for line in self.lines_with_tokens():
            while stack and line.indent <= stack[-1].indent:
                self.close(stack.pop(), stack)
            try:
                if line.error is not None:
                    raise line.error
                self.parse_line(line, stack)
            except _LineError as err:
                self.error(line.number, err)
                # Lines indented under a broken line are skipped: one mistake, one error.
                stack.append(_Block("skip", line.indent, line.number))
        while stack:
            self.close(stack.pop(), stack)
        if not self.tests and not self.errors:
            self.errors.append(
                TranscriptError(
                    1,
                    1,
                    "this transcript has no tests",
                    'start a test with a line like: test "someone says hi"',
                )
            )
        return Transcript(self.name, tuple(self.tests), tuple(self.errors), tuple(self.lines))

    def parse_line(self, line: _Line, stack: list[_Block]) -> None:
        cur = _Cursor(line.tokens, len(line.text) + 1)
        if not stack:
            if line.indent:
                raise _LineError(
                    1,
                    "this line is indented, but there is no `test` above it",
                    'start a test with a line like: test "someone says hi"',
                    line.indent,
                )
            self.parse_top(cur, line, stack)
            return
        parent = stack[-1]
        if parent.kind == "skip":
            return
        if parent.child_indent is None:
            parent.child_indent = line.indent
        elif line.indent > parent.child_indent:
            raise _LineError(
                1,
                "this line is indented deeper than the line above it",
                "only `bot says`, `bot sends carousel`, `card` and `profile` have lines under "
                f"them; otherwise indent this line by {parent.child_indent} spaces",
                line.indent,
            )
        elif line.indent != parent.child_indent:
            raise _LineError(
                1,
                "this line is indented less than the lines above it",
                f"indent it by {parent.child_indent} spaces, like the lines above",
                line.indent,
            )
        handler = {
            "test": self.parse_test_line,
            "profile": self.parse_profile_line,
            "say": self.parse_say_detail,
            "carousel": self.parse_carousel_detail,
            "card": self.parse_card_detail,
        }[parent.kind]
        handler(cur, line, stack)

    def parse_top(self, cur: _Cursor, line: _Line, stack: list[_Block]) -> None:
        word = cur.word(
            "`test` or `profile`",
            ("test", "profile"),
            'a transcript is a list of tests, each starting with: test "name of the test"',
        )
        if word == "profile":
            cur.end()
            if self.tests:
                raise _LineError(
                    _WHOLE_LINE,
                    "the shared profile must come before the first test",
                    "move this `profile` block to the top of the file",
                )
            stack.append(_Block("profile", line.indent, line.number, {"into": self.file_profile}))
            return
        name = cur.string("the name of the test")
        cur.end()
        if name in self.test_names:
            raise _LineError(
                _WHOLE_LINE,
                f'there is already a test named "{name}" (line {self.test_names[name]})',
                "give every test its own name, so reports can tell them apart",
            )
        self.test_names[name] = line.number
        block = _Block("test", line.indent, line.number, {"name": name, "items": [], "profile": {}})
        stack.append(block)

    def parse_test_line(self, cur: _Cursor, line: _Line, stack: list[_Block]) -> None:
        test = stack[-1].data
        items: list[Item] = test["items"]
        start = cur.word(
            "`user`, `bot`, `check` or `flow ends`",
            _BODY_STARTS,
            "each line of a test starts with `user` (what the person does), `bot` (what the "
            "bot answers), `check` (a variable), or is `flow ends` or `person hands back`",
        )
        if start == "profile":
            cur.end()
            if items:
                raise _LineError(
                    _WHOLE_LINE,
                    "the profile must come before the first line of the conversation",
                    "move this `profile` block to the top of the test",
                )
            stack.append(_Block("profile", line.indent, line.number, {"into": test["profile"]}))
            return
        if start == "user":
            test["user_seen"] = True  # even if the rest of the line is wrong: one error only
            items.append(_parse_user(cur, line.number))
            cur.end()
            return
        if start == "person":
            test["user_seen"] = True
            for word in ("hands", "back"):
                cur.word(f"`{word}`", (word,), "write: person hands back")
            cur.end()
            items.append(UserInput(line.number, "hands_back"))
            return
        if start == "flow":
            cur.word("`ends`", ("ends",), "write: flow ends")
            cur.end()
            item: Expectation = ExpectStatus(line.number, "ended")
        elif start == "check":
            item = _parse_check(cur, line.number)
            cur.end()
        else:
            item = _parse_bot(cur, line.number)
            cur.end(
                'to allow several texts, write: bot says "A" or "B"'
                if isinstance(item, ExpectMessage) and item.kind == "text"
                else None
            )
        if not test.get("user_seen"):
            raise _LineError(
                _WHOLE_LINE,
                "the bot only answers something the user does",
                'start the test with a `user` line, such as: user says "hi" or '
                "user taps get started",
            )
        if isinstance(item, ExpectMessage | ExpectNothing):
            _check_nothing(item, items)
        items.append(item)
        if isinstance(item, ExpectMessage) and item.kind in ("text", "carousel"):
            kind: Literal["say", "carousel"] = "say" if item.kind == "text" else "carousel"
            stack.append(_Block(kind, line.indent, line.number, {"message": item}))

    def parse_profile_line(self, cur: _Cursor, line: _Line, stack: list[_Block]) -> None:
        into: dict[str, Any] = stack[-1].data["into"]
        for written, key in PROFILE_FIELDS.items():
            if cur.at_word(*written.split()) or cur.at_word(key):
                break
        else:
            raise cur.fail(
                "expected a profile field",
                "a profile can set: " + ", ".join(f"{name} …" for name in PROFILE_FIELDS),
            )
        if key in into:
            raise _LineError(_WHOLE_LINE, f"the {written} is already set above")
        if key == "timezone":
            hours = cur.number("the timezone (hours from UTC)")
            into[key] = int(hours) if hours.is_integer() else hours
        else:
            into[key] = cur.string(f"the {written}")
        cur.end()

    def parse_say_detail(self, cur: _Cursor, line: _Line, stack: list[_Block]) -> None:
        block = stack[-1]
        word = cur.word(
            "`quick reply` or `button`",
            ("quick", "button"),
            'under `bot says`, list what the message offers: quick reply "…" or button "…"',
        )
        if word == "button":
            block.data.setdefault("buttons", []).append(cur.string("the button title"))
        else:
            block.data.setdefault("quick_replies", []).append(self.quick_reply(cur, line))
        cur.end()

    def quick_reply(self, cur: _Cursor, line: _Line) -> ExpectReply:
        if cur.peek() and cur.tokens[cur.i].value.lower() == "quick":
            cur.i += 1
        cur.word("`reply`", ("reply",), 'write: quick reply "Title"')
        if cur.at_word("email"):
            return ExpectReply(line.number, "user_email")
        if cur.at_word("phone"):
            return ExpectReply(line.number, "user_phone_number")
        return ExpectReply(line.number, "text", cur.string("the quick reply title"))

    def parse_carousel_detail(self, cur: _Cursor, line: _Line, stack: list[_Block]) -> None:
        block = stack[-1]
        word = cur.word(
            "`card` or `quick reply`",
            ("card", "quick"),
            'under `bot sends carousel`, list its cards: card "Title"',
        )
        if word == "quick":
            cur.i -= 1
            block.data.setdefault("quick_replies", []).append(self.quick_reply(cur, line))
            cur.end()
            return
        title = cur.string("the card title")
        cur.end()
        card = _Block("card", line.indent, line.number, {"title": title})
        block.data.setdefault("cards", []).append(card)
        stack.append(card)

    def parse_card_detail(self, cur: _Cursor, line: _Line, stack: list[_Block]) -> None:
        block = stack[-1]
        word = cur.word(
            "`subtitle` or `button`",
            ("subtitle", "button"),
            'under a card, you can check: subtitle "…" and button "…"',
        )
        if word == "subtitle":
            if "subtitle" in block.data:
                raise _LineError(_WHOLE_LINE, "this card's subtitle is already given above")
            block.data["subtitle"] = cur.string("the subtitle")
        else:
            block.data.setdefault("buttons", []).append(cur.string("the button title"))
        cur.end()

    def close(self, block: _Block, stack: list[_Block]) -> None:
        """Fold a finished block's details into the item it belongs to."""
        data = block.data
        if block.kind == "test":
            # Empty, and not because its lines had mistakes (those are reported already).
            broken = any(e.line > block.line for e in self.errors)
            if not data["items"] and not broken:
                self.errors.append(
                    TranscriptError(
                        block.line,
                        1,
                        f'the test "{data["name"]}" is empty',
                        "add what the user does and what the bot answers, indented under it",
                        len(self.lines[block.line - 1].rstrip()),
                    )
                )
            self.tests.append(
                TranscriptTest(
                    data["name"],
                    block.line,
                    {**self.file_profile, **data["profile"]},
                    tuple(data["items"]),
                )
            )
        elif block.kind in ("say", "carousel"):
            # Details end before the next line is parsed, so the message is the test's last item.
            items: list[Item] = stack[0].data["items"]
            replies, buttons, cards = (data.get(k) for k in ("quick_replies", "buttons", "cards"))
            items[-1] = replace(
                data["message"],
                quick_replies=tuple(replies) if replies is not None else None,
                buttons=tuple(buttons) if buttons is not None else None,
                cards=tuple(_card(c) for c in cards) if cards is not None else None,
            )


def _check_nothing(item: ExpectMessage | ExpectNothing, items: list[Item]) -> None:
    """`bot says nothing` cannot share a turn with a message the bot says."""
    for previous in reversed(items):
        if isinstance(previous, UserInput):
            return
        if isinstance(item, ExpectNothing) and isinstance(previous, ExpectMessage):
            where = f"line {previous.line}"
        elif isinstance(item, ExpectMessage) and isinstance(previous, ExpectNothing):
            where = f"line {previous.line} says the bot says nothing"
        else:
            continue
        raise _LineError(
            _WHOLE_LINE,
            f"this contradicts {where}: after one `user` line, the bot either says nothing "
            "or says something",
            "remove one of the two lines",
        )


def _card(block: _Block) -> ExpectCard:
    buttons = block.data.get("buttons")
    return ExpectCard(
        block.line,
        block.data["title"],
        block.data.get("subtitle"),
        tuple(buttons) if buttons is not None else None,
    )


def parse_transcript(text: str, name: str = "<transcript>") -> Transcript:
    """Parse a transcript file's text. Never raises: mistakes are in `Transcript.errors`."""
    return _Parser(text, name).parse()
