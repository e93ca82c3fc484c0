"""`flowc webhook verify|subscribe|list-subscriptions|send-test` (server/webhookcli.py).

`verify` runs against the real server (`server.app.create_app` under uvicorn on loopback);
the Graph API commands against the fake Graph API (server/emulator.py) on loopback, checking
the exact requests Meta receives."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from ops_kit import (
    FIELDS,
    PAGE,
    TOKEN,
    Env,
    calls,
    closed_port,
    flowc,
    one_line_error,
)
from server_kit import VERIFY_TOKEN, FakeGraph, make_settings, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from server.app import create_app
from server.emulator import EMULATOR_APP_ID, Emulator, FailRule

PSID = "24680"


def webhook(env: Env, *args: str) -> Result:
    return flowc(env, "webhook", *args)


def add_page(env: Env) -> None:
    """Store PAGE with TOKEN, as an operator would."""
    result = flowc(env, "page", "add", "--page-id", PAGE, "--token", TOKEN)
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- verify


@pytest.fixture
def server_url(sqlite_url: str, flows_dir: Path, graph: FakeGraph) -> Iterator[str]:
    """The real server on a loopback port (its verify token is VERIFY_TOKEN)."""
    app = create_app(
        make_settings(sqlite_url), flows=[flows_dir], transport=graph.transport(), freeze_gc=False
    )
    with serving(app) as url:
        yield url


def test_verify_passes_with_the_servers_verify_token(server_url: str, env: Env) -> None:
    result = webhook({**env, "FLOW_VERIFY_TOKEN": VERIFY_TOKEN}, "verify", f"{server_url}/webhook")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"The webhook at {server_url}/webhook answered the challenge: Meta's verification will "
        "pass with this verify token.",
        "Note: Meta calls only https:// addresses with a valid certificate; http:// is good for "
        "a local check only.",
    ]


def test_verify_with_a_wrong_token_is_refused(server_url: str, env: Env) -> None:
    result = webhook(env, "verify", f"{server_url}/webhook", "--verify-token", "not-the-one")
    assert one_line_error(result) == (
        f"Error: {server_url}/webhook refused the verify token (HTTP 403): the server's "
        "FLOW_VERIFY_TOKEN is not the verify token given here (--verify-token or "
        "FLOW_VERIFY_TOKEN)"
    )
    assert "not-the-one" not in result.output


def test_verify_names_a_wrong_path_and_a_missing_token(server_url: str, env: Env) -> None:
    wrong_path = webhook(env, "verify", f"{server_url}/hook", "--verify-token", VERIFY_TOKEN)
    assert one_line_error(wrong_path) == (
        f"Error: nothing answers at {server_url}/hook (HTTP 404): `flowc serve` answers at the "
        "path /webhook"
    )
    no_token = webhook(env, "verify", f"{server_url}/webhook")
    assert one_line_error(no_token).startswith("Error: no verify token: set FLOW_VERIFY_TOKEN")


def test_verify_sends_metas_query_and_spots_a_wrong_answer(env: Env) -> None:
    seen: list[dict[str, str]] = []

    async def hook(request: Request) -> PlainTextResponse:
        seen.append(dict(request.query_params))
        return PlainTextResponse("EVENT_RECEIVED")

    with serving(Starlette(routes=[Route("/hook", hook)])) as url:
        result = webhook(env, "verify", f"{url}/hook", "--verify-token", "s3cret")
    assert one_line_error(result) == (
        f"Error: {url}/hook answered HTTP 200 but not with the challenge (it sent "
        "'EVENT_RECEIVED'): Meta needs exactly the hub.challenge value back; is this the "
        "webhook address (`flowc serve` answers at /webhook)?"
    )
    (query,) = seen
    assert query.pop("hub.mode") == "subscribe"
    assert query.pop("hub.verify_token") == "s3cret"
    assert re.fullmatch(r"[1-9][0-9]{9}", query.pop("hub.challenge"))  # a number, like Meta's
    assert query == {}


def test_verify_against_nothing_listening_is_one_line(env: Env) -> None:
    url = f"http://127.0.0.1:{closed_port()}/webhook"
    line = one_line_error(webhook(env, "verify", url, "--verify-token", VERIFY_TOKEN))
    assert line.startswith(f"Error: cannot reach {url} (ConnectError: ")
    assert line.endswith("is the server running (`flowc serve`) and is the address right?")


# ----------------------------------------------------------------------------- subscriptions


def test_subscribe_uses_the_stored_token_and_the_runtimes_fields(meta: Emulator, env: Env) -> None:
    add_page(env)
    result = webhook(env, "subscribe", "--page-id", PAGE)
    assert result.exit_code == 0, result.output
    assert calls(meta) == [
        ("POST", f"/{PAGE}/subscribed_apps", {"subscribed_fields": FIELDS}, None)
    ]
    assert result.stdout == (
        f"Subscribed the app to page {PAGE}'s webhook fields: {FIELDS.replace(',', ', ')}.\n"
    )
    assert meta.subscribed_fields == FIELDS.split(",")


def test_subscribe_to_chosen_fields_with_a_given_token(meta: Emulator, env: Env) -> None:
    args = ("--page-id", PAGE, "--token", TOKEN, "--fields", "messages, messaging_postbacks")
    result = webhook(env, "subscribe", *args)
    assert result.exit_code == 0, result.output
    assert calls(meta) == [
        (
            "POST",
            f"/{PAGE}/subscribed_apps",
            {"subscribed_fields": "messages,messaging_postbacks"},
            None,
        )
    ]
    unknown = webhook(env, "subscribe", "--page-id", PAGE, "--token", TOKEN, "--fields", "mesages")
    assert one_line_error(unknown).startswith(
        "Error: subscribing the app to the page (POST /{page-id}/subscribed_apps) failed: Meta "
        "refused the request (error 100): (#100) Param subscribed_fields[0] must be one of {"
    )


def test_a_page_without_a_stored_token_is_one_line(meta: Emulator, env: Env) -> None:
    add_page(env)
    result = webhook(env, "subscribe", "--page-id", "42")
    assert one_line_error(result) == (
        f"Error: page 42 is not in {env['FLOW_DATABASE_URL']}: connect it with "
        "`flowc page setup --page-id … --token …`, or give its token with --token"
    )
    assert calls(meta) == []


def test_list_subscriptions_as_text_and_json(meta: Emulator, env: Env, snapshot: Any) -> None:
    add_page(env)
    empty = webhook(env, "list-subscriptions", "--page-id", PAGE)
    assert empty.stdout == (
        f"No app is subscribed to page {PAGE}: Messenger sends it no events. Subscribe with "
        f"`flowc webhook subscribe --page-id {PAGE}`.\n"
    )
    meta.subscribed_fields[:] = ["messages", "messaging_postbacks"]
    text = webhook(env, "list-subscriptions", "--page-id", PAGE)
    assert text.exit_code == 0, text.output
    assert text.stdout == snapshot
    as_json = webhook(env, "list-subscriptions", "--page-id", PAGE, "--format", "json")
    assert json.loads(as_json.stdout) == {
        "page_id": PAGE,
        "apps": [
            {
                "category": "Business",
                "name": "Flowlang",
                "id": EMULATOR_APP_ID,
                "subscribed_fields": ["messages", "messaging_postbacks"],
            }
        ],
    }
    assert calls(meta) == [("GET", f"/{PAGE}/subscribed_apps", {}, None)] * 3


# ----------------------------------------------------------------------------- send-test


def send_test(env: Env) -> Result:
    return webhook(env, "send-test", "--page-id", PAGE, "--recipient-psid", PSID, "--text", "Hi ✓")


def test_send_test_sends_a_reply_through_the_send_api(meta: Emulator, env: Env) -> None:
    add_page(env)
    result = send_test(env)
    assert result.exit_code == 0, result.output
    message_id = meta.requests[-1]["response"]["message_id"]
    assert calls(meta) == [
        (
            "POST",
            "/me/messages",
            {},
            {"recipient": {"id": PSID}, "messaging_type": "RESPONSE", "message": {"text": "Hi ✓"}},
        )
    ]
    assert result.stdout == f"Meta accepted the message to {PSID}: message id {message_id}.\n"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            FailRule(code=551),
            "Meta cannot deliver to this person (error 551): (#551) This person isn't available "
            "right now; the person blocked the page, deleted their account or cannot receive "
            "messages right now",
        ),
        (
            FailRule(code=10, subcode=2018278),
            "outside the 24-hour messaging window (error 10/2018278): (#10) This message is "
            "sent outside of allowed window; the page may answer only within 24 hours of the "
            "person's last message",
        ),
        (
            FailRule(code=613),
            "Meta's rate limit was reached (error 613): (#613) Calls to this api have exceeded "
            "the rate limit; wait a few minutes before trying again",
        ),
        (
            FailRule(code=190, subcode=463),
            "Meta refused the access token (error 190/463): Error validating access token: "
            "Session has expired; get a new Page access token and store it with "
            "`flowc page setup --page-id … --token …`",
        ),
    ],
    ids=["unavailable", "window", "rate-limit", "bad-token"],
)
def test_send_test_failures_are_one_line_with_the_code(
    meta: Emulator, env: Env, rule: FailRule, expected: str
) -> None:
    add_page(env)
    meta.rules.append(rule)
    assert one_line_error(send_test(env)) == (
        f"Error: sending the test message to {PSID} failed: {expected}"
    )


def test_send_test_with_the_graph_api_out_of_reach(env: Env) -> None:
    add_page(env)
    url = f"http://127.0.0.1:{closed_port()}/v25.0"
    line = one_line_error(send_test({**env, "FLOW_GRAPH_API_URL": url}))
    assert line.startswith(
        f"Error: sending the test message to {PSID} failed: no answer from the Graph API at {url} ("
    )
    assert line.endswith("); check FLOW_GRAPH_API_URL and the network")
