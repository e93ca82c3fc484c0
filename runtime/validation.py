"""Answer checking: does a reply fit what an `ask` expects, and which value does it store?

Each `expect` kind has one small function `parse_<kind>(text)` that returns the typed value or
None. `check_answer` adds the offered choices (tapped, or typed by title or number) on top."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flowlang import ir
from flowlang.keywords import normalise

_SPACES = " \u00a0\u202f'’"
_GROUPED_SPACES = re.compile(r"\d{1,3}(?:[ \u00a0\u202f'’]\d{3})+(?:[.,]\d+)?")
_GROUPED_COMMAS = re.compile(r"\d{1,3}(?:,\d{3})+")
_DECIMAL_COMMA = re.compile(r"\d*,\d+")
_PLAIN = re.compile(r"\d+(?:\.\d+)?|\.\d+")

# An email address, checked by `parse_email` in two parts. In Python: no leading dot and no
# `..` anywhere. Then this pattern: the local part (letters, digits and .!#$%&'*+/=?^`{|}~-,
# not ending with a dot), `@`, domain labels (letters, digits, `-` and `_`, starting and
# ending with a letter or digit) each followed by a dot, and a top-level domain of 2+ letters.
# The quantifiers are possessive (a label cannot hold a dot, so giving characters back never
# helps) and the label's last character is checked by looking back, which spares the regex
# engine most of its backtracking. ASCII text gets a copy compiled with re.ASCII: \w means the
# same there, and is quicker to test.
_EMAIL_BODY = r"[\w.!#$%&'*+/=?^`{|}~-]+(?<!\.)@(?:[^\W_][\w-]*+(?<![-_])\.)++[^\W\d_]{2,}+"
_EMAIL_UNICODE = re.compile(_EMAIL_BODY)
_EMAIL_ASCII = re.compile(_EMAIL_BODY, re.ASCII)
_PHONE = re.compile(r"\+?[\d\s().-]+")
PHONE_DIGITS = (7, 15)

YES = frozenset(
    normalise(w)
    for w in (
        "yes", "y", "yeah", "yea", "yep", "yup", "ya", "sure", "ok", "okay", "true", "of course",
        "absolutely", "definitely", "correct", "right", "yes please", "oui", "si", "ja",
        "👍", "👌", "✅", "✔️",
    )
)  # fmt: skip
NO = frozenset(
    normalise(w)
    for w in (
        "no", "n", "nope", "nah", "nay", "false", "not really", "never", "no thanks",
        "no thank you", "non", "nein", "👎", "❌", "✖️",
    )
)  # fmt: skip


def parse_text(text: str) -> str | None:
    """Any text with something other than spaces in it, without surrounding spaces."""
    text = text.strip()
    return text or None


def parse_number(text: str) -> int | float | None:
    """A whole or decimal number, as people type them.

    `42`, `-3`, `+7`, `3.5`, `1,5` (decimal comma), `1,000` and `1 000` (thousands), and
    `1,234.5` / `1.234,5` (the last separator is the decimal one). Whole numbers stay `int`.

    >>> [parse_number(s) for s in ("42", "1,5", "1,000", "1.234,5", "two")]
    [42, 1.5, 1000, 1234.5, None]
    """
    s = text.strip()
    sign = ""
    if s[:1] in ("+", "-"):
        sign, s = s[0], s[1:].lstrip()
    if _GROUPED_SPACES.fullmatch(s):
        s = "".join(ch for ch in s if ch not in _SPACES)
    if "," in s and "." in s:
        decimal = "," if s.rfind(",") > s.rfind(".") else "."
        thousands = "." if decimal == "," else ","
        whole, _, fraction = s.rpartition(decimal)
        if not re.fullmatch(rf"\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})*", whole):
            return None
        s = whole.replace(thousands, "") + "." + fraction
    elif "," in s:
        if _GROUPED_COMMAS.fullmatch(s):
            s = s.replace(",", "")
        elif _DECIMAL_COMMA.fullmatch(s):
            s = s.replace(",", ".")
        else:
            return None
    if not _PLAIN.fullmatch(s):
        return None
    return float(sign + s) if "." in s else int(sign + s)


def parse_email(text: str) -> str | None:
    """An email address (one `@`, a dotted domain, a real top-level domain), as typed."""
    text = text.strip()
    if text[:1] == "." or ".." in text:
        return None
    return text if (_EMAIL_ASCII if text.isascii() else _EMAIL_UNICODE).fullmatch(text) else None


def parse_phone(text: str) -> str | None:
    """A phone number: digits, spaces, dashes, dots, brackets and a leading `+`, with 7 to 15
    digits. Stored compact: `+1 (555) 123-4567` becomes `+15551234567`."""
    text = text.strip()
    if not _PHONE.fullmatch(text):
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    low, high = PHONE_DIGITS
    if not low <= len(digits) <= high:
        return None
    return ("+" if text.startswith("+") else "") + digits


def parse_yes_no(text: str) -> bool | None:
    """True for yes-like answers (`yes`, `Y`, `yeah!`, `👍`, …), False for no-like ones."""
    said = normalise(text)
    if said in YES:
        return True
    if said in NO:
        return False
    return None


def parse_pattern(text: str, pattern: str) -> str | None:
    """The text (without surrounding spaces) when the whole of it matches `pattern`, ignoring
    case. Raises `re.error` for a broken pattern (the compiler reports those first)."""
    text = text.strip()
    return text if re.fullmatch(pattern, text, re.IGNORECASE) else None


@dataclass(frozen=True, slots=True)
class Answer:
    """The verdict on a reply: `ok`, the `value` to store, and which choice (0-based) it was."""

    ok: bool
    value: Any = None
    choice: int | None = None


INVALID = Answer(False)


def _typed(ask: ir.AskAction, text: str) -> Any:
    expect = ask.expect
    if expect == "text":
        return parse_text(text)
    if expect == "number":
        return parse_number(text)
    if expect == "email":
        return parse_email(text)
    if expect == "phone":
        return parse_phone(text)
    if expect == "yes_no":
        return parse_yes_no(text)
    if expect == "pattern":
        return parse_pattern(text, ask.pattern or "")
    return None


_PARSERS: dict[str, Any] = {
    "text": parse_text,
    "number": parse_number,
    "email": parse_email,
    "phone": parse_phone,
    "yes_no": parse_yes_no,
}


def _chosen(ask: ir.AskAction, index: int) -> tuple[Any, int]:
    title = ask.choices[index].title
    if ask.expect == "choice":
        return title, index
    # An offered choice is always a valid answer; it is stored typed when it reads as one.
    value = _typed(ask, title)
    return (title if value is None else value), index


def find_choice(ask: ir.AskAction, text: str | None, payload: str | None) -> int | None:
    """The index of the choice a reply picks: by payload, by title, or (for `choice`
    questions) by its 1-based number. None when it picks none."""
    choices = ask.choices
    if not choices:
        return None
    if payload is not None:
        for index, choice in enumerate(choices):
            if choice.payload == payload:
                return index
    if text:
        said = normalise(text)
        if said:
            for index, choice in enumerate(choices):
                if normalise(choice.title) == said:
                    return index
        stripped = text.strip()
        if ask.expect == "choice" and stripped.isdigit() and 1 <= int(stripped) <= len(choices):
            return int(stripped) - 1
    return None


def simple_parser(ask: ir.AskAction) -> Any:
    """The parser that alone decides the answers to `ask` (`parse_text`, `parse_email`, …):
    for a question without choices whose `expect` is a built-in kind. None otherwise (then
    `judge` decides). `parser(text)` is the value to store, or None for a wrong answer."""
    return None if ask.choices else _PARSERS.get(ask.expect)


def judge(ask: ir.AskAction, text: str | None, payload: str | None = None) -> Any:
    """`check_answer` without the `Answer` wrapper, for the engine's hot path: a
    `(value, choice)` pair for a good answer, None for a wrong one."""
    if ask.choices:
        index = find_choice(ask, text, payload)
        if index is not None:
            return _chosen(ask, index)
    expect = ask.expect
    if expect == "choice" or text is None:
        return None
    parse = _PARSERS.get(expect)
    value = parse(text) if parse is not None else _typed(ask, text)
    return None if value is None else (value, None)


def check_answer(ask: ir.AskAction, text: str | None, payload: str | None = None) -> Answer:
    """Check a reply against a question.

    >>> ask = ir.AskAction(id="a", source=ir.SourceRef(file="f", line=1, column=1),
    ...                    prompts=("Age?",), expect="number")
    >>> check_answer(ask, " 42 ")
    Answer(ok=True, value=42, choice=None)
    """
    verdict = judge(ask, text, payload)
    return INVALID if verdict is None else Answer(True, *verdict)
