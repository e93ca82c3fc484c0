"""What goes into the engine (one inbound user event) and what comes out (outbound items).

Inbound events are already parsed from the webhook (or typed in `flowc chat`); outbound items
are shaped so the server can send them with the Send API without further thought."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

InboundKind = Literal[
    "text", "quick_reply", "postback", "get_started", "referral", "attachment", "location"
]


@dataclass(frozen=True)
class Inbound:
    """One event from the user.

    - text: `text`
    - quick_reply: `payload` (and the tapped title in `text`)
    - postback: `payload` (button title in `text`; a postback may carry a `ref`)
    - get_started: the Get Started button (a postback with the page's payload)
    - referral: `ref` (m.me link, ad, …)
    - attachment: `attachments` (dicts with type and url), `text` may be None
    - location: `attachments` with a location payload (lat/long)
    """

    kind: InboundKind
    text: str | None = None
    payload: str | None = None
    ref: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    mid: str | None = None


OutboundKind = Literal["message", "sender_action", "pause", "pass_thread", "take_thread"]


@dataclass(frozen=True)
class Outbound:
    """One thing to do towards Messenger, in order.

    - message: `body` is the Send API `message` object; `tag` a message tag if any
    - sender_action: `body` = {"sender_action": "typing_on" | "typing_off" | "mark_seen"}
    - pause: `seconds` to wait before the next item
    - pass_thread: `body` = {"target_app_id": …, "metadata": …} (hand over to a human/app)
    - take_thread: `body` = {"metadata": …}
    `source` is "file:line" of the action that produced it, for logs and faults.
    """

    kind: OutboundKind
    body: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    tag: str | None = None
    source: str | None = None
