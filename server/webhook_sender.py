"""Webhook events as Messenger delivers them: user events, the envelope, and the signature.

Builds the bodies of a user's text, quick reply, postback, Get Started tap and referral
(messenger-platform reference §4), wraps them in Meta's `{"object": "page", "entry": […]}`
envelope, encodes them the way Meta does (non-ASCII escaped as \\uXXXX, "/" as "\\/") and signs
the exact bytes with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 with the app secret>`.
`flowc say`, the end-to-end tests and the benchmark all send their events through here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import time
from typing import Any

import httpx

#: The payload of the Get Started button in flows/page.flow (`get started sends "GET_STARTED"`).
GET_STARTED_PAYLOAD = "GET_STARTED"

_mids = itertools.count(1)
_PROCESS_TAG = os.urandom(4).hex()


def now_ms() -> int:
    """Milliseconds since the epoch, as Meta stamps events."""
    return int(time.time() * 1000)


def new_mid() -> str:
    """A message id unique to this process run (Meta's look: "m_…")."""
    return f"m_emu{_PROCESS_TAG}{next(_mids):010d}"


def _item(psid: str, page_id: str, timestamp: int | None, **event: Any) -> dict[str, Any]:
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": now_ms() if timestamp is None else timestamp,
        **event,
    }


def text_event(
    text: str, *, psid: str, page_id: str, mid: str | None = None, timestamp: int | None = None
) -> dict[str, Any]:
    """A typed message (`messages`)."""
    return _item(psid, page_id, timestamp, message={"mid": mid or new_mid(), "text": text})


def quick_reply_event(
    payload: str,
    *,
    psid: str,
    page_id: str,
    title: str | None = None,
    mid: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """A tapped quick reply: a `messages` event whose text is the title (reference §4.1)."""
    message = {
        "mid": mid or new_mid(),
        "text": title if title is not None else payload,
        "quick_reply": {"payload": payload},
    }
    return _item(psid, page_id, timestamp, message=message)


def postback_event(
    payload: str,
    *,
    psid: str,
    page_id: str,
    title: str | None = None,
    ref: str | None = None,
    mid: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """A tapped button, menu item or ice breaker (`messaging_postbacks`), with a referral
    when the conversation was opened by an m.me link (`ref`)."""
    postback: dict[str, Any] = {"mid": mid or new_mid(), "title": title or payload}
    postback["payload"] = payload
    if ref is not None:
        postback["referral"] = {"ref": ref, "source": "SHORTLINK", "type": "OPEN_THREAD"}
    return _item(psid, page_id, timestamp, postback=postback)


def get_started_event(
    *,
    psid: str,
    page_id: str,
    payload: str = GET_STARTED_PAYLOAD,
    ref: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """The Get Started button: a postback with the page's Get Started payload."""
    return postback_event(
        payload, psid=psid, page_id=page_id, title="Get Started", ref=ref, timestamp=timestamp
    )


def referral_event(
    ref: str,
    *,
    psid: str,
    page_id: str,
    source: str = "SHORTLINK",
    timestamp: int | None = None,
) -> dict[str, Any]:
    """Someone with an existing conversation opened m.me/page?ref=… (`messaging_referrals`)."""
    return _item(
        psid, page_id, timestamp, referral={"ref": ref, "source": source, "type": "OPEN_THREAD"}
    )


def echo_event(
    text: str,
    *,
    psid: str,
    page_id: str,
    app_id: str = "1000000000000999",
    mid: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """Meta's copy of a message the page sent (`message_echoes`): sender and recipient swapped,
    `is_echo` set, `app_id` the app that sent it (263902037430900: a person in the Page Inbox)."""
    message = {"is_echo": True, "app_id": app_id, "mid": mid or new_mid(), "text": text}
    return {
        "sender": {"id": page_id},
        "recipient": {"id": psid},
        "timestamp": now_ms() if timestamp is None else timestamp,
        "message": message,
    }


def envelope(
    *items: dict[str, Any], page_id: str, standby: bool = False, time_ms: int | None = None
) -> dict[str, Any]:
    """Meta's POST body: one entry for `page_id` holding `items` (in `standby` if asked)."""
    entry = {"id": page_id, "time": now_ms() if time_ms is None else time_ms}
    entry["standby" if standby else "messaging"] = list(items)
    return {"object": "page", "entry": [entry]}


def encode(body: Any, *, escape: bool = True) -> bytes:
    """The bytes of a webhook body. `escape=True` writes them as Meta does (\\uXXXX, "\\/");
    `escape=False` keeps UTF-8 as is, which a correct server verifies just the same."""
    text = json.dumps(body, ensure_ascii=escape, separators=(",", ":"))
    return (text.replace("/", "\\/") if escape else text).encode("utf-8")


def signature(raw: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` value for `raw`: "sha256=" + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


def signed_headers(raw: bytes, app_secret: str) -> dict[str, str]:
    """The headers Meta sends with a webhook body."""
    return {
        "content-type": "application/json",
        "x-hub-signature-256": signature(raw, app_secret),
        "user-agent": "facebookexternalua",
    }


class WebhookSender:
    """Posts signed webhook events for one page to a server's /webhook (async)."""

    def __init__(
        self,
        url: str,
        app_secret: str,
        *,
        page_id: str,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.app_secret = app_secret
        self.page_id = page_id
        self._own_client = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._own_client:
            await self.client.aclose()

    async def post_raw(self, raw: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST exactly these bytes and headers (for malformed or badly signed bodies)."""
        return await self.client.post(self.url, content=raw, headers=headers)

    async def post(self, body: dict[str, Any], *, escape: bool = True) -> httpx.Response:
        """POST a whole webhook body, signed."""
        raw = encode(body, escape=escape)
        return await self.post_raw(raw, signed_headers(raw, self.app_secret))

    async def send(self, *items: dict[str, Any], standby: bool = False) -> httpx.Response:
        """POST messaging items for this page in one envelope, signed."""
        return await self.post(envelope(*items, page_id=self.page_id, standby=standby))

    async def say(self, psid: str, text: str) -> httpx.Response:
        """The user `psid` types `text`."""
        return await self.send(text_event(text, psid=psid, page_id=self.page_id))


def post_event(
    url: str, app_secret: str, body: dict[str, Any], *, timeout: float = 10.0
) -> httpx.Response:
    """POST one signed webhook body and return the response (blocking; for the CLI)."""
    raw = encode(body)
    return httpx.post(url, content=raw, headers=signed_headers(raw, app_secret), timeout=timeout)
