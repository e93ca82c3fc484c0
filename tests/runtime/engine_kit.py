"""Helpers for the runtime tests: compile flows from text, talk to them, read the answers."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

from flowlang import ir
from flowlang.compiler import compile_sources
from flowlang.render import render
from flowlang.source import SourceFile
from runtime.engine import Turn, advance
from runtime.events import Inbound
from runtime.program import FlowLookup, ProgramView
from runtime.state import ConversationState
from runtime.templates import Renderer

CHAT_FLOWS = Path(__file__).parent / "chat_flows"

#: The six texts of the seed's lead-generation conversation, in order.
LEAD_TEXTS = [
    "Great! I'd love to learn more about your needs.",
    "What's your name?",
    "Nice to meet you, Ada!",
    "What's your email address?",
    "Perfect! Our sales team will contact you at ada@example.com within 24 hours.",
    "Thank you for your interest! 🚀",
]


def compile_flows(*texts: str, name: str = "fixture.flow") -> ir.FlowProgram:
    """Compile one or more `.flow` texts (dedented) as one program; fail the test on errors."""
    sources = [
        SourceFile(name if i == 0 else f"{Path(name).stem}{i}.flow", textwrap.dedent(t).lstrip())
        for i, t in enumerate(texts)
    ]
    result = compile_sources(sources)
    assert result.program is not None, render(result.errors, result.sources, "short")
    return result.program


def texts(turn: Turn) -> list[str]:
    """What the user reads, one string per message (button templates: their text; cards and
    media: a marker)."""
    out = []
    for body in turn.messages:
        if "text" in body:
            out.append(body["text"])
            continue
        attachment = body["attachment"]
        payload = attachment["payload"]
        if attachment["type"] == "template" and payload["template_type"] == "button":
            out.append(payload["text"])
        elif attachment["type"] == "template":
            out.append("[cards]")
        else:
            out.append(f"[{attachment['type']}]")
    return out


class Bot:
    """One user talking to a compiled program, state kept between turns."""

    def __init__(
        self,
        program: ir.FlowProgram | ProgramView,
        *,
        profile: dict[str, Any] | None = None,
        versions: FlowLookup | None = None,
        max_actions: int = 200,
        seed: int = 0,
    ) -> None:
        self.view = (
            program if isinstance(program, ProgramView) else ProgramView(program, versions=versions)
        )
        self.state = ConversationState("page-1", "user-1")
        self.profile = profile if profile is not None else {"first_name": "Ada"}
        self.renderer = Renderer()
        self.max_actions = max_actions
        self.rng = random.Random(seed)
        self.last: Turn | None = None

    def send(self, event: Inbound) -> Turn:
        turn = advance(
            self.view,
            self.state,
            event,
            renderer=self.renderer,
            profile=self.profile,
            rng=self.rng,
            max_actions=self.max_actions,
        )
        self.state = turn.state
        self.last = turn
        return turn

    def says(self, text: str) -> Turn:
        return self.send(Inbound("text", text=text))

    def taps(self, payload: str, title: str | None = None) -> Turn:
        return self.send(Inbound("postback", payload=payload, text=title))

    def quick(self, payload: str, title: str | None = None) -> Turn:
        return self.send(Inbound("quick_reply", payload=payload, text=title))

    def says_texts(self, text: str) -> list[str]:
        return texts(self.says(text))
