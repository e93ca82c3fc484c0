"""Answer checking, one expect kind at a time (the engine tests cover the wiring)."""

from __future__ import annotations

import pytest

from flowlang import ir
from runtime.validation import (
    check_answer,
    parse_email,
    parse_number,
    parse_pattern,
    parse_phone,
    parse_yes_no,
)

WHERE = ir.SourceRef(file="f.flow", line=1, column=1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        (" +7 ", 7),
        ("-3", -3),
        ("3.25", 3.25),
        (".5", 0.5),
        ("1,5", 1.5),
        ("1,000", 1000),
        ("12,345,678", 12345678),
        ("1 000", 1000),
        ("1\u00a0000,5", 1000.5),
        ("1'000", 1000),
        ("1,234.5", 1234.5),
        ("1.234,5", 1234.5),
        ("٣", 3),
        ("", None),
        ("abc", None),
        ("1,2,3", None),
        ("1.2.3", None),
        ("12,34.5", None),
        ("1e3", None),
        ("nan", None),
        ("inf", None),
        ("--1", None),
        ("1 2", None),
    ],
)
def test_parse_number(text: str, value: object) -> None:
    assert parse_number(text) == value
    assert type(parse_number(text)) is type(value)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("ada@example.com", True),
        ("Ada.Lovelace+news@mail.example.co.uk", True),
        ("josé@exämple.com", True),
        ("ada@example", False),
        ("ada@.example.com", False),
        (".ada@example.com", False),
        ("ada.@example.com", False),
        ("ada..l@example.com", False),
        ("ada@exa mple.com", False),
        ("ada@@example.com", False),
        ("@example.com", False),
        ("ada@example.c", False),
        ("ada@example.123", False),
        ("ada@-example.com", False),
    ],
)
def test_parse_email(text: str, ok: bool) -> None:
    assert (parse_email(text) == text) is ok


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("+1 (555) 123-4567", "+15551234567"),
        ("06 12 34 56 78", "0612345678"),
        ("555.123.4567", "5551234567"),
        ("1234567", "1234567"),
        ("123456", None),
        ("+1234567890123456", None),
        ("555-CALL-NOW", None),
        ("12+34567890", None),
    ],
)
def test_parse_phone(text: str, value: str | None) -> None:
    assert parse_phone(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", True),
        ("YES!", True),
        ("Y", True),
        ("yeah", True),
        ("Yep.", True),
        ("sure", True),
        ("ok", True),
        ("true", True),
        ("👍", True),
        ("👍🏽", True),
        ("✅", True),
        ("no", False),
        ("N", False),
        ("nope", False),
        ("Nah", False),
        ("false", False),
        ("no thanks", False),
        ("👎", False),
        ("maybe", None),
        ("yes no", None),
        ("", None),
    ],
)
def test_parse_yes_no(text: str, value: bool | None) -> None:
    assert parse_yes_no(text) is value


def test_parse_pattern_matches_the_whole_text_ignoring_case() -> None:
    assert parse_pattern(" ab123 ", r"[A-Z]{2}\d{3}") == "ab123"
    assert parse_pattern("ab1234", r"[A-Z]{2}\d{3}") is None
    assert parse_pattern("ab123", r"(?-i:[A-Z]{2})\d{3}") is None


def _ask(expect: str, *titles: str) -> ir.AskAction:
    choices = tuple(
        ir.Choice(title=t, payload=ir.answer_payload("f", "s.0", i)) for i, t in enumerate(titles)
    )
    return ir.AskAction(
        id="s.0",
        source=WHERE,
        prompts=("?",),
        expect=expect,
        choices=choices,  # type: ignore[arg-type]
    )


def test_choice_by_payload_title_and_number() -> None:
    ask = _ask("choice", "Red", "Green")
    assert check_answer(ask, None, "ANSWER:f:s.0:1").value == "Green"
    assert check_answer(ask, "  GREEN! ", None).choice == 1
    assert check_answer(ask, "1", None).value == "Red"
    assert not check_answer(ask, "3", None).ok
    assert not check_answer(ask, "Blue", None).ok
    assert not check_answer(ask, None, "ANSWER:f:s.0:7").ok


def test_offered_choices_of_a_typed_question_store_typed_values() -> None:
    ask = _ask("yes_no", "Yes", "No thanks")
    assert check_answer(ask, "No thanks", None).value is False
    assert check_answer(ask, "yep", None).value is True
    ask = _ask("number", "1", "2", "5+")
    assert check_answer(ask, None, "ANSWER:f:s.0:2").value == "5+"  # offered: always valid
    assert check_answer(ask, "2", None).value == 2  # the title "2", not choice number 2
