"""The local Messenger emulator's fake Graph API: answers like Meta, records calls, fails on demand.

Point `FLOW_GRAPH_API_URL` at it (`http://127.0.0.1:8081/v25.0`, or without the version) and the
server talks to it exactly as it would to graph.facebook.com. It answers the paths the Graph
client uses, with Meta's response shapes (messenger-platform reference §5, §8, §9, §10, §12):

    POST /me/messages, /{page-id}/messages     {"recipient_id", "message_id"}  (sender actions:
                                               {"recipient_id"} only)
    GET  /{psid}                               the user's profile (only the `fields` asked for)
    POST /me/pass_thread_control, take_…,      {"success": true}
         release_…, request_…
    GET  /me                                   {"name", "id"}: the token check
    GET|POST|DELETE /{page-id}/subscribed_apps, /me/messenger_profile
    POST /me/message_attachments               {"attachment_id"}

Everything else answers Meta's "unsupported get/post request" error (code 100). Control
endpoints under /_emulator/ (not part of the Graph API):

    GET    /_emulator/requests   recorded calls: ?endpoint=/me/messages &psid=… &since=ID
                                 &wait_for=N &timeout=S (waits until N calls match)
    DELETE /_emulator/requests   forget them
    POST   /_emulator/fail       add a failure rule (see `FailRule`); DELETE clears all rules
    GET    /_emulator/stats      counters by endpoint and status
    POST   /_emulator/config     {"latency": s, "app_secret": …, "valid_tokens": […] | null}
    POST   /_emulator/profiles   {"<psid>": {"first_name": …, …}}
    POST   /_emulator/reset      requests, rules, counters and profiles back to the start

Tokens are never printed. With an app secret configured, a wrong `appsecret_proof` is refused
the way Meta refuses it; with `valid_tokens` set, any other token gets error 190.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

#: What the emulator answers for a user whose profile was not set with /_emulator/profiles
#: (the same person `flowc chat` pretends to be).
DEFAULT_PROFILE: dict[str, Any] = {
    "first_name": "Alex",
    "last_name": "Doe",
    "profile_pic": "https://emulator.invalid/profile/alex.jpg",
    "locale": "en_US",
    "timezone": 0,
    "gender": "",
}
DEFAULT_PAGE_ID = "1000000000000001"
DEFAULT_PAGE_NAME = "Emulated page"
#: The app id the emulator says it is (in subscribed_apps).
EMULATOR_APP_ID = "1000000000000999"
#: At most this many requests are kept (oldest dropped); the counters keep counting.
MAX_RECORDS = 200_000

#: The page webhook fields the emulator lets an app subscribe to: the Messenger ones (reference
#: §4) and a few other common page fields; Meta refuses unknown names with error 100.
SUBSCRIPTION_FIELDS = frozenset(
    {
        "messages",
        "message_echoes",
        "message_deliveries",
        "message_reads",
        "message_edits",
        "message_reactions",
        "messaging_postbacks",
        "messaging_referrals",
        "messaging_optins",
        "messaging_handovers",
        "standby",
        "messaging_account_linking",
        "messaging_policy_enforcement",
        "messaging_feedback",
        "messaging_game_plays",
        "response_feedback",
        "send_cart",
        "messenger_template_status_update",
        "feed",
        "mention",
        "inbox_labels",
        "leadgen",
        "ratings",
    }
)

_VERSION = re.compile(r"^v\d+(?:\.\d+)?$")
#: What a PSID (or another Graph node id) looks like in a path.
_NODE = re.compile(r"^[\w.-]+$")
_HANDOVER = ("pass_thread_control", "take_thread_control", "release_thread_control")


@dataclass(frozen=True)
class MetaError:
    """The defaults of one Graph API error: what Meta answers for that code."""

    message: str
    type: str = "OAuthException"
    http_status: int = 400


#: Meta's wording and HTTP status per (code, subcode), then per code (reference §6).
META_ERRORS: dict[tuple[int, int | None], MetaError] = {
    (1, None): MetaError("An unknown error occurred.", http_status=500),
    (2, None): MetaError(
        "An unexpected error has occurred. Please retry your request later.", http_status=503
    ),
    (4, None): MetaError("(#4) Application request limit reached", http_status=403),
    (10, None): MetaError("(#10) Requires pages_messaging permission to manage the object"),
    (10, 2018278): MetaError("(#10) This message is sent outside of allowed window."),
    (17, None): MetaError("(#17) User request limit reached", http_status=403),
    (32, None): MetaError("(#32) Page request limit reached", http_status=403),
    (100, None): MetaError("(#100) Invalid parameter"),
    (100, 2018001): MetaError("(#100) No matching user found"),
    (190, None): MetaError("Invalid OAuth access token - Cannot parse access token"),
    (190, 463): MetaError("Error validating access token: Session has expired."),
    (200, 1545041): MetaError(
        "(#200) Message Not Sent: This person isn't receiving messages from you right now."
    ),
    (368, None): MetaError("(#368) The action attempted has been deemed abusive"),
    (551, None): MetaError("(#551) This person isn't available right now."),
    (613, None): MetaError(
        "(#613) Calls to this api have exceeded the rate limit.", http_status=429
    ),
    (1200, None): MetaError(
        "(#1200) Temporary send message failure. Please try again later.", http_status=500
    ),
    (80006, None): MetaError(
        "(#80006) There have been too many messages sent to this Messenger user. Please wait "
        "a while before sending more messages.",
        http_status=429,
    ),
}


def meta_error(code: int, subcode: int | None = None) -> MetaError:
    """Meta's wording for `code`/`subcode` (a generic one for codes the table lacks)."""
    return (
        META_ERRORS.get((code, subcode))
        or META_ERRORS.get((code, None))
        or MetaError(f"(#{code}) Error {code}")
    )


