"""`flowc chat`: talk to compiled flows in a terminal, or script a conversation with `--json`.

`ChatSession` is the engine's imperative shell for one simulated user: it loads the state from
a store (in memory unless one is plugged in), runs `engine.advance`, saves the new state and
remembers what the bot offered last, so a typed number can tap it. Everything that prints is in
`run_interactive` / `run_json`; the session itself does no I/O."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runtime.engine import Turn, advance, reset, take_back
from runtime.events import Inbound, Outbound
from runtime.program import ProgramView
from runtime.state import ConversationState
from runtime.templates import Renderer

#: The profile a chat user has unless options say otherwise.
DEFAULT_PROFILE: dict[str, Any] = {
    "first_name": "Alex",
    "last_name": "Doe",
    "profile_pic": "",
    "locale": "en_US",
    "timezone": 0,
    "gender": "",
}
DEFAULT_EMAIL = "alex@example.com"
DEFAULT_PHONE = "+15555550123"
#: Longest pause actually slept in the interactive chat (flows may ask for longer ones).
MAX_SLEEP = 3.0

HELP = """\
Type a message and press Enter. Other inputs:
  1, 2, …             tap a numbered button or quick reply from the bot's last answer
  postback:PAYLOAD    tap a button that sends PAYLOAD (also menu items, ice breakers)
  quick:PAYLOAD       tap a quick reply that sends PAYLOAD
  get_started         tap Messenger's Get Started button
  referral:REF        arrive through m.me/yourpage?ref=REF or an ad
  image:URL           send a picture (also video:, audio:, file:)
  location:LAT,LONG   share a location
  text:MESSAGE        send MESSAGE as typed, even when it looks like one of the above
