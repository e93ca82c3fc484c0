"""Conversation state: what the runtime remembers about one (page, user) conversation.

Plain data, JSON-able, shared by the engine (which computes a new state per event) and the
store (which persists it with optimistic concurrency on `version`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: Bumped when the shape of a saved state changes; older states are migrated or reset.
STATE_VERSION = 1

Status = Literal["idle", "running", "waiting"]


@dataclass
class Frame:
    """A flow that is paused on the stack: the caller of `call`, or an interrupted flow."""

    flow_id: str
    flow_version: str
    step: str
    position: str | None
    reason: Literal["call", "interrupt"]
    status: Status = "running"
    tries: int = 0


@dataclass
class ConversationState:
    """The state of one conversation, keyed by (page_id, psid).

    `flow_version` is the content hash of the flow version the conversation started on: a
    waiting conversation finishes on that version even after a new one is deployed.
    `position` is the IR action id to resume at (the pending `ask` while `status` is
    "waiting"). `version` is the optimistic-concurrency counter owned by the store."""

    page_id: str
    psid: str
    flow_id: str | None = None
    flow_version: str | None = None
    step: str | None = None
    position: str | None = None
    status: Status = "idle"
    tries: int = 0
    variables: dict[str, Any] = field(default_factory=dict)
    stack: list[Frame] = field(default_factory=list)
    handed_over: bool = False
    version: int = 0
    state_version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for the store and `/state`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationState:
        """Rebuild a state saved with `to_dict`."""
        data = dict(data)
        data["stack"] = [Frame(**f) for f in data.get("stack", [])]
        return cls(**data)