def error_body(code: int, subcode: int | None = None, message: str | None = None, **extra: Any):
    """A Meta-shaped error body: {"error": {"message", "type", "code", "error_subcode", …}}."""
    known = meta_error(code, subcode)
    error: dict[str, Any] = {
        "message": message or known.message,
        "type": extra.pop("type", None) or known.type,
        "code": code,
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(15)
    return {"error": error}


@dataclass
class FailRule:
    """Make matching Graph API calls fail, the way Meta fails them.

    `code`/`subcode` pick the error (None as code: a bare `http_status` with a non-JSON body,
    like a proxy failing); `http_status` and `message` default to Meta's for that code. A call
    matches when `path` (a regular expression, searched in the path without the version)
    matches and, when given, the recipient is `psid` and the access token is `token`.
    `times` matching calls fail (None: until the rules are cleared), each with probability
    `rate`; `delay` seconds are waited first (longer than the client's timeout = a timeout).
    """

    code: int | None = 2
    subcode: int | None = None
    http_status: int | None = None
    message: str | None = None
    type: str | None = None
    path: str = r"/messages$"
    psid: str | None = None
    token: str | None = None
    times: int | None = None
    rate: float = 1.0
    delay: float = 0.0
    #: How many calls this rule has failed so far.
    used: int = 0

    def __post_init__(self) -> None:
        re.compile(self.path)  # a bad expression is refused when the rule is added
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be 0 or more")

    def applies(self, endpoint: str, psid: str | None, token: str | None) -> bool:
        """Whether this call is one the rule fails (counts it when it is)."""
        if self.times is not None and self.used >= self.times:
            return False
        if not re.search(self.path, endpoint):
            return False
        if self.psid is not None and psid != self.psid:
            return False
        if self.token is not None and token != self.token:
            return False
        if self.rate < 1.0 and random.random() >= self.rate:
            return False
        self.used += 1
        return True

    def response(self) -> Response:
        """The error answer."""
        if self.code is None:
            return PlainTextResponse("Service Unavailable", status_code=self.http_status or 503)
        known = meta_error(self.code, self.subcode)
        body = error_body(self.code, self.subcode, self.message, type=self.type)
        return JSONResponse(body, status_code=self.http_status or known.http_status)


@dataclass
class Emulator:
    """The fake Graph API's memory: recorded requests, failure rules, profiles, settings."""

    page_id: str = DEFAULT_PAGE_ID
    page_name: str = DEFAULT_PAGE_NAME
    latency: float = 0.0
    #: When set, every call must carry a correct appsecret_proof (Meta's "Require App Secret").
    app_secret: str | None = None
    #: When set, only these tokens are accepted (others get error 190).
    valid_tokens: set[str] | None = None
    #: Called with every recorded request (the `flowc emulator` printer).
    on_record: Callable[[dict[str, Any]], None] | None = None
    record: bool = True
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    rules: list[FailRule] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    messenger_profile: dict[str, Any] = field(default_factory=dict)
    subscribed_fields: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    #: The id and arrival time (epoch seconds) of the latest request (0: none yet).
    last_id: int = 0
    last_time: float = 0.0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget requests, rules, counters, profiles and page settings."""
        self.requests.clear()
        self.rules.clear()
        self.profiles.clear()
        self.messenger_profile.clear()
        self.subscribed_fields.clear()
        self.counters.clear()

    def add(self, entry: dict[str, Any]) -> None:
        """Record one request and wake whoever waits for requests."""
        entry["id"] = self.last_id = next(self._ids)
        self.last_time = entry["time"]
        self.counters["total"] += 1
        endpoint = entry["endpoint"]
        if entry["psid"] is not None and endpoint.strip("/") == entry["psid"]:
            endpoint = "/{psid}"  # one counter for all profile lookups
        self.counters[f"{entry['method']} {endpoint} {entry['status']}"] += 1
        if self.record:
            self.requests.append(entry)
        if self.on_record is not None:
            self.on_record(entry)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def matching(
        self, *, endpoint: str | None, psid: str | None, since: int, method: str | None
    ) -> list[dict[str, Any]]:
        """Recorded requests after id `since` that match the filters, oldest first."""
        return [
            entry
            for entry in self.requests
            if entry["id"] > since
            and (endpoint is None or entry["endpoint"] == endpoint)
            and (psid is None or entry["psid"] == psid)
            and (method is None or entry["method"] == method)
        ]

    async def changed(self, timeout: float) -> None:
        """Return when the next request is recorded, or after `timeout` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, timeout)


