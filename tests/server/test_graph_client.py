"""The Graph API client: exact requests (path, query, auth, body) and error classification.

(Named test_graph_client.py: tests/test_graph.py, the flow-graph renderer's tests, holds the
module name test_graph.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from outbox_kit import APP_SECRET, BASE_URL, TOKEN, FakeGraph, meta_error, proof

from server.graph import (
    PAGE_INBOX_APP_ID,
    PROFILE_FIELDS,
    GraphClient,
    GraphError,
    classify,
    create_http_client,
    message_body,
    sender_action_body,
)

PSID = "24000000000001"


def client_for(graph: FakeGraph) -> GraphClient:
    return GraphClient(
        create_http_client(graph.transport()), base_url=BASE_URL, app_secret=APP_SECRET
    )


# ----------------------------------------------------------------------------- requests


def test_send_posts_the_body_with_token_in_the_header_and_appsecret_proof() -> None:
    graph = FakeGraph()
    answer = asyncio.run(
        client_for(graph).send(TOKEN, message_body(PSID, {"text": "Hello, world!"}))
    )
    assert answer == {"recipient_id": PSID, "message_id": "m_1"}
    (request,) = graph.calls
    assert (request.method, request.path) == ("POST", "/v25.0/me/messages")
    assert request.params == {"appsecret_proof": proof(TOKEN)}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "Hello, world!"},
    }


def test_calls_carry_the_clients_timeouts_and_user_agent_and_no_cookies() -> None:
    """The client's transport is called directly (no AsyncClient.send): what the client
    would have applied must still be there, and a cookie Meta sets is not sent back."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"recipient_id": PSID, "message_id": "m_1"},
            headers={"Set-Cookie": "fr=abc; Path=/"},
        )

    http = create_http_client(httpx.MockTransport(handler), timeout=httpx.Timeout(7.0, connect=2.0))
    client = GraphClient(http, base_url=BASE_URL, app_secret=APP_SECRET)

    async def twice() -> None:
        await client.send(TOKEN, message_body(PSID, {"text": "é"}))
        await client.send(TOKEN, message_body(PSID, {"text": "again"}))

    asyncio.run(twice())
    first, second = seen
    assert first.extensions["timeout"] == {"connect": 2.0, "read": 7.0, "write": 7.0, "pool": 7.0}
    assert first.headers["user-agent"] == "flowlang"
    assert "cookie" not in second.headers
    # The body is encoded as httpx encodes `json=`: compact UTF-8.
    assert first.content == (
        b'{"recipient":{"id":"' + PSID.encode() + b'"},"messaging_type":"RESPONSE",'
        b'"message":{"text":"\xc3\xa9"}}'
    )
    assert first.headers["content-length"] == str(len(first.content))


def test_appsecret_proof_is_the_hmac_of_each_token() -> None:
    graph = FakeGraph()
    client = client_for(graph)
    # The reference's formula, worked by hand: HMAC-SHA256(app secret, token), hex.
    assert client.appsecret_proof("abc") == proof("abc")
    assert client.appsecret_proof("abc") != client.appsecret_proof("abd")

    async def two_pages() -> None:
        await client.send("token-a", message_body(PSID, {"text": "a"}))
        await client.send("token-b", message_body(PSID, {"text": "b"}))

    asyncio.run(two_pages())
    assert [c.params["appsecret_proof"] for c in graph.calls] == [
        proof("token-a"),
        proof("token-b"),
    ]


def test_message_tag_uses_messaging_type_message_tag() -> None:
    assert message_body(PSID, {"text": "An agent here"}, tag="HUMAN_AGENT") == {
        "recipient": {"id": PSID},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": "An agent here"},
    }


def test_sender_action_body() -> None:
    graph = FakeGraph()
    answer = asyncio.run(client_for(graph).send(TOKEN, sender_action_body(PSID, "typing_on")))
    assert answer == {"recipient_id": PSID}
    assert graph.calls[0].json == {"recipient": {"id": PSID}, "sender_action": "typing_on"}


def test_get_profile_asks_for_the_template_fields() -> None:
    graph = FakeGraph()
    profile = asyncio.run(client_for(graph).get_profile(TOKEN, PSID))
    assert profile == {"first_name": "Ada", "last_name": "Lovelace"}
    (request,) = graph.calls
    assert (request.method, request.path) == ("GET", f"/v25.0/{PSID}")
    assert request.params == {
        "fields": "first_name,last_name,profile_pic,locale,timezone,gender",
        "appsecret_proof": proof(TOKEN),
    }
    assert PROFILE_FIELDS == (
        "first_name",
        "last_name",
        "profile_pic",
        "locale",
        "timezone",
        "gender",
    )
    assert request.json is None


