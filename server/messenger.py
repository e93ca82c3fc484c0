"""Messenger webhook bodies → events: the kind of each item, its conversation, its dedupe key,
and the runtime `Inbound` a user event becomes. Pure: no I/O, no clock.

Shapes follow the messenger-platform reference §4. Meta names no event type in the body; the
kind comes from which key an item carries. Every entry and every item of `messaging` and
`standby` becomes one event; an item of a kind we do not know is kept as kind "unknown"."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from runtime.events import Inbound

EventKind = Literal[
    "message",
    "echo",
    "postback",
    "referral",
    "optin",
    "delivery",
    "read",
    "reaction",
    "message_edit",
    "pass_thread_control",
    "take_thread_control",
    "request_thread_control",
    "app_roles",
    "account_linking",
    "policy_enforcement",
    "standby",
    "unknown",
]

#: The key that marks each kind inside a messaging item, in the order they are tested (a
#: message may also carry a `referral`, from a click-to-Messenger ad: it is still a message).
_DISCRIMINATORS: tuple[tuple[str, EventKind], ...] = (
    ("message", "message"),
    ("postback", "postback"),
    ("referral", "referral"),
    ("optin", "optin"),
    ("delivery", "delivery"),
    ("read", "read"),
    ("reaction", "reaction"),
    ("message_edit", "message_edit"),
    ("pass_thread_control", "pass_thread_control"),
    ("take_thread_control", "take_thread_control"),
    ("request_thread_control", "request_thread_control"),
    ("app_roles", "app_roles"),
    ("account_linking", "account_linking"),
    ("policy_enforcement", "policy_enforcement"),
)

#: Every kind this module can give an event (for metrics labels).
EVENT_KINDS: tuple[str, ...] = (
    *(kind for _, kind in _DISCRIMINATORS),
    "echo",
    "standby",
    "unknown",
)

# Dedupe keys are stored in a String(255) column; longer natural keys are hashed.
_MAX_KEY = 200
#: Page and user ids are stored in String(64) columns.
MAX_ID_LENGTH = 64


class MalformedPayload(ValueError):
    """The body is not a Messenger webhook payload (answered with 400)."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One item of a webhook body.

    `psid` is the user of the conversation (None for page-level events such as policy
    enforcement); `key` identifies the event across redeliveries; `payload` is the item as
    received. Items of `standby` have kind "standby" (`inner_kind` says what they carry)."""

    page_id: str
    psid: str | None
    kind: EventKind
    key: str
    payload: dict[str, Any]

    @property
    def inner_kind(self) -> EventKind:
        """The kind of the item itself (differs from `kind` only for standby events)."""
        return classify(self.payload) if self.kind == "standby" else self.kind


def parse_body(raw: bytes) -> list[WebhookEvent]:
    """Parse a webhook body into its events, in the order they appear.

    Raises `MalformedPayload` when the body is not UTF-8 JSON, not an object with
    `"object": "page"` and a list `entry`, holds entries or items that are not objects, or
    holds what the inbox could not store (see `_check_storable`)."""
    try:
        # Strict UTF-8 first: json.loads(bytes) would also take UTF-16/32 and decode UTF-8
        # with "surrogatepass", letting through text that can be neither stored nor sent.
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_float)
    except RecursionError:
        raise MalformedPayload("the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedPayload(f"the body is not JSON: {e}") from None
    _check_storable(body, raw)
    return split_events(body)


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and PostgreSQL) do not.
    raise ValueError(f"{name} is not a JSON value")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: Python reads infinity, which JSON cannot store
        raise ValueError("a number is too large")
    return value


#: Deeper than any payload Meta sends (about eight levels), far below Python's recursion limit
#: (the payload is serialized again to be stored and hashed).
MAX_DEPTH = 64
#: A lone surrogate (`"\\ud800"` is valid JSON but not text) or NUL (PostgreSQL text cannot
#: hold it): neither database could store the event, nor the conversation its text joins.
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def _check_storable(body: Any, raw: bytes) -> None:
    """Refuse a parsed body nested deeper than MAX_DEPTH or with text no database can store
    (`_UNSTORABLE`). Both need many brackets or an escape (`\\ud…`, `\\u0000`) in the raw
    bytes, so most bodies skip the walk."""
    deep = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    if not deep and b"\\ud" not in raw and b"\\uD" not in raw and b"\\u0000" not in raw:
        return
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                raise MalformedPayload("the body has a NUL or a lone surrogate in a text")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise MalformedPayload(f"the body is nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
                stack.extend((inner, depth + 1) for inner in value.values())
            else:
                stack.extend((inner, depth + 1) for inner in value)


def split_events(body: Any) -> list[WebhookEvent]:
    """The events of an already parsed webhook body (see `parse_body`)."""
    if not isinstance(body, dict):
        raise MalformedPayload("the body is not a JSON object")
    if body.get("object") != "page":
        raise MalformedPayload(f'"object" is {body.get("object")!r}, expected "page"')
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload('"entry" is missing or not a list')
    events: list[WebhookEvent] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise MalformedPayload("an entry is not an object")
        entry_page = _id(entry.get("id"))
        for channel in ("messaging", "standby"):
            items = entry.get(channel)
            if items is None:
                continue
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise MalformedPayload(f'"{channel}" of an entry is not a list of objects')
            for item in items:
                events.append(_event(item, entry_page, standby=channel == "standby"))
    return events


def classify(item: dict[str, Any]) -> EventKind:
    """The kind of one messaging item (its discriminating key, reference §4)."""
    for key, kind in _DISCRIMINATORS:
        value = item.get(key)
        if isinstance(value, dict):
            if kind == "message" and value.get("is_echo"):
                return "echo"
            return kind
    return "unknown"


def _id(value: Any) -> str | None:
    """An id as text: Meta sends ids as strings, some examples as numbers."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def _party(item: dict[str, Any], side: str) -> str | None:
    party = item.get(side)
    return _id(party.get("id")) if isinstance(party, dict) else None


