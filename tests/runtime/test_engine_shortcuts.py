"""The engine's shortcuts (`_quick_turn`, and segments played in one go) give exactly the turns
the action-by-action path gives: same messages, faults, trace and new state, turn by turn."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from engine_kit import CHAT_FLOWS, LEAD_TEXTS, compile_flows, texts

import runtime.engine as engine
from flowlang import ir
from flowlang.load import compile_paths
from runtime.events import Inbound
from runtime.program import ProgramView
from runtime.state import ConversationState
from runtime.templates import Renderer

FLOWS = Path(__file__).resolve().parents[2] / "flows"

CALLS = """
flow main
  when user says "main"
  step s
    say "Hello {{ user.first_name }}, in main."
    call helper
    ask "Your age?" as age
      expect a number
    say "Age {{ age }} noted."
    goto done
  step done
    say "Bye."

flow helper
  step h
    ask "Your name?" as name
    say "Thanks {{ name }}."

flow agent
  interrupt when user says "agent"
  step a
    say "Getting someone."
    resume

flow odd
  when user says "odd"
  step a
    typing for 1 second
    ask "Your name?" as name
    send image "https://example.com/{{ name }}.png"
    ask "And your city?" as city
    say "{{ 1 / 0 }}"
"""

#: Answers that fit the common `expect` kinds, so random walks also get past the questions.
SAMPLES = ["Ada", "  Bob  ", "{{ 7*7 }}", "ada@example.com", "a@b.c", "42", "1,5", "yes",
           "nope", "+1 (555) 123-4567", "12", "agent", "agent please", "", "main", "help",
           "I am interested in pricing", "hi", "order 12", "café ok"]  # fmt: skip


def _program(path: Path) -> ir.FlowProgram:
    result = compile_paths([path])
    assert result.program is not None
    return result.program


def _vocabulary(program: ir.FlowProgram) -> tuple[list[str], list[str]]:
    """Every payload and every keyword or title of a program, for random events."""
    payloads: set[str] = {"NOPE", "FLOW:nope", "ANSWER:x:y:0"}
    words: set[str] = set(SAMPLES)

    def walk(value: Any, key: str | None = None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, key)
        elif isinstance(value, str):
            if key in ("payload", "get_started_payload"):
                payloads.add(value)
            elif key in ("values", "title"):
                words.add(value)

    walk(program.model_dump())
    return sorted(payloads), sorted(words)


def _event(rng: random.Random, payloads: list[str], words: list[str]) -> Inbound:
    roll = rng.random()
    if roll < 0.7:
        return Inbound("text", text=rng.choice(words))
    if roll < 0.85:
        return Inbound("postback", payload=rng.choice(payloads), text=rng.choice([None, *words]))
    if roll < 0.95:
        return Inbound("quick_reply", payload=rng.choice(payloads), text=rng.choice(words))
    return Inbound("get_started")


def _seen(turn: engine.Turn) -> tuple[Any, ...]:
    return (
        [(o.kind, o.body, o.seconds, o.tag, o.source) for o in turn.outbox],
        [(f.flow_id, f.step, f.source, f.reason) for f in turn.faults],
        list(turn.trace),
        turn.state.to_dict(),
    )


def _talk(
    program: ir.FlowProgram, events: list[Inbound], *, profile: dict[str, Any], max_actions: int
) -> list[tuple[Any, ...]]:
    view, renderer = ProgramView(program), Renderer()
    state = ConversationState("page", "user")
    seen = []
    for _ in range(2):  # the second time round, the shortcuts are built and taken
        for event in events:
            turn = engine.advance(
                view,
                state,
                event,
                renderer=renderer,
                profile=profile,
                rng=random.Random(7),
                max_actions=max_actions,
            )
            seen.append(_seen(turn))
            state = turn.state
    return seen


def _compare(
    monkeypatch: pytest.MonkeyPatch,
    program: ir.FlowProgram,
    events: list[Inbound],
    *,
    profile: dict[str, Any] | None = None,
    max_actions: int = 200,
) -> None:
    profile = {"first_name": "Ada"} if profile is None else profile
    quick = _talk(program, events, profile=profile, max_actions=max_actions)
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_SHORTCUTS", False)
        slow = _talk(program, events, profile=profile, max_actions=max_actions)
    assert len(quick) == len(slow)
    for index, (got, expected) in enumerate(zip(quick, slow, strict=True)):
        assert got == expected, f"turn {index}: {events[index % len(events)]}"


def test_the_lead_generation_conversation_takes_the_quick_path() -> None:
    view, renderer = ProgramView(_program(FLOWS)), Renderer()
    for attempt in range(2):
        state = ConversationState("page", f"user{attempt}")
        quick = []
        said: list[str] = []
        for line in ("I am interested in pricing", "Ada", "ada@example.com"):
            event = Inbound("text", text=line)
            quick.append(engine._quick_turn(view, state, event, renderer, None, None, 200))
            turn = engine.advance(view, state, event, renderer=renderer)
            said += texts(turn)
            state = turn.state
        assert said == LEAD_TEXTS
    # The first conversation builds the tables; the second one is all shortcuts.
    assert all(turn is not None for turn in quick)


def test_a_scripted_tour_of_the_example_flows_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["I am interested in pricing", "Ada", "not an email", "agent", "pricing", "Bob",
             "ada@example.com", "hi", "help", "Billing", "order 12", "nothing in particular",
             "pricing", "Cy", "x", "y", "z", "demo", "  ", "Dee", "dee@example.com"]  # fmt: skip
    events = [Inbound("text", text=line) for line in lines]
    events += [Inbound("get_started"), Inbound("postback", payload="PRICING"), events[1]]
    _compare(monkeypatch, _program(FLOWS), events)
    _compare(monkeypatch, _program(FLOWS), events, profile={})


@pytest.mark.parametrize("max_actions", [200, 4, 2, 1])
def test_calls_interrupts_and_small_budgets_agree(
    monkeypatch: pytest.MonkeyPatch, max_actions: int
) -> None:
    lines = ["main", "Ada", "agent", "forty", "41", "main", "agent", "Bo", "7", "main", "Cy",
             "odd", "Ada", "Paris", "odd", "Bo", "Rome"]  # fmt: skip
    events = [Inbound("text", text=line) for line in lines]
    _compare(monkeypatch, compile_flows(CALLS), events, max_actions=max_actions)


@pytest.mark.parametrize("seed", range(6))
def test_random_conversations_agree(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    for program in (_program(FLOWS), _program(CHAT_FLOWS), compile_flows(CALLS)):
        payloads, words = _vocabulary(program)
        events = [_event(rng, payloads, words) for _ in range(60)]
        _compare(monkeypatch, program, events, max_actions=rng.choice([200, 200, 5, 2]))
