"""Normalisation of user text and the trigger index."""

from __future__ import annotations

import pytest
from engine_kit import compile_flows

from flowlang.keywords import normalise, words
from runtime.matching import TriggerIndex


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", ("hello", "world")),
        ("ÉCOLE", ("ecole",)),
        ("Straße", ("strasse",)),
        ("I'd like it", ("id", "like", "it")),
        ("rock’n’roll", ("rocknroll",)),
        ("snake_case-word", ("snake", "case", "word")),
        ("👍🏽 great", ("👍", "great")),
        ("ok👍", ("ok", "👍")),
        ("   ", ()),
        ("İstanbul", ("istanbul",)),
        ("ｆｕｌｌｗｉｄｔｈ", ("fullwidth",)),
    ],
)
def test_words(text: str, expected: tuple[str, ...]) -> None:
    assert words(text) == expected


def test_normalise_joins_words() -> None:
    assert normalise("  Talk -- to   SALES?! ") == "talk to sales"


FLOWS = """
flow a
  priority 2
  when user says "alpha beta"
  when postback "P"
  when referral "r"
  step s
    say "a"

flow b
  priority 2
  interrupt when user says "beta"
  when message matches "gamma\\d"
  when quick reply "Q"
  when get started
  when nothing else matches
  step s
    say "b"

flow c
  inactive
  when user says "gamma"
  step s
    say "c"
"""


def test_trigger_index_finds_the_best_hit_per_event_kind() -> None:
    index = TriggerIndex(compile_flows(FLOWS).flows.values())
    assert (index.by_text("ALPHA BETA!") or object()).flow_id == "a"  # type: ignore[attr-defined]
    hit = index.by_text("just beta")
    assert hit is not None and hit.flow_id == "b" and hit.interrupting
    assert index.by_text("alpha beta", interrupting_only=True).flow_id == "b"  # type: ignore[union-attr]
    assert index.by_text("gamma7").flow_id == "b"  # type: ignore[union-attr]
    assert index.by_text("gamma") is None  # flow c is inactive; the regex wants a digit
    assert index.by_payload("P").flow_id == "a"  # type: ignore[union-attr]
    assert index.by_payload("Q").flow_id == "b"  # type: ignore[union-attr]
    assert index.by_referral("r").flow_id == "a"  # type: ignore[union-attr]
    assert index.by_referral("x") is None
    assert index.get_started().flow_id == "b"  # type: ignore[union-attr]
    assert index.fallback().flow_id == "b"  # type: ignore[union-attr]