def _event(item: dict[str, Any], entry_page: str | None, *, standby: bool) -> WebhookEvent:
    kind = classify(item)
    if kind == "echo":
        # Sender and recipient are swapped on echoes: the page sent it to the user.
        page_id = entry_page or _party(item, "sender")
        psid = _party(item, "recipient")
    else:
        page_id = entry_page or _party(item, "recipient")
        psid = _party(item, "sender")
    for value in (page_id, psid):
        # Meta's ids are digits; a longer one would fail the insert at every redelivery.
        if value is not None and len(value) > MAX_ID_LENGTH:
            raise MalformedPayload(f"a page or user id is longer than {MAX_ID_LENGTH} characters")
    return WebhookEvent(
        page_id=page_id or "",
        psid=psid,
        kind="standby" if standby else kind,
        key=event_key(kind, item, page_id or "", standby=standby),
        payload=item,
    )


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def event_key(kind: EventKind, item: dict[str, Any], page_id: str, *, standby: bool = False) -> str:
    """The dedupe key of an item: the message id for messages and echoes, the postback id,
    (mid, action, emoji, timestamp) for reactions, else a hash of the whole item."""
    prefix = "s:" if standby else ""
    natural: str | None = None
    if kind in ("message", "echo"):
        natural = _id(item["message"].get("mid"))
        natural = f"mid:{natural}" if natural else None
    elif kind == "postback":
        natural = _id(item["postback"].get("mid"))
        natural = f"pb:{natural}" if natural else None
    elif kind == "reaction":
        reaction = item["reaction"]
        parts = ("mid", "action", "emoji", "reaction")
        natural = "re:" + _digest(*(reaction.get(p) for p in parts), item.get("timestamp"))
    if natural is None or len(natural) > _MAX_KEY:
        natural = "h:" + _digest(page_id, item)
    return prefix + natural


def timestamp(item: dict[str, Any]) -> int | None:
    """The item's `timestamp` in ms since the epoch (Meta sends numbers, some docs strings)."""
    value = item.get("timestamp")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def to_inbound(kind: EventKind, item: dict[str, Any]) -> Inbound | None:
    """The engine's view of a user event, or None when the event is not one a flow answers
    (echoes, receipts, reactions, hand-over events, a message with nothing in it, …).

    - message with `quick_reply` → "quick_reply" (payload; the tapped title as text);
    - message with a location attachment → "location";
    - message with text → "text" (attachments such as a shared link ride along);
    - message with attachments only (image, sticker, fallback, …) → "attachment";
    - postback → "postback" (title as text; `referral.ref` when it came from an m.me link);
    - referral → "referral"."""
    if kind == "message":
        message = item["message"]
        mid = _id(message.get("mid"))
        text = _text(message.get("text"))
        listed = message.get("attachments")
        attachments = tuple(
            a for a in (listed if isinstance(listed, list) else ()) if isinstance(a, dict)
        )
        quick_reply = message.get("quick_reply")
        if isinstance(quick_reply, dict) and _text(quick_reply.get("payload")) is not None:
            return Inbound("quick_reply", text=text, payload=quick_reply["payload"], mid=mid)
        if any(a.get("type") == "location" for a in attachments):
            return Inbound("location", text=text, attachments=attachments, mid=mid)
        if text:
            return Inbound("text", text=text, attachments=attachments, mid=mid)
        if attachments:
            return Inbound("attachment", attachments=attachments, mid=mid)
        return None
    if kind == "postback":
        postback = item["postback"]
        payload = _text(postback.get("payload"))
        if payload is None:
            return None  # standby postbacks carry no payload (reference §4.10)
        return Inbound(
            "postback",
            text=_text(postback.get("title")),
            payload=payload,
            ref=_ref(postback.get("referral")),
            mid=_id(postback.get("mid")),
        )
    if kind == "referral":
        return Inbound("referral", ref=_ref(item["referral"]))
    return None


def _ref(referral: Any) -> str | None:
    return _text(referral.get("ref")) if isinstance(referral, dict) else None
