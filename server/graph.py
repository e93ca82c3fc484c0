"""The Graph API client: Send API, sender actions, User Profile, handover, and error classes.

One pooled `httpx.AsyncClient` per process (`create_http_client`), injected so tests and the
emulator can swap the transport. Every call carries `appsecret_proof` (HMAC-SHA256 of the page
token keyed with the app secret, reference §13). The page token travels in the
`Authorization: Bearer` header, never in the URL, because URLs end up in logs (httpx logs every
request URL at INFO level) and in exception messages.

Errors are classified by Meta's code/subcode (reference §6) into what the sender does next:

    transient      retry with backoff       codes 1, 2, 1200; HTTP 5xx, timeouts, connection errors
    rate_limit     retry with backoff and   4, 17, 32, 613, 80006; HTTP 429
                   slow the whole page down
    bad_token      stop the page            190, 102
    unreachable    fail the message         551, 200/1545041, 10/2018108, 100/2018001
    window_closed  fail the message         10/2018278, 10/2018065
    permanent      fail the message         everything else (100 invalid parameter, 10, 368, …)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
import urllib.request
from typing import Any, Literal

import httpx

from server import redact

log = logging.getLogger(__name__)


# httpx logs request URLs with the appsecret_proof in their query.
redact.install()

#: Meta's Graph API, pinned to the version the reference was checked against.
DEFAULT_GRAPH_API_URL = "https://graph.facebook.com/v25.0"
#: The User Profile API fields behind `user.*` in templates.
PROFILE_FIELDS = ("first_name", "last_name", "profile_pic", "locale", "timezone", "gender")
#: Hand a conversation to people answering in the Page Inbox (reference §10).
PAGE_INBOX_APP_ID = 263902037430900

#: Connect fast, but let Meta take its time: a send with a media URL makes Meta download the
#: file first (up to 10 s for images, 75 s for video, reference §11). A timeout is retried, and
#: the retry may duplicate a message Meta did accept, so a short read timeout costs more than
#: it saves.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
#: Connections kept open to the Graph API (the sender keeps at most this many calls in flight).
DEFAULT_MAX_CONNECTIONS = 64

ErrorKind = Literal[
    "transient", "rate_limit", "bad_token", "unreachable", "window_closed", "permanent"
]

_TRANSIENT_CODES = frozenset({1, 2, 1200})
_RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80006})
_BAD_TOKEN_CODES = frozenset({190, 102})
_UNREACHABLE = frozenset({(200, 1545041), (10, 2018108), (100, 2018001)})
_WINDOW_CLOSED = frozenset({(10, 2018278), (10, 2018065)})
# Exceptions to the rules above (reference §6): 1/1357046 may have been sent already, so a
# blind retry would duplicate it; 4/2018354 and 9/2018352 are per-user frequency caps that a
# retry soon after cannot pass.
_PERMANENT = frozenset({(1, 1357046), (4, 2018354), (9, 2018352)})


def classify(code: int | None, subcode: int | None, http_status: int | None) -> ErrorKind:
    """What kind of failure a Graph API error is, from its code, subcode and HTTP status.

    Without a code (no JSON error body), HTTP 5xx and no response at all are transient, 429 is
    a rate limit and any other status is permanent."""
    if code is None:
        if http_status == 429:
            return "rate_limit"
        if http_status is None or http_status >= 500 or http_status == 408:
            return "transient"
        return "permanent"
    if code in _BAD_TOKEN_CODES:
        return "bad_token"
    if (code, subcode) in _PERMANENT:
        return "permanent"
    if code == 551 or (code, subcode) in _UNREACHABLE:
        return "unreachable"
    if (code, subcode) in _WINDOW_CLOSED:
        return "window_closed"
    if code in _RATE_LIMIT_CODES:
        return "rate_limit"
    if code in _TRANSIENT_CODES:
        return "transient"
    return "permanent"


class GraphError(Exception):
    """A Graph API call failed. `kind` says what to do about it (see the module docstring);
    `retry_after` is Meta's hint in seconds (Retry-After, or the Business Use Case usage
    header's `estimated_time_to_regain_access`) when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        http_status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.retry_after = retry_after

    @property
    def code_text(self) -> str:
        """ "190/463", "613", or "-" when Meta gave no code (timeouts, bare HTTP errors)."""
        if self.code is None:
            return "-"
        return f"{self.code}/{self.subcode}" if self.subcode is not None else str(self.code)

    def __str__(self) -> str:
        status = f", HTTP {self.http_status}" if self.http_status is not None else ""
        return f"Graph API error {self.code_text} ({self.kind}{status}): {self.message}"