# ----------------------------------------------------------------------------- Graph API


def _token(request: Request) -> str | None:
    token = request.query_params.get("access_token")
    if token:
        return token
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        return value.strip()
    return None


def _split_version(path: str) -> tuple[str | None, str]:
    """("v25.0", "/me/messages") from "/v25.0/me/messages"; (None, path) without a version."""
    parts = path.split("/", 2)
    if len(parts) > 1 and _VERSION.match(parts[1]):
        return parts[1], "/" + (parts[2] if len(parts) > 2 else "")
    return None, path


def _send_error(message: str) -> Response:
    return JSONResponse(error_body(100, message=message), status_code=400)


class GraphApi:
    """Answers the Graph API paths; one instance per emulator app."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._message_ids = itertools.count(1)
        # Message ids stay unique across emulator restarts (the server logs them as unique).
        self._run = secrets.token_hex(4)

    async def handle(self, request: Request) -> Response:
        """Answer one Graph API call and record it."""
        emulator = self.emulator
        version, endpoint = _split_version(request.url.path)
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        query = dict(request.query_params)
        psid = self._psid(endpoint, body, query)
        token = _token(request)
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": request.method,
            "path": request.url.path,
            "version": version,
            "endpoint": endpoint,
            "query": query,
            "json": body,
            "psid": psid,
            "auth": "query"
            if "access_token" in query
            else ("header" if token is not None else None),
        }
        if raw and body is None:
            entry["text"] = raw.decode("utf-8", "replace")[:10_000]
        if emulator.latency > 0:
            await asyncio.sleep(emulator.latency)
        response, failed = await self._answer(request.method, endpoint, body, query, psid, token)
        entry["status"] = response.status_code
        entry["failed"] = failed
        entry["response"] = (
            json.loads(response.body) if response.media_type == "application/json" else None
        )
        emulator.add(entry)
        return response

    @staticmethod
    def _psid(endpoint: str, body: Any, query: dict[str, str]) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("recipient"), dict):
            recipient = body["recipient"].get("id")
            return None if recipient is None else str(recipient)
        if "recipient" in query:
            return query["recipient"]
        segments = endpoint.strip("/").split("/")
        if len(segments) == 1 and segments[0] != "me" and _NODE.match(segments[0]):
            return segments[0]  # GET /{psid}: a profile
        return None

    async def _answer(
        self,
        method: str,
        endpoint: str,
        body: Any,
        query: dict[str, str],
        psid: str | None,
        token: str | None,
    ) -> tuple[Response, bool]:
        emulator = self.emulator
        for rule in emulator.rules:
            if rule.applies(endpoint, psid, token):
                if rule.delay > 0:
                    await asyncio.sleep(rule.delay)
                return rule.response(), True
        refusal = self._check_auth(query, token)
        if refusal is not None:
            return refusal, False
        segments = endpoint.strip("/").split("/")
        node, edge = segments[0], "/".join(segments[1:])
        if edge == "messages" and method == "POST":
            return self._send(body), False
        if node == "me" and edge in (*_HANDOVER, "request_thread_control") and method == "POST":
            if not (isinstance(body, dict) and isinstance(body.get("recipient"), dict)):
                return _send_error("(#100) The parameter recipient is required"), False
            return JSONResponse({"success": True}), False
        if edge == "message_attachments" and method == "POST":
            return JSONResponse({"attachment_id": str(10**15 + next(self._message_ids))}), False
        if edge == "messenger_profile":
            return self._messenger_profile(method, body, query), False
        if edge == "subscribed_apps":
            return self._subscribed_apps(method, body, query), False
        if edge == "" and method == "GET":
            if node == "me":
                return JSONResponse({"name": emulator.page_name, "id": emulator.page_id}), False
            if _NODE.match(node):
                return self._profile(node, query), False
        return (
            JSONResponse(
                error_body(
                    100,
                    message=f"Unsupported {method.lower()} request. Object with ID '{node}' "
                    "does not exist, cannot be loaded due to missing permissions, or does not "
                    "support this operation.",
                    type="GraphMethodException",
                ),
                status_code=400,
            ),
            False,
        )

    def _check_auth(self, query: dict[str, str], token: str | None) -> Response | None:
        emulator = self.emulator
        if token is None:
            return JSONResponse(
                error_body(
                    2500, message="An active access token must be used to query information."
                ),
                status_code=400,
            )
        if emulator.valid_tokens is not None and token not in emulator.valid_tokens:
            return JSONResponse(error_body(190), status_code=400)
        if emulator.app_secret is not None:
            expected = hmac.new(
                emulator.app_secret.encode(), token.encode(), hashlib.sha256
            ).hexdigest()
            proof = query.get("appsecret_proof")
            if proof is None:
                return JSONResponse(
                    error_body(
                        100,
                        message="API calls from the server require an appsecret_proof argument",
                        type="GraphMethodException",
                    ),
                    status_code=400,
                )
            if not hmac.compare_digest(proof, expected):
                return JSONResponse(
                    error_body(
                        100,
                        message="Invalid appsecret_proof provided in the API argument",
                        type="GraphMethodException",
                    ),
                    status_code=400,
                )
        return None

    def _send(self, body: Any) -> Response:
        """The Send API: validates what Meta validates first, then accepts."""
        if not isinstance(body, dict):
            return _send_error("(#100) The parameter recipient is required")
        recipient = body.get("recipient")
        if not isinstance(recipient, dict) or not recipient.get("id"):
            return _send_error("(#100) The parameter recipient is required")
        message, action = body.get("message"), body.get("sender_action")
        if message is None and action is None:
            return _send_error("(#100) Must send either message or sender_action")
        if message is not None and action is not None:
            return _send_error("(#100) Cannot send a message and a sender_action together")
        psid = str(recipient["id"])
        if action is not None:
            if action not in ("typing_on", "typing_off", "mark_seen", "react", "unreact"):
                return _send_error("(#100) Param sender_action must be one of {TYPING_ON, …}")
            return JSONResponse({"recipient_id": psid})
        if not isinstance(message, dict) or not (
            "text" in message or "attachment" in message or "sticker_id" in message
        ):
            return _send_error("(#100) Message cannot be empty, must provide valid attachment")
        text = message.get("text")
        if isinstance(text, str) and len(text) >= 2000:
            return _send_error("(#100) Length of param message[text] must be less than 2000")
        if len(message.get("quick_replies") or []) > 13:
            return _send_error("(#100) param message[quick_replies] must have at most 13 items")
        if body.get("messaging_type") == "MESSAGE_TAG" and not body.get("tag"):
            return _send_error("(#100) Param tag is required for MESSAGE_TAG")
        return JSONResponse(
            {"recipient_id": psid, "message_id": f"m_emu{self._run}{next(self._message_ids):010d}"}
        )

    def _profile(self, psid: str, query: dict[str, str]) -> Response:
        profile = {"id": psid, **self.emulator.profiles.get(psid, DEFAULT_PROFILE)}
        wanted = [f.strip() for f in query.get("fields", "first_name,last_name").split(",")]
        return JSONResponse({key: profile[key] for key in ["id", *wanted] if key in profile})

    def _messenger_profile(self, method: str, body: Any, query: dict[str, str]) -> Response:
        stored = self.emulator.messenger_profile
        if method == "GET":
            wanted = [f.strip() for f in query.get("fields", "").split(",") if f.strip()]
            if not wanted:
                return _send_error("(#100) The parameter fields is required")
            data = {key: stored[key] for key in wanted if key in stored}
            return JSONResponse({"data": [data] if data else []})
        if method == "POST" and isinstance(body, dict) and body:
            if "persistent_menu" in body and "get_started" not in {**stored, **body}:
                # Meta refuses a menu on a page without a Get Started button (reference §9).
                return _send_error(
                    "(#100) You must set a Get Started button if you also wish to use "
                    "persistent menu."
                )
            stored.update(body)  # only the properties in the body are overwritten
            return JSONResponse({"result": "success"})
        if method == "DELETE" and isinstance(body, dict) and isinstance(body.get("fields"), list):
            for name in body["fields"]:
                stored.pop(name, None)
            return JSONResponse({"result": "success"})
        return _send_error("(#100) Invalid parameter")

    def _subscribed_apps(self, method: str, body: Any, query: dict[str, str]) -> Response:
        emulator = self.emulator
        if method == "POST":
            # Meta reads the fields from the query (its curl example) or the body, as a
            # comma-separated text or a list.
            given: Any = query.get("subscribed_fields")
            if given is None and isinstance(body, dict):
                given = body.get("subscribed_fields")
            if isinstance(given, str):
                given = given.split(",")
            fields = [str(f).strip() for f in given or () if str(f).strip()]
            if not fields:
                return _send_error("(#100) The parameter subscribed_fields is required")
            for index, name in enumerate(fields):
                if name not in SUBSCRIPTION_FIELDS:
                    return _send_error(
                        f"(#100) Param subscribed_fields[{index}] must be one of "
                        f'{{{", ".join(sorted(SUBSCRIPTION_FIELDS))}}} - got "{name}"'
                    )
            emulator.subscribed_fields[:] = list(dict.fromkeys(fields))
            return JSONResponse({"success": True})
        if method == "DELETE":
            emulator.subscribed_fields.clear()
            return JSONResponse({"success": True})
        data = (
            [
                {
                    "category": "Business",
                    "name": "Flowlang",
                    "id": EMULATOR_APP_ID,
                    "subscribed_fields": list(emulator.subscribed_fields),
                }
            ]
            if emulator.subscribed_fields
            else []
        )
        return JSONResponse({"data": data})


# ----------------------------------------------------------------------------- control


class Control:
    """The /_emulator/ endpoints."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def requests(self, request: Request) -> Response:
        emulator = self.emulator
        if request.method == "DELETE":
            emulator.requests.clear()
            return JSONResponse({"cleared": True})
        params = request.query_params
        try:
            since = int(params.get("since", "0"))
            wait_for = int(params.get("wait_for", "0"))
            timeout = min(float(params.get("timeout", "10")), 120.0)
        except ValueError:
            return JSONResponse({"error": "since, wait_for and timeout are numbers"}, 400)
        filters = {
            "endpoint": params.get("endpoint"),
            "psid": params.get("psid"),
            "since": since,
            "method": params.get("method"),
        }
        found = emulator.matching(**filters)
        deadline = time.monotonic() + timeout
        while len(found) < wait_for and (left := deadline - time.monotonic()) > 0:
            await emulator.changed(left)
            found = emulator.matching(**filters)
        return JSONResponse({"count": len(found), "requests": found})

    async def fail(self, request: Request) -> Response:
        emulator = self.emulator
        if request.method == "DELETE":
            emulator.rules.clear()
            return JSONResponse({"rules": []})
        if request.method == "GET":
            return JSONResponse({"rules": [asdict(rule) for rule in emulator.rules]})
        try:
            spec = json.loads(await request.body() or b"{}")
            if not isinstance(spec, dict):
                raise ValueError("a JSON object is expected")
            rule = FailRule(**{k: v for k, v in spec.items() if k != "used"})
        except (ValueError, TypeError, re.error) as exc:
            return JSONResponse({"error": f"bad failure rule: {exc}"}, status_code=400)
        emulator.rules.append(rule)
        return JSONResponse({"rules": [asdict(rule) for rule in emulator.rules]})

    async def stats(self, request: Request) -> Response:
        emulator = self.emulator
        return JSONResponse(
            {"last_id": emulator.last_id, "last_time": emulator.last_time, **emulator.counters}
        )

    async def config(self, request: Request) -> Response:
        emulator = self.emulator
        if request.method == "POST":
            try:
                spec = json.loads(await request.body() or b"{}")
                if "latency" in spec:
                    emulator.latency = max(0.0, float(spec["latency"]))
                if "app_secret" in spec:
                    emulator.app_secret = spec["app_secret"] or None
                if "valid_tokens" in spec:
                    tokens = spec["valid_tokens"]
                    emulator.valid_tokens = None if tokens is None else {str(t) for t in tokens}
                if "record" in spec:
                    emulator.record = bool(spec["record"])
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"bad config: {exc}"}, status_code=400)
        return JSONResponse(
            {
                "page_id": emulator.page_id,
                "latency": emulator.latency,
                "app_secret_set": emulator.app_secret is not None,
                "valid_tokens_set": emulator.valid_tokens is not None,
                "record": emulator.record,
            }
        )

    async def profiles(self, request: Request) -> Response:
        try:
            spec = json.loads(await request.body() or b"{}")
            for psid, profile in spec.items():
                self.emulator.profiles[str(psid)] = dict(profile)
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"bad profiles: {exc}"}, status_code=400)
        return JSONResponse({"profiles": sorted(self.emulator.profiles)})

    async def reset(self, request: Request) -> Response:
        self.emulator.reset()
        return JSONResponse({"reset": True})


