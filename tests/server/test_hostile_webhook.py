"""Hostile input at POST /webhook: random bytes, random JSON, near-valid Messenger payloads
(wrong types, missing and duplicated keys, huge numbers, deep nesting, broken Unicode, oversized
bodies) under missing, garbage, duplicated and correct signatures.

The server documents its answers (server/webhook.py): 413 too large, 403 bad signature, 400 not
a Messenger payload, 503 not ready or the database failing, 200 stored. With a healthy database
every request must get one of 200/400/403/413, never a 500, never a traceback (in the answer or
in any log record), and a refused request must change nothing in the database.

The fuzz loop drives one app in process (httpx's ASGITransport, lifespan running, a real SQLite
file) for speed; a few hand-picked requests go over real HTTP to uvicorn on loopback, where the
HTTP parser sees bytes no client library would send."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_kit import (
    APP_SECRET,
    BOT_FLOW,
    Bot,
    FakeGraph,
    RunningApp,
    envelope,
    item,
    make_settings,
    new_mid,
    serving,
    text_item,
)
from sqlalchemy import Engine, func, select

from runtime import db, tables
from server.app import create_app
from server.signature import sign

#: A small limit keeps oversized bodies cheap to build.
MAX_BODY = 16 * 1024
#: Answers the server documents for a healthy database.
DOCUMENTED = {200, 400, 403, 413}
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    """One running app for the whole module (its database is shared: tests compare counts)."""
    folder = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{folder / 'server.db'}"
    db.upgrade(url)
    (folder / "bot.flow").write_text(BOT_FLOW, encoding="utf-8")
    graph = FakeGraph(profiles={"u1": {"first_name": "Ada", "last_name": "Lovelace"}})
    app = create_app(
        make_settings(url, max_body_bytes=MAX_BODY),
        flows=[folder / "bot.flow"],
        transport=graph.transport(),
        freeze_gc=False,
        dispatcher_options={"max_attempts": 2, "backoff": 0.001, "max_backoff": 0.01},
    )
    running = Bot(RunningApp(app), url, graph)
    yield running
    running.stop()


#: What a request can change: every table but the sender's leases and the pages' health,
#: which the sender keeps up to date in the background, requests or not.
STATE_TABLES = [
    t for t in tables.metadata.sorted_tables if t.name not in ("outbox_leases", "pages")
]


def counts(engine: Engine) -> dict[str, int]:
    """Rows in every table a request can change (one query)."""
    query = select(
        *(
            select(func.count()).select_from(table).scalar_subquery().label(table.name)
            for table in STATE_TABLES
        )
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).one()._mapping)


def failed_events(bot: Bot) -> dict[int, Any]:
    """Accepted events whose processing crashed, by id."""
    return {e.id: (e.kind, e.error, e.payload) for e in bot.events(status="failed")}


class Checker:
    """Posts one request and checks the invariants around it."""

    def __init__(self, bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
        self.bot = bot
        self.caplog = caplog
        caplog.set_level(logging.DEBUG)
        # Only requests change the database (processing is drained after each 200), so the
        # counts after one request are the counts before the next.
        self.before = counts(bot.engine())

    def post(self, raw: bytes, headers: list[tuple[str, str]]) -> int:
        before = self.before
        failed = failed_events(self.bot)
        seen = len(self.caplog.records)
        # A list of pairs, as bytes: duplicated and non-ASCII headers reach the app as sent.
        encoded = [(k.encode(), v.encode("utf-8")) for k, v in headers]
        response = self.bot.running.request("POST", "/webhook", content=raw, headers=encoded)
        assert response.status_code in DOCUMENTED, (response.status_code, response.text, raw[:300])
        assert "Traceback" not in response.text
        if response.status_code == 200:
            # Let processing finish, so it cannot change counts during the next request.
            self.bot.drain(20)
            crashed = {k: v for k, v in failed_events(self.bot).items() if k not in failed}
            assert crashed == {}, raw[:300]
            self.before = counts(self.bot.engine())
        else:
            assert counts(self.bot.engine()) == before, (response.status_code, raw[:300])
        for record in self.caplog.records[seen:]:
            text = record.getMessage()
            assert record.exc_info is None, (record.name, text)
            assert "Traceback" not in text, (record.name, text)
            assert record.levelno < logging.ERROR, (record.name, text)
        return response.status_code


@pytest.fixture
def check(bot: Bot, caplog: pytest.LogCaptureFixture) -> Checker:
    return Checker(bot, caplog)


def signed_headers(raw: bytes, content_type: str | None = "application/json") -> list:
    headers = [("X-Hub-Signature-256", sign(raw, APP_SECRET))]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    return headers


# ----------------------------------------------------------------------------- strategies

JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)

#: Keys of Meta's payloads, for duplicated and replaced keys.
KEYS = (
    "object", "entry", "id", "time", "messaging", "standby", "sender", "recipient", "timestamp",
    "message", "mid", "text", "is_echo", "app_id", "quick_reply", "payload", "attachments", "type",
    "url", "postback", "title", "referral", "ref", "source", "delivery", "mids", "watermark",
    "read", "reaction", "emoji", "action", "optin", "pass_thread_control", "new_owner_app_id",
    "policy_enforcement", "reply_to", "coordinates", "lat", "long",
)  # fmt: skip

#: Values with a JSON spelling that Python values cannot give: each is put in the text raw.
RAW_VALUES = (
    '"\\ud800"',  # a lone high surrogate
    '"x\\udfff"',  # a lone low surrogate
    '"\\udc00\\ud800"',  # a pair the wrong way round
    '"\\ud83d\\ude80"',  # a valid pair (an emoji), as Meta escapes it
    '"a\\u0000b"',  # NUL
    '"\\u202e\\u0000\\uffff"',
    "1e400",  # a float too large: Python reads inf
    "-1e400",
    "1e-400",
    "-0",
    "NaN",
    "Infinity",
    "9" * 1000,  # a huge integer
    "9" * 5000,  # more digits than Python converts
    "[" * 50 + "]" * 50,
    "[" * 900 + "]" * 900,  # near Python's recursion limit
    "[" * 5000 + "]" * 5000,  # beyond it
    '{"a":' * 1500 + "1" + "}" * 1500,
)

HOSTILE = st.one_of(
    JSON_VALUE,
    st.sampled_from([None, True, False, 0, -1, 1.5, "", " ", [], {}, [[]], {"": None}]),
    st.integers(min_value=2**63 - 2, max_value=10**80),
    st.integers(max_value=-(2**63)),
    st.floats(allow_nan=False),  # ±1e308 but no inf (json.dumps writes Infinity)
    st.text(min_size=60, max_size=300),  # longer than the id columns
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["\u0000", "\u202e", "\ufeff", "🚀" * 30, "e\u0301", "\uffff", "٣٤"]),
    st.integers(1, 40).map(lambda n: _nest("x", n)),
)


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def _items(psid: str) -> list[dict[str, Any]]:
    """One item of each kind the server knows."""
    mid = new_mid()
    return [
        text_item(psid, "hello"),
        text_item(psid, "{{ 7*7 }}"),
        item(psid, message={"mid": mid, "text": "Blue", "quick_reply": {"payload": "BLUE"}}),
        item(
            psid,
            message={
                "mid": new_mid(),
                "attachments": [
                    {"type": "image", "payload": {"url": "https://x.test/a.png"}},
                    {"type": "location", "payload": {"coordinates": {"lat": 1.5, "long": 2}}},
                ],
            },
        ),
        item(psid, postback={"mid": new_mid(), "title": "Start", "payload": "GET_STARTED"}),
        item(psid, referral={"ref": "summer", "source": "SHORTLINK", "type": "OPEN_THREAD"}),
        item(psid, message={"mid": new_mid(), "text": "echoed", "is_echo": True, "app_id": 1}),
        item(psid, delivery={"mids": [mid], "watermark": 1_700_000_000_000}),
        item(psid, read={"watermark": 1_700_000_000_000}),
        item(psid, reaction={"reaction": "love", "emoji": "❤", "action": "react", "mid": mid}),
        item(psid, optin={"type": "notification_messages", "payload": "P"}),
        item(psid, pass_thread_control={"new_owner_app_id": "1", "metadata": "m"}),
        item(psid, message={"mid": new_mid(), "text": "re", "reply_to": {"mid": mid}}),
    ]


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A Messenger body with one to three things wrong with it."""
    psid = draw(st.sampled_from(["u1", "u2", f"u{uuid.uuid4().hex[:6]}"]))
    items = _items(psid)
    chosen = draw(st.lists(st.sampled_from(items), min_size=1, max_size=3))
    body: Any = envelope(*chosen, standby=draw(st.booleans()))
    for _ in range(draw(st.integers(1, 3))):
        body = _mutate(draw, body)
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8")
    if draw(st.booleans()):
        raw = _raw_mutation(draw, raw)
    return raw


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value inside `value` (dict keys and list indexes)."""
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _places(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _places(inner, (*path, index))
    return found


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _mutate(draw: st.DrawFn, body: Any) -> Any:
    path = draw(st.sampled_from(_places(body)))
    target = _get(body, path)
    how = draw(st.sampled_from(["replace", "delete", "add key", "wrap", "stringify"]))
    if how == "replace":
        return _replace(body, path, draw(HOSTILE))
    if how == "delete" and path:
        parent = _get(body, path[:-1])
        copy = dict(parent) if isinstance(parent, dict) else list(parent)
        del copy[path[-1]]
        return _replace(body, path[:-1], copy)
    if how == "add key" and isinstance(target, dict):
        return _replace(body, path, {**target, draw(st.sampled_from(KEYS)): draw(HOSTILE)})
    if how == "wrap":
        return _replace(body, path, _nest(target, draw(st.integers(1, 30))))
    if how == "stringify":
        return _replace(body, path, json.dumps(target))
    return body


def _raw_mutation(draw: st.DrawFn, raw: bytes) -> bytes:
    """Changes only the JSON text can express: raw values, duplicated keys, odd encodings."""
    how = draw(
        st.sampled_from(
            ["raw value", "duplicate key first", "duplicate key last", "bom", "utf16", "trail"]
        )
    )
    if how in ("raw value", "duplicate key first", "duplicate key last"):
        value = (
            draw(st.sampled_from(RAW_VALUES)) if how == "raw value" else json.dumps(draw(HOSTILE))
        )
        pair = f'"{draw(st.sampled_from(KEYS))}": {value}'.encode()
        opens = [i for i, b in enumerate(raw) if b == ord("{")]
        closes = [i for i, b in enumerate(raw) if b == ord("}")]
        if not opens or not closes:  # a mutation replaced the whole body
            return raw + b" " + pair
        if how == "duplicate key last":
            at = draw(st.sampled_from(closes))
            return raw[:at] + b", " + pair + raw[at:]
        at = draw(st.sampled_from(opens)) + 1
        return raw[:at] + pair + b", " + raw[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "utf16":
        return raw.decode("utf-8").encode("utf-16")
    return raw + draw(st.sampled_from([b"\n", b" x", b"{}", b"\x00", b"]"]))


SIGNATURE_GARBAGE = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "",
            "sha256=",
            "sha256",
            "sha1=0123",
            "sha256=" + "0" * 64,
            "sha256=" + "g" * 64,
            "SHA256=" + "a" * 64,
            "sha256=" + "a" * 63,
            "sha256=" + "a" * 6400,
            "md5=xyz",
            " ",
            "\u00e9\u00e8",
        ]
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "garbage/\u00e9",
    ]
)


# ----------------------------------------------------------------------------- the fuzz loop


@FUZZ
@given(raw=st.binary(max_size=2000), signature=st.none() | SIGNATURE_GARBAGE, ct=CONTENT_TYPES)
def test_unsigned_or_wrongly_signed_bodies_are_403_and_change_nothing(
    check: Checker, raw: bytes, signature: str | None, ct: str | None
) -> None:
    headers = [] if signature is None else [("X-Hub-Signature-256", signature)]
    if ct is not None:
        headers.append(("Content-Type", ct))
    assert check.post(raw, headers) == 403


@FUZZ
@given(raw=near_valid(), variant=st.sampled_from(["sha1 only", "other secret", "tampered"]))
def test_near_valid_payloads_without_a_good_signature_are_403(
    check: Checker, raw: bytes, variant: str
) -> None:
    if variant == "sha1 only":
        sha1 = "sha1=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha1).hexdigest()
        headers = [("X-Hub-Signature", sha1)]
    elif variant == "other secret":
        headers = [("X-Hub-Signature-256", sign(raw, "not-" + APP_SECRET))]
    else:
        headers = [("X-Hub-Signature-256", sign(raw, APP_SECRET))]
        raw = raw + b" "
    assert check.post(raw, [*headers, ("Content-Type", "application/json")]) == 403


@FUZZ
@given(raw=st.binary(max_size=2000), ct=CONTENT_TYPES)
def test_correctly_signed_garbage_is_400(check: Checker, raw: bytes, ct: str | None) -> None:
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        expected = {400}
    else:
        expected = {200, 400}  # random bytes that happen to be JSON (e.g. b"0")
    assert check.post(raw, signed_headers(raw, ct)) in expected


@FUZZ
@given(value=JSON_VALUE)
def test_correctly_signed_json_that_is_not_a_messenger_body_is_400(
    check: Checker, value: Any
) -> None:
    if isinstance(value, dict) and value.get("object") == "page":
        value = {**value, "object": "user"}
    raw = json.dumps(value).encode()
    assert check.post(raw, signed_headers(raw)) == 400


@settings(FUZZ, max_examples=150)
@given(raw=near_valid(), ct=CONTENT_TYPES)
def test_correctly_signed_near_valid_payloads_are_stored_or_refused_cleanly(
    check: Checker, raw: bytes, ct: str | None
) -> None:
    status = check.post(raw, signed_headers(raw, ct))
    assert status in (200, 400) if len(raw) <= MAX_BODY else status == 413


@FUZZ
@given(raw=near_valid(), first_good=st.booleans(), garbage=SIGNATURE_GARBAGE)
def test_duplicated_signature_headers(
    check: Checker, raw: bytes, first_good: bool, garbage: str
) -> None:
    good = ("X-Hub-Signature-256", sign(raw, APP_SECRET))
    bad = ("x-hub-signature-256", garbage)
    headers = [good, bad] if first_good else [bad, good]
    assert check.post(raw, headers) in {200, 400, 403}


@FUZZ
@given(extra=st.integers(1, 3 * MAX_BODY), signed_=st.booleans(), pad=st.sampled_from([b" ", b"x"]))
def test_oversized_bodies_are_413_signed_or_not(
    check: Checker, extra: int, signed_: bool, pad: bytes
) -> None:
    raw = json.dumps(envelope(text_item("u1", "hi"))).encode()
    raw = raw[:-1] + pad * (MAX_BODY - len(raw) + extra) + raw[-1:]
    headers = signed_headers(raw) if signed_ else [("Content-Type", "application/json")]
    assert check.post(raw, headers) == 413


# ----------------------------------------------------------------------------- hand-picked


#: Signed bodies that once crashed the server or could never be stored (then every
#: redelivery failed again with 503). Each must be stored (200) or refused (400).
HAND_PICKED = {
    "nested-beyond-recursion-limit": b"[" * 8000 + b"]" * 8000,
    "990-deep": b'{"object":"page","entry":' + b"[" * 990 + b"]" * 990 + b"}",
    "lone-surrogate-mid": envelope(item("u1", message={"mid": "\ud800", "text": "x"})),
    "lone-surrogate-hashed-key": envelope(item("u1", delivery={"watermark": "\udfff"})),
    "surrogate-as-utf8-bytes": json.dumps(envelope(text_item("u1", "x")))
    .encode()
    .replace(b'"x"', b'"\xed\xa0\x80"'),
    "utf-16": json.dumps(envelope(text_item("u1", "x"))).encode("utf-16"),
    "float-overflow": json.dumps(envelope(text_item("u1", "x")))
    .encode()
    .replace(b"1700000000000", b"1e400"),
    "nan": json.dumps(envelope(text_item("u1", "x"))).encode().replace(b"1700000000000", b"NaN"),
    "huge-int": json.dumps(envelope(text_item("u1", "x")))
    .encode()
    .replace(b"1700000000000", b"9" * 4000),
    "nul-in-psid": envelope(text_item("u\x00", "x")),
    "long-psid": envelope(text_item("u" * 65, "x")),
    "long-page": envelope(text_item("u1", "x"), page_id="1" * 65),
    "nul-in-mid": envelope(item("u1", message={"mid": "m\x00", "text": "x"})),
    "nul-in-text": envelope(text_item("u1", "a\x00b")),
    "long-mid": envelope(item("u1", message={"mid": "m" * 5000, "text": "x"})),
    # Stored (a receipt of any shape is valid JSON), then processing must not crash on it.
    "delivery-mids-not-a-list": envelope(item("u1", delivery={"mids": 5.5, "watermark": 2})),
}


def test_hand_picked_signed_bodies_on_each_backend(
    start_bot: Callable[..., Bot], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bot = start_bot(database_url, settings=make_settings(database_url, max_body_bytes=MAX_BODY))
    check = Checker(bot, caplog)
    answers = {}
    for name, body in HAND_PICKED.items():
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        answers[name] = check.post(raw, signed_headers(raw))
    assert set(answers.values()) <= {200, 400}, answers
    # What can be stored is stored; what cannot is refused at once, not retried forever.
    assert {name for name, status in answers.items() if status == 200} == {
        "huge-int",
        "long-mid",
        "delivery-mids-not-a-list",
    }, answers


def test_a_valid_body_still_works_after_the_fuzzing(check: Checker, bot: Bot) -> None:
    raw = json.dumps(envelope(text_item("u1", "hello"))).encode()
    assert check.post(raw, signed_headers(raw)) == 200
    assert bot.graph.texts("u1")[-1] == "Hi Ada!"


# ----------------------------------------------------------------------------- real HTTP


@pytest.fixture
def live(
    sqlite_url: str,
    flows_dir: Path,
    graph: FakeGraph,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, Callable[[], dict[str, int]]]]:
    """The app served by uvicorn on loopback; yields its address and a row counter."""
    caplog.set_level(logging.DEBUG)
    app = create_app(
        make_settings(sqlite_url, max_body_bytes=MAX_BODY),
        flows=[flows_dir],
        transport=graph.transport(),
        freeze_gc=False,
    )
    with serving(app) as url:
        # uvicorn's loggers do not propagate by default: let caplog see "Exception in ASGI…".
        monkeypatch.setattr(logging.getLogger("uvicorn"), "propagate", True)
        engine = db.create_engine_for(sqlite_url)
        try:
            yield url, lambda: counts(engine)
        finally:
            engine.dispose()
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()


def _raw_http(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; returns the status code and the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer


def _request(raw: bytes, *headers: bytes, length: int | None = None) -> bytes:
    head = [
        b"POST /webhook HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Content-Length: %d" % (len(raw) if length is None else length),
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + raw


BODY = json.dumps(envelope(text_item("u1", "hi over the wire"))).encode()
GOOD = b"X-Hub-Signature-256: " + sign(BODY, APP_SECRET).encode()


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(_request(BODY, GOOD, b"X-Hub-Signature-256: sha256=00"), {200, 403}, id="dup"),
        pytest.param(_request(BODY, b"X-Hub-Signature-256: \xff\xfe\x80"), {403}, id="latin1-sig"),
        pytest.param(_request(BODY[:-5], GOOD), {403}, id="signed-over-more-than-sent"),
        pytest.param(_request(BODY, GOOD, length=len(BODY) - 5), {403}, id="short-length"),
        pytest.param(_request(BODY, GOOD, length=10**12), {413}, id="huge-length"),
        pytest.param(_request(BODY, GOOD, length=MAX_BODY + 1), {413}, id="over-limit-length"),
        pytest.param(_request(b"\x00" * 100, GOOD), {403}, id="nul-body"),
        pytest.param(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % (MAX_BODY + 1)
            + b"x" * (MAX_BODY + 1)
            + b"\r\n0\r\n\r\n",
            {413},
            id="chunked-oversized",
        ),
    ],
)
def test_hand_picked_requests_over_real_http(
    live: tuple[str, Callable[[], dict[str, int]]], request_: bytes, expected: set[int]
) -> None:
    url, table_counts = live
    before = table_counts()
    status, answer = _raw_http(url, request_)
    assert status in expected, answer[:300]
    assert b"Traceback" not in answer
    if status != 200:
        assert table_counts() == before


def test_a_deeply_nested_signed_body_over_real_http_is_400(
    live: tuple[str, Callable[[], dict[str, int]]],
) -> None:
    url, table_counts = live
    before = table_counts()
    raw = b'{"object":"page","entry":[' + b"[" * 5000 + b"]" * 5000 + b"]}"
    answer = httpx.post(f"{url}/webhook", content=raw, headers=dict(signed_headers(raw)))
    assert answer.status_code == 400, answer.text
    assert table_counts() == before