def create_http_client(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> httpx.AsyncClient:
    """The process's pooled HTTP client for the Graph API. Create it inside the running event
    loop and close it with `await client.aclose()` at shutdown.

    `transport` is for tests and the emulator. Otherwise requests go through aiohttp's
    connection pool (`httpx_aiohttp.AiohttpTransport`). httpx's own pool (httpcore) is the
    bottleneck under concurrency: on the 2-CPU development box it managed 30–460 calls/s at
    16–64 concurrent calls and spent ~5 ms of CPU per call with 64 connections, against
    ~0.4 ms and several times the throughput through aiohttp (bench/sender.py; performance
    reference §6). httpx's own transport is used when aiohttp is not installed, and when a
    proxy is configured (HTTPS_PROXY etc.), which only it honours."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if transport is None:
        transport = _fast_transport(limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        limits=limits,
        headers={"User-Agent": "flowlang"},
    )


def _fast_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    if urllib.request.getproxies():
        # aiohttp would look the proxy settings up again on every request (in a thread);
        # httpx's own transport honours HTTPS_PROXY / NO_PROXY once, at the cost of speed.
        log.info("a proxy is configured: the Graph API client uses httpx's own transport")
        return None
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        log.warning(
            "aiohttp/httpx-aiohttp are not installed: the Graph API client falls back to "
            "httpx's own, much slower connection pool (pip install httpx-aiohttp)"
        )
        return None
    return AiohttpTransport(limits=limits)


def message_body(psid: str, message: dict[str, Any], *, tag: str | None = None) -> dict[str, Any]:
    """The Send API request body for a message: a reply (`RESPONSE`), or with a message tag
    (`MESSAGE_TAG` + `tag`, e.g. HUMAN_AGENT)."""
    body: dict[str, Any] = {"recipient": {"id": psid}}
    if tag:
        body["messaging_type"] = "MESSAGE_TAG"
        body["tag"] = tag
    else:
        body["messaging_type"] = "RESPONSE"
    body["message"] = message
    return body


def sender_action_body(psid: str, action: str) -> dict[str, Any]:
    """The Send API request body for a sender action (typing_on, typing_off, mark_seen)."""
    return {"recipient": {"id": psid}, "sender_action": action}


class GraphClient:
    """Calls the Graph API for any page; the page token is an argument of every call.

    `base_url` includes the version (`https://graph.facebook.com/v25.0`). Every method returns
    the decoded JSON answer (a dict; `{}` for a 2xx answer without a JSON object) or raises
    `GraphError`."""

    def __init__(self, http: httpx.AsyncClient, *, base_url: str, app_secret: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self._secret = app_secret.encode("utf-8")
        # token -> proof, and (path, token) -> URL: a handful of pages, so these stay small.
        self._proofs: dict[str, str] = {}
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._timeout = http.timeout.as_dict()
        self._user_agent = http.headers.get("User-Agent", "flowlang")

    def __repr__(self) -> str:
        return f"GraphClient(base_url={self.base_url!r})"

    def appsecret_proof(self, page_token: str) -> str:
        """HMAC-SHA256 of the token keyed with the app secret, as lowercase hex."""
        proof = self._proofs.get(page_token)
        if proof is None:
            proof = hmac.new(self._secret, page_token.encode("utf-8"), hashlib.sha256).hexdigest()
            if len(self._proofs) > 1000:  # tokens replaced over a long uptime
                self._proofs.clear()
            self._proofs[page_token] = proof
        return proof

    async def request(
        self,
        method: str,
        path: str,
        page_token: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Call `path` (e.g. "/me/messages") with the page token and appsecret_proof."""
        url = self._url(path, page_token, params)
        started = time.perf_counter()
        try:
            response = await self._call(method, url, page_token, json)
        except (httpx.TimeoutException, TimeoutError) as e:
            # (The aiohttp transport reports a refused connection as a connect timeout too:
            # its own text says which.)
            detail = " ".join(str(e).split())
            raise GraphError(
                f"no answer in time ({type(e).__name__}{': ' + detail if detail else ''})",
                kind="transient",
            ) from None
        except (httpx.TransportError, OSError) as e:
            # OSError: a socket error the transport did not translate into an httpx error.
            raise GraphError(
                f"cannot reach the Graph API ({type(e).__name__}: {e})", kind="transient"
            ) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %s in %.1f ms",
                method,
                path,
                response.status_code,
                (time.perf_counter() - started) * 1000,
            )
        return _answer(response)

    async def _call(
        self, method: str, url: httpx.URL, page_token: str, body: dict[str, Any] | None
    ) -> httpx.Response:
        """One request, straight to the client's transport, its body read.

        `AsyncClient.send` would add a cookie jar, auth and redirect machinery and a merge of
        default headers, none of which the Graph API uses, and they cost about as much CPU
        per call as the transport itself (bench/sender.py). What the client would have
        applied is applied here: its transport (or mount) for the URL, its timeouts, its
        User-Agent; redirects are not followed (httpx's default too)."""
        headers = [
            ("User-Agent", self._user_agent),
            ("Authorization", f"Bearer {page_token}"),
        ]
        content = None
        if body is not None:
            # As httpx encodes `json=`: compact, UTF-8, no NaN.
            content = json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
            headers.append(("Content-Type", "application/json"))
        request = httpx.Request(
            method,
            url,
            headers=headers,
            content=content,
            extensions={"timeout": self._timeout},
        )
        transport = self.http._transport_for_url(url)
        response = await transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _url(self, path: str, page_token: str, params: dict[str, Any] | None) -> httpx.URL:
        """The full URL with the query. Parsing a URL costs more than a fifth of httpx's CPU
        time per call, so the parameterless ones (sends, handovers) are parsed once per page."""
        if params:
            query = {**params, "appsecret_proof": self.appsecret_proof(page_token)}
            return httpx.URL(self.base_url + _slash(path), params=query)
        key = (path, page_token)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 1000:  # tokens replaced over a long uptime
                self._urls.clear()
            query = {"appsecret_proof": self.appsecret_proof(page_token)}
            url = self._urls[key] = httpx.URL(self.base_url + _slash(path), params=query)
        return url

    async def send(self, page_token: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /me/messages (Send API): a message or a sender action. Returns Meta's answer,
        e.g. {"recipient_id": …, "message_id": …}."""
        return await self.request("POST", "/me/messages", page_token, json=body)

    async def get_profile(
        self, page_token: str, psid: str, fields: tuple[str, ...] = PROFILE_FIELDS
    ) -> dict[str, Any]:
        """The user's profile (User Profile API); `{}` when Meta may not show it."""
        return await self.request(
            "GET", f"/{psid}", page_token, params={"fields": ",".join(fields)}
        )

    async def pass_thread_control(
        self,
        page_token: str,
        psid: str,
        target_app_id: int | str,
        metadata: str | None = None,
    ) -> dict[str, Any]:
        """Hand the conversation to another app (PAGE_INBOX_APP_ID: people in the Page Inbox)."""
        body: dict[str, Any] = {"recipient": {"id": psid}, "target_app_id": target_app_id}
        if metadata:
            body["metadata"] = metadata
        return await self.request("POST", "/me/pass_thread_control", page_token, json=body)

    async def take_thread_control(
        self, page_token: str, psid: str, metadata: str | None = None
    ) -> dict[str, Any]:
        """Take the conversation back for this app."""
        body: dict[str, Any] = {"recipient": {"id": psid}}
        if metadata:
            body["metadata"] = metadata
        return await self.request("POST", "/me/take_thread_control", page_token, json=body)


def _slash(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        data = json.loads(response.content) if response.content else None
    except ValueError:
        data = None
    if response.is_success and not (isinstance(data, dict) and "error" in data):
        # 2xx: accepted. An unreadable body must not turn into a retry (a duplicate message).
        return data if isinstance(data, dict) else {}
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        kind = classify(None, None, response.status_code)
        raise GraphError(
            f"HTTP {response.status_code} without a Graph API error",
            kind=kind,
            http_status=response.status_code,
            retry_after=_retry_after(response) if kind == "rate_limit" else None,
        )
    code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
    kind = classify(code, subcode, response.status_code)
    raise GraphError(
        str(error.get("message") or "no message"),
        kind=kind,
        http_status=response.status_code,
        code=code,
        subcode=subcode,
        fbtrace_id=error.get("fbtrace_id"),
        retry_after=_retry_after(response) if kind == "rate_limit" else None,
    )


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    """Meta's hint for when to try again, in seconds (None when it gave none)."""
    found: list[float] = []
    header = response.headers.get("retry-after")
    if header:
        # An HTTP date instead of seconds is rare from Meta, and the backoff covers it.
        with contextlib.suppress(ValueError):
            found.append(max(0.0, float(header)))
    usage = response.headers.get("x-business-use-case-usage")
    if usage:
        try:
            for entries in json.loads(usage).values():
                for entry in entries:
                    minutes = float(entry.get("estimated_time_to_regain_access") or 0)
                    if minutes > 0:
                        found.append(minutes * 60)
        except (ValueError, TypeError, AttributeError):
            pass  # a malformed usage header only loses the hint
    return max(found) if found else None
