"""GET/POST /webhook: Meta's verification handshake, and events in (verified, stored, acked).

A small ASGI app rather than a Starlette endpoint: the ack is the server's hottest path, and
Starlette's Request/Response layer costs about as much as the HMAC, the JSON parse and the
durable insert together (performance reference §2). The order of a POST is fixed:

    size limit (413) → X-Hub-Signature-256 over the raw bytes (403) → parse (400)
    → store every event in one transaction, de-duplicated (503 if the database fails)
    → 200 "EVENT_RECEIVED"

Processing happens after the answer: the ingress writer hands the new events to the
dispatcher once they are committed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from server.inbox import IngressWriter
from server.messenger import MalformedPayload, parse_body
from server.metrics import Metrics
from server.signature import SIGNATURE_HEADER, signature_ok, token_matches

log = logging.getLogger(__name__)

_SIGNATURE = SIGNATURE_HEADER.encode("ascii")
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


async def _answer(send: Send, status: int, text: str, headers: list[Any] | None = None) -> None:
    body = text.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_TEXT, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class WebhookEndpoint:
    """The ASGI app behind /webhook. `writer()` returns the ingress writer, or None while the
    server is not ready (then POSTs get 503 and Meta retries)."""

    def __init__(
        self,
        *,
        app_secret: str,
        verify_token: str,
        max_body_bytes: int,
        writer: Callable[[], IngressWriter | None],
        metrics: Metrics,
    ) -> None:
        self._secret = app_secret.encode("utf-8")
        self._verify_token = verify_token
        self.max_body_bytes = max_body_bytes
        self._writer = writer
        self.metrics = metrics
        # Label lookups cost a lock and a dict walk each: the ack path keeps its children.
        self._outcomes: dict[str, Any] = {}
        self._received: dict[str, Any] = {}
        self._processed: dict[tuple[str, str], Any] = {}
        self._accepted = self._outcome("accepted")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "POST":
            await self._post(scope, receive, send)
        elif method == "GET":
            await self._verify(scope, send)
        else:
            await _answer(send, 405, "Method Not Allowed", [(b"allow", b"GET, POST")])

    async def _verify(self, scope: Scope, send: Send) -> None:
        """Meta's subscription handshake: echo hub.challenge when the token matches."""
        query = QueryParams(scope["query_string"])
        mode = query.get("hub.mode")
        challenge = query.get("hub.challenge")
        if (
            mode == "subscribe"
            and challenge is not None
            and token_matches(query.get("hub.verify_token"), self._verify_token)
        ):
            # Echoed as sent: Meta's own test uses a non-numeric challenge (reference §1).
            await _answer(send, 200, challenge)
            return
        if mode is not None:  # a bare GET (a probe, a browser) is not worth a warning
            log.warning("webhook verification refused: wrong hub.verify_token or hub.mode")
        await _answer(send, 403, "Forbidden")

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        signature: str | None = None
        length: int | None = None
        for name, value in scope["headers"]:
            if name == _SIGNATURE:
                signature = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if length is not None and length > self.max_body_bytes:
            await self._refuse(send, 413, "too_large", "Payload Too Large")
            return
        try:
            raw = await self._body(receive)
        except _TooLarge:
            await self._refuse(send, 413, "too_large", "Payload Too Large")
            return
        if not signature_ok(raw, signature, self._secret):
            log.warning(
                "webhook refused: %s X-Hub-Signature-256 (is FLOW_APP_SECRET the app's secret?)",
                "wrong" if signature else "missing",
            )
            await self._refuse(send, 403, "bad_signature", "Forbidden")
            return
        try:
            events = parse_body(raw)
        except MalformedPayload as e:
            log.warning("webhook refused: %s", e)
            await self._refuse(send, 400, "malformed", f"Bad Request: {e}")
            return
        writer = self._writer()
        if writer is None:
            await self._refuse(send, 503, "unavailable", "Service Unavailable: starting")
            return
        if events:
            try:
                new = await writer.add(events)
            except Exception as e:
                # Not acknowledged, so Meta delivers it again: nothing is lost.
                log.error("webhook: cannot store %d events: %s", len(events), e)
                await self._refuse(send, 503, "unavailable", "Service Unavailable")
                return
            for event in new:
                self._count(event.kind, event.status)
            if len(new) < len(events):
                self.metrics.events_duplicate.inc(len(events) - len(new))
        self._accepted.inc()
        await _answer(send, 200, "EVENT_RECEIVED")
        self.metrics.ack_seconds.observe(time.perf_counter() - started)

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _TooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, send: Send, status: int, outcome: str, text: str) -> None:
        self._outcome(outcome).inc()
        await _answer(send, status, text)

    def _outcome(self, outcome: str) -> Any:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.metrics.webhook_requests.labels(outcome)
        return child

    def _count(self, kind: str, status: str) -> None:
        received = self._received.get(kind)
        if received is None:
            received = self._received[kind] = self.metrics.events_received.labels(kind)
        received.inc()
        if status != "pending":  # settled at ingress: nothing to process
            processed = self._processed.get((kind, status))
            if processed is None:
                processed = self.metrics.events_processed.labels(kind, status)
                self._processed[(kind, status)] = processed
            processed.inc()