def create_emulator(emulator: Emulator | None = None) -> Starlette:
    """The fake Graph API as an ASGI app; its state is `app.state.emulator`."""
    emulator = emulator if emulator is not None else Emulator()
    control = Control(emulator)
    graph = GraphApi(emulator)
    routes = [
        Route("/_emulator/requests", control.requests, methods=["GET", "DELETE"]),
        Route("/_emulator/fail", control.fail, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/stats", control.stats, methods=["GET"]),
        Route("/_emulator/config", control.config, methods=["GET", "POST"]),
        Route("/_emulator/profiles", control.profiles, methods=["POST"]),
        Route("/_emulator/reset", control.reset, methods=["POST"]),
        Route("/{path:path}", graph.handle, methods=["GET", "POST", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.emulator = emulator
    return app


# ----------------------------------------------------------------------------- printing


def _buttons(buttons: list[dict[str, Any]]) -> list[str]:
    lines = []
    for button in buttons:
        kind, title = button.get("type"), button.get("title", "")
        target = {
            "postback": f"sends {button.get('payload')}",
            "web_url": f"opens {button.get('url')}",
            "phone_number": f"calls {button.get('payload')}",
        }.get(kind, kind)
        lines.append(f"[{title}] {target}")
    return lines


def describe_message(message: dict[str, Any]) -> list[str]:
    """A Send API `message` object as lines a person reads (text first, then what to tap)."""
    lines: list[str] = []
    if "text" in message:
        lines.append(str(message["text"]))
    attachment = message.get("attachment") or {}
    payload = attachment.get("payload") or {}
    kind = attachment.get("type")
    if kind == "template":
        template = payload.get("template_type")
        if template == "button":
            lines.append(str(payload.get("text", "")))
            lines.extend("  " + line for line in _buttons(payload.get("buttons") or []))
        elif template == "generic":
            for element in payload.get("elements") or []:
                card = f"▭ {element.get('title', '')}"
                if element.get("subtitle"):
                    card += f" — {element['subtitle']}"
                lines.append(card)
                lines.extend("    " + line for line in _buttons(element.get("buttons") or []))
        else:
            lines.append(f"<{template} template>")
    elif kind is not None:
        lines.append(f"<{kind}> {payload.get('url') or payload.get('attachment_id') or ''}")
    for reply in message.get("quick_replies") or []:
        content = reply.get("content_type", "text")
        if content == "text":
            lines.append(f"  (quick reply) {reply.get('title')} → {reply.get('payload')}")
        else:
            lines.append(f"  (quick reply) <{content}>")
    return lines


def describe(entry: dict[str, Any]) -> str | None:
    """One recorded request as readable text for `flowc emulator` (None: nothing to show)."""
    endpoint, body = entry["endpoint"], entry.get("json") or {}
    who = entry.get("psid") or "?"
    if entry.get("status", 200) >= 400:
        error = (entry.get("response") or {}).get("error") or {}
        code = error.get("code", entry["status"])
        why = "injected " if entry.get("failed") else ""
        return (
            f"✗ {entry['method']} {endpoint} → {why}error {code}: {error.get('message', '')}"
        ).rstrip()
    if endpoint.endswith("/messages") and isinstance(body, dict):
        if "sender_action" in body:
            action = {"typing_on": "typing…", "typing_off": "stops typing", "mark_seen": "seen"}
            return f"bot → {who}: ({action.get(body['sender_action'], body['sender_action'])})"
        lines = describe_message(body.get("message") or {})
        head = f"bot → {who}: "
        tag = f"  [{body['tag']}]" if body.get("tag") else ""
        first, rest = (lines[0] if lines else ""), lines[1:]
        return "\n".join([head + first + tag, *(" " * len(head) + line for line in rest)])
    if endpoint.endswith(_HANDOVER) and isinstance(body, dict):
        note = f' "{body["metadata"]}"' if body.get("metadata") else ""
        if endpoint.endswith("pass_thread_control"):
            return f"bot ⇢ {who}: hands the conversation to app {body.get('target_app_id')}{note}"
        if endpoint.endswith("take_thread_control"):
            return f"bot ⇠ {who}: takes the conversation back{note}"
        return f"bot ⇢ {who}: releases the conversation{note}"
    if entry["method"] == "GET" and entry.get("psid") and endpoint.strip("/") == who:
        return f"  (profile of {who} looked up)"
    if endpoint.endswith("messenger_profile") and entry["method"] == "POST":
        return f"  (page settings updated: {', '.join(sorted(body))})"
    return None