def test_pass_and_take_thread_control() -> None:
    graph = FakeGraph()
    client = client_for(graph)

    async def handover() -> None:
        assert await client.pass_thread_control(
            TOKEN, PSID, PAGE_INBOX_APP_ID, "Customer asked for a human"
        ) == {"success": True}
        await client.pass_thread_control(TOKEN, PSID, 12345)
        await client.take_thread_control(TOKEN, PSID, "Bot resumes")
        await client.take_thread_control(TOKEN, PSID)

    asyncio.run(handover())
    assert [(c.method, c.path) for c in graph.calls] == [
        ("POST", "/v25.0/me/pass_thread_control"),
        ("POST", "/v25.0/me/pass_thread_control"),
        ("POST", "/v25.0/me/take_thread_control"),
        ("POST", "/v25.0/me/take_thread_control"),
    ]
    assert [c.json for c in graph.calls] == [
        {
            "recipient": {"id": PSID},
            "target_app_id": 263902037430900,
            "metadata": "Customer asked for a human",
        },
        {"recipient": {"id": PSID}, "target_app_id": 12345},
        {"recipient": {"id": PSID}, "metadata": "Bot resumes"},
        {"recipient": {"id": PSID}},
    ]
    assert all(c.params == {"appsecret_proof": proof(TOKEN)} for c in graph.calls)


def test_generic_request_merges_params() -> None:
    graph = FakeGraph()
    asyncio.run(
        client_for(graph).request(
            "GET", "me/messenger_profile", TOKEN, params={"fields": "greeting"}
        )
    )
    assert graph.calls[0].path == "/v25.0/me/messenger_profile"
    assert graph.calls[0].params == {"fields": "greeting", "appsecret_proof": proof(TOKEN)}


def test_the_token_is_never_in_the_url_nor_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    graph = FakeGraph()
    graph.script(PSID, meta_error(190, 463, message="Session has expired"))
    client = client_for(graph)
    caplog.set_level(logging.DEBUG)

    async def calls() -> None:
        with pytest.raises(GraphError) as raised:
            await client.send(TOKEN, message_body(PSID, {"text": "hi"}))
        logging.getLogger("test").error("failed: %s %r", raised.value, raised.value)
        await client.get_profile(TOKEN, PSID)

    asyncio.run(calls())
    assert all(TOKEN not in str(c.params) for c in graph.calls)
    # Each call is logged (method, path, status), and no line holds the token.
    assert "POST /me/messages -> 400" in caplog.text
    assert f"GET /{PSID} -> 200" in caplog.text
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(client)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("code", "subcode", "status", "kind"),
    [
        (1, None, 500, "transient"),
        (1, 99, 500, "transient"),
        (1, 1357046, 500, "permanent"),  # may have been sent: no blind retry
        (2, None, 503, "transient"),
        (1200, None, 500, "transient"),
        (4, None, 403, "rate_limit"),
        (4, 2018022, 403, "rate_limit"),
        (4, 2018354, 403, "permanent"),
        (9, 2018352, 400, "permanent"),
        (17, None, 403, "rate_limit"),
        (32, None, 403, "rate_limit"),
        (613, None, 429, "rate_limit"),
        (80006, None, 429, "rate_limit"),
        (190, None, 400, "bad_token"),
        (190, 463, 400, "bad_token"),
        (190, 460, 400, "bad_token"),
        (551, None, 400, "unreachable"),
        (200, 1545041, 400, "unreachable"),
        (10, 2018108, 400, "unreachable"),
        (100, 2018001, 400, "unreachable"),
        (10, 2018278, 400, "window_closed"),
        (10, 2018065, 400, "window_closed"),
        (10, None, 400, "permanent"),
        (100, None, 400, "permanent"),
        (100, 2018109, 400, "permanent"),
        (200, 2018028, 400, "permanent"),
        (368, None, 400, "permanent"),
        (None, None, 500, "transient"),
        (None, None, 502, "transient"),
        (None, None, 429, "rate_limit"),
        (None, None, 404, "permanent"),
        (None, None, None, "transient"),
    ],
)
def test_classify(code: int | None, subcode: int | None, status: int | None, kind: str) -> None:
    assert classify(code, subcode, status) == kind


def _raised(answer: httpx.Response | Exception) -> GraphError:
    graph = FakeGraph()
    graph.script(PSID, answer)
    with pytest.raises(GraphError) as raised:
        asyncio.run(client_for(graph).send(TOKEN, message_body(PSID, {"text": "hi"})))
    return raised.value


def test_graph_error_carries_meta_fields() -> None:
    error = _raised(
        meta_error(10, 2018278, message="(#10) This message is sent outside of allowed window.")
    )
    assert (error.kind, error.code, error.subcode, error.http_status) == (
        "window_closed",
        10,
        2018278,
        400,
    )
    assert error.message == "(#10) This message is sent outside of allowed window."
    assert error.fbtrace_id == "Atrace"
    assert error.code_text == "10/2018278"
    assert str(error) == (
        "Graph API error 10/2018278 (window_closed, HTTP 400): "
        "(#10) This message is sent outside of allowed window."
    )


