"""The local Messenger emulator: the fake Graph API, the signed-event sender and their commands.

The fake Graph API must answer like Meta (reference §5, §6, §8-§10, §12-§13), or tests passing
against it would say nothing about Facebook; so the shapes are checked here field by field."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from server_kit import serving

from server import webhook_sender as wh
from server.emucli import EMULATOR_COMMANDS, say_command
from server.emulator import Emulator, FailRule, create_emulator, describe, error_body

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "page-token-1"
SECRET = "app-secret-1"


@pytest.fixture
def graph() -> Iterator[httpx.Client]:
    """A client of a fresh fake Graph API served over loopback HTTP."""
    with (
        serving(create_emulator(Emulator(page_id="111"))) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client


def send(client: httpx.Client, body: dict, **params: str) -> httpx.Response:
    return client.post("/v25.0/me/messages", params={"access_token": TOKEN, **params}, json=body)


def text_body(psid: str = "42", text: str = "Hello") -> dict:
    return {"recipient": {"id": psid}, "messaging_type": "RESPONSE", "message": {"text": text}}


# ----------------------------------------------------------------------------- Send API


def test_a_text_message_is_accepted_and_recorded_as_sent(graph: httpx.Client) -> None:
    response = send(graph, text_body(), appsecret_proof="p")
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"recipient_id", "message_id"}
    assert answer["recipient_id"] == "42" and answer["message_id"].startswith("m_")
    again = send(graph, text_body()).json()
    assert again["message_id"] != answer["message_id"]

    recorded = graph.get("/_emulator/requests").json()["requests"]
    assert len(recorded) == 2
    first = recorded[0]
    assert first["method"] == "POST"
    assert first["path"] == "/v25.0/me/messages"
    assert first["version"] == "v25.0" and first["endpoint"] == "/me/messages"
    assert first["query"] == {"access_token": TOKEN, "appsecret_proof": "p"}
    assert first["json"] == text_body()
    assert first["psid"] == "42" and first["status"] == 200 and first["failed"] is False
    assert first["response"] == answer and first["auth"] == "query"
    assert recorded[1]["id"] > first["id"]


def test_paths_work_without_a_version_and_with_the_page_id(graph: httpx.Client) -> None:
    plain = graph.post("/me/messages", json=text_body(), headers={"Authorization": "Bearer t"})
    by_page = graph.post("/v24.0/111/messages", params={"access_token": "t"}, json=text_body())
    assert plain.status_code == by_page.status_code == 200
    recorded = graph.get("/_emulator/requests").json()["requests"]
    assert [(r["version"], r["endpoint"], r["auth"]) for r in recorded] == [
        (None, "/me/messages", "header"),
        ("v24.0", "/111/messages", "query"),
    ]


def test_a_sender_action_answers_only_the_recipient(graph: httpx.Client) -> None:
    response = send(graph, {"recipient": {"id": "42"}, "sender_action": "typing_on"})
    assert response.status_code == 200
    assert response.json() == {"recipient_id": "42"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"message": {"text": "x"}}, "recipient"),
        ({"recipient": {"id": "42"}}, "either message or sender_action"),
        (
            {"recipient": {"id": "42"}, "message": {"text": "x"}, "sender_action": "typing_on"},
            "together",
        ),
        ({"recipient": {"id": "42"}, "message": {}}, "cannot be empty"),
        ({"recipient": {"id": "42"}, "message": {"text": "x" * 2000}}, "2000"),
        ({"recipient": {"id": "42"}, "sender_action": "dance"}, "sender_action"),
        (
            {"recipient": {"id": "42"}, "messaging_type": "MESSAGE_TAG", "message": {"text": "x"}},
            "tag",
        ),
    ],
)
def test_send_bodies_meta_refuses_are_refused_with_error_100(
    graph: httpx.Client, body: dict, needle: str
) -> None:
    response = send(graph, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100 and error["type"] == "OAuthException"
    assert needle in error["message"]
    assert error["fbtrace_id"]


def test_a_call_without_a_token_is_refused(graph: httpx.Client) -> None:
    response = graph.post("/v25.0/me/messages", json=text_body())
    assert response.status_code == 400
    assert "access token" in response.json()["error"]["message"]


# ----------------------------------------------------------------------------- other endpoints


def test_the_profile_answers_only_the_fields_asked_for(graph: httpx.Client) -> None:
    response = graph.get(
        "/v25.0/4242", params={"fields": "first_name,locale", "access_token": TOKEN}
    )
    assert response.json() == {"id": "4242", "first_name": "Alex", "locale": "en_US"}
    graph.post("/_emulator/profiles", json={"4242": {"first_name": "Ada", "last_name": "L"}})
    response = graph.get(
        "/v25.0/4242", params={"fields": "first_name,last_name,gender", "access_token": TOKEN}
    )
    assert response.json() == {"id": "4242", "first_name": "Ada", "last_name": "L"}
    assert graph.get("/_emulator/requests").json()["requests"][-1]["psid"] == "4242"


@pytest.mark.parametrize("edge", ["pass_thread_control", "take_thread_control"])
def test_handover_calls_succeed(graph: httpx.Client, edge: str) -> None:
    body = {"recipient": {"id": "42"}, "target_app_id": 263902037430900, "metadata": "note"}
    response = graph.post(f"/v25.0/me/{edge}", params={"access_token": TOKEN}, json=body)
    assert response.json() == {"success": True}
    refused = graph.post(f"/v25.0/me/{edge}", params={"access_token": TOKEN}, json={})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 100


def test_get_me_checks_the_token(graph: httpx.Client) -> None:
    response = graph.get("/v25.0/me", params={"access_token": TOKEN})
    assert response.json() == {"name": "Emulated page", "id": "111"}


def test_messenger_profile_and_subscribed_apps_keep_what_was_set(graph: httpx.Client) -> None:
    auth = {"access_token": TOKEN}
    profile = {"get_started": {"payload": "GET_STARTED"}, "greeting": [{"locale": "default"}]}
    assert graph.post("/v25.0/me/messenger_profile", params=auth, json=profile).json() == {
        "result": "success"
    }
    got = graph.get("/v25.0/me/messenger_profile", params={**auth, "fields": "get_started"})
    assert got.json() == {"data": [{"get_started": {"payload": "GET_STARTED"}}]}
    deleted = graph.request(
        "DELETE", "/v25.0/me/messenger_profile", params=auth, json={"fields": ["get_started"]}
    )
    assert deleted.json() == {"result": "success"}
    got = graph.get("/v25.0/me/messenger_profile", params={**auth, "fields": "get_started"})
    assert got.json() == {"data": []}

    assert graph.get("/v25.0/111/subscribed_apps", params=auth).json() == {"data": []}
    subscribe = {**auth, "subscribed_fields": "messages,messaging_postbacks"}
    assert graph.post("/v25.0/111/subscribed_apps", params=subscribe).json() == {"success": True}
    data = graph.get("/v25.0/111/subscribed_apps", params=auth).json()["data"]
    assert data[0]["subscribed_fields"] == ["messages", "messaging_postbacks"]


def test_an_unknown_path_gets_metas_unsupported_request_error(graph: httpx.Client) -> None:
    response = graph.post("/v25.0/me/nonsense", params={"access_token": TOKEN}, json={})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Unsupported post request")


# ----------------------------------------------------------------------------- failures


def test_a_failure_rule_fails_n_calls_with_a_meta_shaped_error(graph: httpx.Client) -> None:
    rule = graph.post("/_emulator/fail", json={"code": 613, "times": 2})
    assert rule.status_code == 200
    first, second, third = (send(graph, text_body()) for _ in range(3))
    for failed in (first, second):
        assert failed.status_code == 429
        error = failed.json()["error"]
        assert set(error) == {"message", "type", "code", "fbtrace_id"}
        assert error["code"] == 613 and "rate limit" in error["message"]
        assert error["type"] == "OAuthException"
    assert third.status_code == 200
    recorded = graph.get("/_emulator/requests").json()["requests"]
    assert [r["failed"] for r in recorded] == [True, True, False]
    assert graph.get("/_emulator/fail").json()["rules"][0]["used"] == 2


@pytest.mark.parametrize(
    ("spec", "status", "code", "subcode", "words"),
    [
        ({"code": 2}, 503, 2, None, "retry"),
        ({"code": 190}, 400, 190, None, "access token"),
        ({"code": 551}, 400, 551, None, "isn't available"),
        ({"code": 200, "subcode": 1545041}, 400, 200, 1545041, "isn't receiving"),
        ({"code": 10, "subcode": 2018278}, 400, 10, 2018278, "outside of allowed window"),
        ({"code": 1, "http_status": 502, "message": "Boom"}, 502, 1, None, "Boom"),
        ({"code": 4}, 403, 4, None, "request limit"),
    ],
)
def test_each_error_class_has_metas_status_code_and_wording(
    graph: httpx.Client, spec: dict, status: int, code: int, subcode: int | None, words: str
) -> None:
    graph.post("/_emulator/fail", json={**spec, "times": 1})
    response = send(graph, text_body())
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error.get("error_subcode") == subcode
    assert words in error["message"]


def test_a_rule_without_a_code_answers_a_bare_http_error(graph: httpx.Client) -> None:
    graph.post("/_emulator/fail", json={"code": None, "http_status": 502, "times": 1})
    response = send(graph, text_body())
    assert response.status_code == 502 and response.text == "Service Unavailable"
    assert send(graph, text_body()).status_code == 200


def test_rules_match_by_path_psid_and_token_and_clear(graph: httpx.Client) -> None:
    graph.post("/_emulator/fail", json={"code": 551, "psid": "blocked"})
    graph.post("/_emulator/fail", json={"code": 2, "path": r"^/\d+$"})  # profiles only
    assert send(graph, text_body("blocked")).status_code == 400
    assert send(graph, text_body("blocked")).status_code == 400  # no `times`: until cleared
    assert send(graph, text_body("fine")).status_code == 200
    profile = graph.get("/v25.0/77", params={"access_token": TOKEN})
    assert profile.status_code == 503
    graph.delete("/_emulator/fail")
    assert send(graph, text_body("blocked")).status_code == 200
    graph.post("/_emulator/fail", json={"code": 190, "token": "old", "path": ".*"})
    old = graph.get("/v25.0/me", params={"access_token": "old"})
    assert old.json()["error"]["code"] == 190
    assert graph.get("/v25.0/me", params={"access_token": "new"}).status_code == 200


def test_a_rate_fails_about_that_share_of_calls(graph: httpx.Client) -> None:
    graph.post("/_emulator/fail", json={"code": 2, "rate": 0.3})
    failed = sum(send(graph, text_body()).status_code != 200 for _ in range(300))
    assert 45 <= failed <= 135  # 90 expected; the bounds are ~5 standard deviations wide


@pytest.mark.parametrize(
    "spec", [{"rate": 2}, {"times": -1}, {"path": "("}, {"nonsense": 1}, [1, 2]]
)
def test_a_bad_failure_rule_is_refused(graph: httpx.Client, spec: object) -> None:
    response = graph.post("/_emulator/fail", json=spec)
    assert response.status_code == 400 and "bad failure rule" in response.json()["error"]
    assert graph.get("/_emulator/fail").json() == {"rules": []}


def test_appsecret_proof_and_valid_tokens_are_enforced_when_configured(graph: httpx.Client) -> None:
    graph.post("/_emulator/config", json={"app_secret": SECRET, "valid_tokens": [TOKEN]})
    proof = hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert send(graph, text_body(), appsecret_proof=proof).status_code == 200
    missing = send(graph, text_body())
    assert "require an appsecret_proof" in missing.json()["error"]["message"]
    wrong = send(graph, text_body(), appsecret_proof="0" * 64)
    assert wrong.json()["error"]["message"].startswith("Invalid appsecret_proof")
    other = graph.post("/v25.0/me/messages", params={"access_token": "stolen"}, json=text_body())
    assert other.json()["error"]["code"] == 190


def test_latency_delays_every_answer(graph: httpx.Client) -> None:
    graph.post("/_emulator/config", json={"latency": 0.2})
    started = time.monotonic()
    assert send(graph, text_body()).status_code == 200
    assert time.monotonic() - started >= 0.2


# ----------------------------------------------------------------------------- control


def test_requests_can_be_filtered_waited_for_and_cleared(graph: httpx.Client) -> None:
    send(graph, text_body("a"))
    send(graph, text_body("b"))
    graph.get("/v25.0/a", params={"access_token": TOKEN})
    only_a = graph.get("/_emulator/requests", params={"psid": "a"}).json()
    assert only_a["count"] == 2
    sends = graph.get("/_emulator/requests", params={"endpoint": "/me/messages"}).json()
    assert [r["psid"] for r in sends["requests"]] == ["a", "b"]
    last = sends["requests"][-1]["id"]

    later = threading.Timer(0.3, lambda: send(graph, text_body("c")))
    later.start()
    started = time.monotonic()
    waited = graph.get(
        "/_emulator/requests", params={"since": last, "wait_for": 2, "timeout": 5}
    ).json()
    assert [r["psid"] for r in waited["requests"]] == ["a", "c"]  # the profile, then c
    assert 0.25 <= time.monotonic() - started < 4
    later.join()

    started = time.monotonic()
    short = graph.get("/_emulator/requests", params={"wait_for": 99, "timeout": 0.2}).json()
    assert short["count"] == 4 and time.monotonic() - started < 2
    stats = graph.get("/_emulator/stats").json()
    assert stats["total"] == 4 and stats["last_id"] == waited["requests"][-1]["id"]
    assert stats["POST /me/messages 200"] == 3 and stats["GET /{psid} 200"] == 1
    graph.delete("/_emulator/requests")
    assert graph.get("/_emulator/requests").json() == {"count": 0, "requests": []}
    graph.post("/_emulator/reset")
    assert graph.get("/_emulator/stats").json() == {
        "last_id": stats["last_id"],
        "last_time": stats["last_time"],
    }
    assert time.time() - 10 < stats["last_time"] <= time.time()


# ----------------------------------------------------------------------------- printing


def entry(body: dict, endpoint: str = "/me/messages", **extra: object) -> dict:
    psid = body.get("recipient", {}).get("id")
    return {"method": "POST", "endpoint": endpoint, "json": body, "psid": psid, "status": 200}


def test_describe_prints_messages_the_way_a_person_reads_them() -> None:
    quick = {
        "recipient": {"id": "7"},
        "message": {
            "text": "What's your email address?",
            "quick_replies": [
                {"content_type": "user_email"},
                {"content_type": "text", "title": "Skip", "payload": "SKIP"},
            ],
        },
    }
    assert describe(entry(quick)) == (
        "bot → 7: What's your email address?\n"
        "           (quick reply) <user_email>\n"
        "           (quick reply) Skip → SKIP"
    )
    buttons = {
        "recipient": {"id": "7"},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "button",
                    "text": "Pick one",
                    "buttons": [
                        {"type": "postback", "title": "Talk", "payload": "AGENT"},
                        {"type": "web_url", "title": "Site", "url": "https://example.com"},
                    ],
                },
            }
        },
    }
    assert describe(entry(buttons)) == (
        "bot → 7: Pick one  [HUMAN_AGENT]\n"
        "           [Talk] sends AGENT\n"
        "           [Site] opens https://example.com"
    )
    typing = {"recipient": {"id": "7"}, "sender_action": "typing_on"}
    assert describe(entry(typing)) == "bot → 7: (typing…)"
    handover = {"recipient": {"id": "7"}, "target_app_id": 263902037430900, "metadata": "Help"}
    assert describe(entry(handover, "/me/pass_thread_control")) == (
        'bot ⇢ 7: hands the conversation to app 263902037430900 "Help"'
    )
    failed = {
        **entry(typing),
        "status": 400,
        "failed": True,
        "response": error_body(551),
    }
    assert describe(failed) == (
        "✗ POST /me/messages → injected error 551: (#551) This person isn't available right now."
    )
    assert describe({**entry({}, "/me"), "method": "GET", "psid": None}) is None


def test_fail_rule_defaults_fail_sends_until_cleared() -> None:
    rule = FailRule()
    assert rule.code == 2 and rule.times is None and rule.rate == 1.0
    assert rule.applies("/me/messages", "1", "t") and rule.applies("/me/messages", "1", "t")
    assert not rule.applies("/42", "42", "t")


# ----------------------------------------------------------------------------- webhook sender


def test_events_have_messengers_shapes() -> None:
    text = wh.text_event("hi", psid="u1", page_id="p1", mid="m1", timestamp=5)
    assert text == {
        "sender": {"id": "u1"},
        "recipient": {"id": "p1"},
        "timestamp": 5,
        "message": {"mid": "m1", "text": "hi"},
    }
    quick = wh.quick_reply_event("a@b.co", psid="u1", page_id="p1")["message"]
    assert quick["quick_reply"] == {"payload": "a@b.co"} and quick["text"] == "a@b.co"
    postback = wh.postback_event("PRICING", psid="u1", page_id="p1", ref="ad")["postback"]
    assert postback["payload"] == "PRICING" and postback["mid"].startswith("m_")
    assert postback["referral"] == {"ref": "ad", "source": "SHORTLINK", "type": "OPEN_THREAD"}
    started = wh.get_started_event(psid="u1", page_id="p1")["postback"]
    assert started["payload"] == "GET_STARTED" and started["title"] == "Get Started"
    referral = wh.referral_event("summer", psid="u1", page_id="p1")
    assert referral["referral"]["ref"] == "summer" and "message" not in referral
    echo = wh.echo_event("sent", psid="u1", page_id="p1", mid="m2")
    assert echo["sender"] == {"id": "p1"} and echo["recipient"] == {"id": "u1"}
    assert echo["message"]["is_echo"] is True and echo["message"]["mid"] == "m2"
    body = wh.envelope(text, page_id="p1", time_ms=9)
    assert body == {"object": "page", "entry": [{"id": "p1", "time": 9, "messaging": [text]}]}
    assert "standby" in wh.envelope(text, page_id="p1", standby=True)["entry"][0]
    mids = {wh.new_mid() for _ in range(100)}
    assert len(mids) == 100


def test_bodies_are_escaped_like_metas_and_signed_over_the_exact_bytes() -> None:
    body = wh.envelope(wh.text_event("Grüße 🚀 https://x.y/z", psid="u", page_id="p"), page_id="p")
    raw = wh.encode(body)
    assert raw.isascii() and b"Gr\\u00fc\\u00dfe \\ud83d\\ude80" in raw
    assert b"https:\\/\\/x.y\\/z" in raw
    assert json.loads(raw) == body
    utf8 = wh.encode(body, escape=False)
    assert "Grüße 🚀".encode() in utf8 and json.loads(utf8) == body
    expected = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert wh.signature(raw, "s3cret") == "sha256=" + expected
    headers = wh.signed_headers(utf8, "s3cret")
    assert headers["x-hub-signature-256"] != wh.signature(raw, "s3cret")
    assert headers["content-type"] == "application/json"


# ----------------------------------------------------------------------------- commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_emulator_command_prints_what_the_bot_sends() -> None:
    port = free_port()
    code = "from server.emucli import emulator_command; emulator_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{base}/_emulator/stats", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.05)
        body = text_body("7", "Hello from the bot")
        ok = httpx.post(f"{base}/v25.0/me/messages", params={"access_token": "t"}, json=body)
        assert ok.status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert "Fake Graph API on http://127.0.0.1:" in output
    assert "bot → 7: Hello from the bot" in output
    assert "access_token" not in output and "t&" not in output


def test_say_refuses_two_kinds_of_event_and_an_empty_message() -> None:
    runner = CliRunner()
    both = runner.invoke(say_command, ["--postback", "A", "--get-started"])
    assert both.exit_code == 2 and "only one of" in both.output
    nothing = runner.invoke(say_command, [])
    assert nothing.exit_code == 2 and "say what?" in nothing.output


def test_say_explains_a_server_that_is_not_running() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhook"
    result = CliRunner().invoke(say_command, ["hello", "--url", url, "--wait", "0"])
    assert result.exit_code == 1
    assert re.search(r"could not reach the server at .*Is it running\?", result.output)


def test_the_commands_are_exported() -> None:
    assert [c.name for c in EMULATOR_COMMANDS] == ["emulator", "say"]