Commands:
  /state     show the conversation: flow, step, status, variables
  /reset     forget everything and start a new conversation
  /takeback  the person hands the conversation back to the bot (after a hand over)
  /help      this help
  /quit      leave (also Ctrl-D)"""


class ConversationStore(Protocol):
    """Where the chat keeps the conversation (the server's store fits this shape)."""

    def load(self, page_id: str, psid: str) -> ConversationState | None: ...

    def save(self, state: ConversationState) -> ConversationState | None: ...


class MemoryConversations:
    """The simplest store: conversations in a dict, for as long as the process lives."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], ConversationState] = {}

    def load(self, page_id: str, psid: str) -> ConversationState | None:
        """The saved state, or None for a new conversation."""
        return self._states.get((page_id, psid))

    def save(self, state: ConversationState) -> ConversationState:
        """Keep the state (the engine never mutates it, so no copy is needed)."""
        self._states[(state.page_id, state.psid)] = state
        return state


OptionKind = Literal[
    "postback", "web_url", "phone_number", "quick_reply", "user_email", "user_phone_number"
]


@dataclass(frozen=True)
class Option:
    """Something the bot offered that the user can tap: a button or a quick reply."""

    kind: OptionKind
    title: str
    payload: str | None = None
    url: str | None = None


def options_of(outbox: Iterable[Outbound]) -> list[Option]:
    """The buttons and quick replies of a turn's messages, in the order they were sent."""
    found: list[Option] = []
    for item in outbox:
        if item.kind != "message":
            continue
        body = item.body
        payload = body.get("attachment", {}).get("payload", {})
        buttons = list(payload.get("buttons", ()))
        for element in payload.get("elements", ()):
            buttons.extend(element.get("buttons", ()))
        for button in buttons:
            found.append(
                Option(
                    button["type"],
                    button.get("title", ""),
                    button.get("payload"),
                    button.get("url"),
                )
            )
        for quick in body.get("quick_replies", ()):
            kind = quick.get("content_type")
            if kind == "text":
                found.append(Option("quick_reply", quick.get("title", ""), quick.get("payload")))
            elif kind in ("user_email", "user_phone_number"):
                found.append(Option(kind, "your email" if kind == "user_email" else "your phone"))
    return found


class ChatSession:
    """One simulated Messenger user talking to the flows.

    >>> session = ChatSession(ProgramView(program))          # doctest: +SKIP
    >>> turn = session.send(Inbound("text", text="pricing"))  # doctest: +SKIP
    """

    def __init__(
        self,
        program: ProgramView,
        *,
        page_id: str = "chat-page",
        psid: str = "chat-user",
        profile: Mapping[str, Any] | None = None,
        email: str = DEFAULT_EMAIL,
        phone: str = DEFAULT_PHONE,
        store: ConversationStore | None = None,
        renderer: Renderer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.program = program
        self.page_id = page_id
        self.psid = psid
        self.profile = dict(DEFAULT_PROFILE if profile is None else profile)
        self.email = email
        self.phone = phone
        self.store: ConversationStore = store if store is not None else MemoryConversations()
        self.renderer = renderer
        self.rng = rng
        #: What the bot offered in its last answer (numbered from 1 in the chat).
        self.options: list[Option] = []

    @property
    def state(self) -> ConversationState:
        """The conversation's current state (a fresh one before the first message)."""
        return self.store.load(self.page_id, self.psid) or ConversationState(
            self.page_id, self.psid
        )

    def _save(self, state: ConversationState) -> None:
        self.store.save(state)

    def send(self, event: Inbound) -> Turn:
        """Run one event through the engine and keep the new state."""
        turn = advance(
            self.program,
            self.state,
            event,
            renderer=self.renderer,
            profile=self.profile,
            rng=self.rng,
        )
        self._save(turn.state)
        offered = options_of(turn.outbox)
        if offered or turn.messages:
            self.options = offered
        return turn

    def reset(self) -> None:
        """Forget the conversation: the next message starts from scratch."""
        self._save(reset(self.state))
        self.options = []

    def take_back(self) -> None:
        """The person hands the conversation back to the bot."""
        self._save(take_back(self.state))

    def tap(self, number: int) -> Inbound | str:
        """The event for tapping option `number` (1-based), or a note when the tap sends
        nothing to the bot (a link or a call button)."""
        option = self.options[number - 1]
        if option.kind == "postback":
            return Inbound("postback", text=option.title, payload=option.payload)
        if option.kind == "quick_reply":
            return Inbound("quick_reply", text=option.title, payload=option.payload)
        if option.kind == "user_email":
            return Inbound("quick_reply", text=self.email, payload=self.email)
        if option.kind == "user_phone_number":
            return Inbound("quick_reply", text=self.phone, payload=self.phone)
        if option.kind == "web_url":
            return f"(opens {option.url} in the browser; the bot is not told)"
        return f"(calls {option.payload}; the bot is not told)"

    def _title_for(self, kind: str, payload: str) -> str | None:
        for option in self.options:
            if option.kind == kind and option.payload == payload:
                return option.title
        return None

    def parse(self, line: str, *, numbers: bool = True) -> Inbound | str | None:
        """Turn one input line into an event (see `HELP`). A number taps an offered option
        when `numbers` is on and there is such an option. Returns a note (str) for taps that
        send nothing, and None for an empty line."""
        text = line.rstrip("\r\n")
        if not text.strip():
            return None
        head, sep, rest = text.partition(":")
        key = head.strip().lower()
        if sep:
            if key == "text":
                return Inbound("text", text=rest)
            if key == "postback" and rest:
                return Inbound("postback", text=self._title_for("postback", rest), payload=rest)
            if key == "quick" and rest:
                title = self._title_for("quick_reply", rest)
                return Inbound(
                    "quick_reply", text=title if title is not None else rest, payload=rest
                )
            if key == "referral" and rest:
                return Inbound("referral", ref=rest)
            if key in ("image", "video", "audio", "file") and rest:
                attachment = {"type": key, "payload": {"url": rest.strip()}}
                return Inbound("attachment", attachments=(attachment,))
            if key == "location" and rest:
                lat, _, long = rest.partition(",")
                try:
                    coordinates = {"lat": float(lat), "long": float(long)}
                except ValueError:
                    return Inbound("text", text=text)
                attachment = {"type": "location", "payload": {"coordinates": coordinates}}
                return Inbound("location", attachments=(attachment,))
        if key == "get_started" and not sep:
            return Inbound(
                "get_started", payload=self.program.get_started_payload, text="Get Started"
            )
        stripped = text.strip()
        if numbers and stripped.isdigit() and 1 <= int(stripped) <= len(self.options):
            return self.tap(int(stripped))
        return Inbound("text", text=text)


# ------------------------------------------------------------------------------- rendering


def send_api_body(psid: str, item: Outbound) -> dict[str, Any] | None:
    """The Send API (or thread control) request body for an outbound item; None for pauses."""
    recipient = {"id": psid}
    if item.kind == "message":
        body: dict[str, Any] = {"recipient": recipient, "messaging_type": "RESPONSE"}
        if item.tag:
            body["messaging_type"] = "MESSAGE_TAG"
            body["tag"] = item.tag
        body["message"] = item.body
        return body
    if item.kind == "sender_action":
        return {"recipient": recipient, **item.body}
    if item.kind in ("pass_thread", "take_thread"):
        return {"recipient": recipient, **item.body}
    return None


def describe(item: Outbound, first_number: int) -> tuple[list[str], int]:
    """Readable lines for one outbound item, numbering its options from `first_number`.
    Returns the lines and the next free number."""
    number = first_number

    def option(title: str, note: str = "") -> str:
        nonlocal number
        line = f"     [{number}] {title}{note}"
        number += 1
        return line

    def buttons(items: Iterable[Mapping[str, Any]], indent: str = "") -> list[str]:
        out = []
        for b in items:
            kind = b.get("type")
            if kind == "web_url":
                out.append(indent + option(b.get("title", ""), f"  (opens {b.get('url')})"))
            elif kind == "phone_number":
                out.append(indent + option(b.get("title", ""), f"  (calls {b.get('payload')})"))
            else:
                out.append(indent + option(b.get("title", "")))
        return out

    if item.kind == "sender_action":
        return ["     (typing…)"], number
    if item.kind == "pause":
        return [], number
    if item.kind == "pass_thread":
        return ["     (handed over to a person: the bot stays silent until /takeback)"], number
    if item.kind == "take_thread":
        return ["     (the bot takes the conversation back)"], number
    body = item.body
    lines: list[str] = []
    attachment = body.get("attachment")
    if attachment is None:
        lines.append(f"bot: {body.get('text', '')}")
    else:
        payload = attachment.get("payload", {})
        kind = attachment.get("type")
        if kind == "template" and payload.get("template_type") == "button":
            lines.append(f"bot: {payload.get('text', '')}")
            lines.extend(buttons(payload.get("buttons", ())))
        elif kind == "template" and payload.get("template_type") == "generic":
            lines.append("bot: (cards — swipe sideways)")
            for index, card in enumerate(payload.get("elements", ()), 1):
                lines.append(f"     card {index}: {card.get('title', '')}")
                if card.get("subtitle"):
                    lines.append(f"       {card['subtitle']}")
                if card.get("image_url"):
                    lines.append(f"       image: {card['image_url']}")
                if card.get("default_action"):
                    lines.append(f"       tap the card: opens {card['default_action'].get('url')}")
                lines.extend(buttons(card.get("buttons", ()), "  "))
        else:
            lines.append(f"bot: ({kind}) {payload.get('url', '')}")
    for quick in body.get("quick_replies", ()):
        content = quick.get("content_type")
        if content == "user_email":
            lines.append(option("(quick reply) share your email address"))
        elif content == "user_phone_number":
            lines.append(option("(quick reply) share your phone number"))
        else:
            lines.append(option(f"(quick reply) {quick.get('title', '')}"))
    return lines, number


def describe_state(state: ConversationState) -> str:
    """The `/state` report: where the conversation is and what it remembers."""
    lines = [
        f"flow:        {state.flow_id or '-'}",
        f"version:     {(state.flow_version or '-')[:19]}",
        f"step:        {state.step or '-'}",
        f"status:      {state.status}"
        + (f" (wrong answers: {state.tries})" if state.tries else ""),
        f"handed over: {'yes' if state.handed_over else 'no'}",
    ]
    for frame in reversed(state.stack):
        lines.append(f"paused:      {frame.flow_id} at step {frame.step} ({frame.reason})")
    variables = json.dumps(state.variables, ensure_ascii=False, indent=2, sort_keys=True)
    lines.append(f"variables:   {variables}")
    return "\n".join(lines)


def _faults(turn: Turn, err: Callable[[str], None]) -> None:
    for fault in turn.faults:
        err(f"fault: {fault}")


def run_json(
    session: ChatSession,
    lines: Iterable[str],
    out: Callable[[str], None],
    err: Callable[[str], None],
    *,
    actions: bool = False,
) -> None:
    """The scriptable chat: one input per line, one JSON Send API body per bot message.

    With `actions`, typing indicators and thread-control requests are printed too; pauses
    never are (and nothing sleeps)."""
    for line in lines:
        event = session.parse(line, numbers=False)
        if event is None:
            continue
        if isinstance(event, str):  # cannot happen without numbers, kept for safety
            continue
        turn = session.send(event)
        for item in turn.outbox:
            if item.kind != "message" and not actions:
                continue
            body = send_api_body(session.psid, item)
            if body is not None:
                out(json.dumps(body, ensure_ascii=False))
        _faults(turn, err)


def run_interactive(
    session: ChatSession,
    read: Callable[[str], str | None],
    out: Callable[[str], None],
    err: Callable[[str], None],
    *,
    sleep: Callable[[float], None] | None = time.sleep,
) -> None:
    """The terminal chat. `read(prompt)` returns a line or None at the end of input."""
    out("Chatting with your flows. Type /help for what you can do, /quit to leave.")
    while True:
        line = read("you> ")
        if line is None:
            out("")
            return
        command = line.strip().lower()
        if command in ("/quit", "/exit", "/q"):
            return
        if command == "/help":
            out(HELP)
            continue
        if command == "/state":
            out(describe_state(session.state))
            continue
        if command == "/reset":
            session.reset()
            out("(new conversation)")
            continue
        if command == "/takeback":
            session.take_back()
            out("(the bot answers again)")
            continue
        if command.startswith("/"):
            out(f"unknown command {command!r}; type /help")
            continue
        event = session.parse(line)
        if event is None:
            continue
        if isinstance(event, str):
            out(event)
            continue
        handed_over = session.state.handed_over
        turn = session.send(event)
        number = 1
        for item in turn.outbox:
            if item.kind == "pause":
                if sleep is not None:
                    sleep(min(item.seconds, MAX_SLEEP))
                continue
            shown, number = describe(item, number)
            for text in shown:
                out(text)
        if handed_over and not turn.outbox:
            out("     (a person has this conversation: the bot stays silent; /takeback)")
        elif not turn.outbox and not turn.faults:
            out("     (no answer: no flow matched and there is no fallback flow)")
        _faults(turn, err)