def test_an_error_body_with_status_200_is_still_an_error() -> None:
    error = _raised(httpx.Response(200, json={"error": {"message": "bad", "code": 100}}))
    assert (error.kind, error.code) == ("permanent", 100)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (httpx.ReadTimeout("slow"), "transient"),
        (httpx.ConnectError("refused"), "transient"),
        (httpx.RemoteProtocolError("closed"), "transient"),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "transient"),
        (httpx.Response(403, text="Forbidden"), "permanent"),
    ],
)
def test_failures_without_a_meta_error(answer: Any, kind: str) -> None:
    error = _raised(answer)
    assert error.kind == kind
    assert error.code is None and error.code_text == "-"


def test_rate_limit_hints() -> None:
    assert _raised(meta_error(613, status=429, headers={"Retry-After": "7"})).retry_after == 7.0
    usage = '{"1111":[{"type":"pages","call_count":100,"estimated_time_to_regain_access":3}]}'
    error = _raised(meta_error(80006, status=429, headers={"X-Business-Use-Case-Usage": usage}))
    assert error.retry_after == 180.0  # minutes, in seconds
    assert _raised(meta_error(613, status=429)).retry_after is None
    assert (
        _raised(meta_error(613, headers={"X-Business-Use-Case-Usage": "{oops"})).retry_after is None
    )
    # A hint on an error that is not a rate limit is not used.
    assert _raised(meta_error(100, headers={"Retry-After": "7"})).retry_after is None


def test_a_2xx_answer_that_is_not_json_counts_as_accepted() -> None:
    graph = FakeGraph()
    graph.script(PSID, httpx.Response(200, text="ok"))
    answer = asyncio.run(client_for(graph).send(TOKEN, message_body(PSID, {"text": "hi"})))
    assert answer == {}


# ----------------------------------------------------------------------------- real HTTP


@contextlib.asynccontextmanager
async def loopback_graph(
    answer: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]],
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A raw-ASGI fake Graph API under uvicorn on 127.0.0.1; yields (base URL, requests)."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        seen.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"].decode(),
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "json": json.loads(body) if body else None,
            }
        )
        status, payload = await answer(scope["path"])
        raw = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v25.0", seen
    finally:
        server.should_exit = True
        await task
        sock.close()


def test_the_default_transport_over_real_http() -> None:
    async def answer(path: str) -> tuple[int, dict[str, Any]]:
        if path.endswith("/slow"):
            await asyncio.sleep(0.5)
        if path.endswith("/me/messages"):
            return 200, {"recipient_id": PSID, "message_id": "m_1"}
        return 400, {"error": {"message": "(#551) This person isn't available", "code": 551}}

    async def scenario() -> None:
        async with loopback_graph(answer) as (base, seen):
            http = create_http_client(timeout=httpx.Timeout(0.2, connect=0.3))
            # aiohttp's pool, not httpcore's (see create_http_client).
            assert type(http._transport).__name__ == "AiohttpTransport"
            client = GraphClient(http, base_url=base, app_secret=APP_SECRET)
            try:
                body = message_body(PSID, {"text": "Grüße 👋"})
                assert await client.send(TOKEN, body) == {"recipient_id": PSID, "message_id": "m_1"}
                with pytest.raises(GraphError) as refused:
                    await client.request("POST", "/me/other", TOKEN, json={"a": 1})
                assert (refused.value.kind, refused.value.code) == ("unreachable", 551)
                with pytest.raises(GraphError) as slow:
                    await client.request("GET", "/slow", TOKEN)
                assert slow.value.kind == "transient"
            finally:
                await http.aclose()
            sent = seen[0]
            assert (sent["method"], sent["path"]) == ("POST", "/v25.0/me/messages")
            assert sent["query"] == f"appsecret_proof={proof(TOKEN)}"
            assert sent["headers"]["authorization"] == f"Bearer {TOKEN}"
            assert sent["json"] == body

        # Nobody listens any more: a connection error is transient too.
        http = create_http_client(timeout=httpx.Timeout(0.2, connect=0.3))
        try:
            with pytest.raises(GraphError) as down:
                await GraphClient(http, base_url=base, app_secret=APP_SECRET).send(TOKEN, body)
            assert down.value.kind == "transient" and down.value.code is None
        finally:
            await http.aclose()

    asyncio.run(scenario())


def test_a_configured_proxy_selects_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    http = create_http_client()
    assert type(http._transport).__name__ == "AsyncHTTPTransport"
    asyncio.run(http.aclose())
