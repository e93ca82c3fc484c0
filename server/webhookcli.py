"""`flowc webhook`: check the webhook handshake, subscribe the app to a page's webhook events,
list the subscriptions, and send a real test message through the Send API.

The Graph API commands use the server's client and settings (server/opskit.py): the page token
comes from --token or from the database (FLOW_DATABASE_URL, decrypted with FLOW_SECRET_KEY),
every call is signed with FLOW_APP_SECRET, and FLOW_GRAPH_API_URL says where Meta is."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from runtime.dbcli import DATABASE_URL_OPTION
from server.graph import message_body
from server.opskit import (
    PAGE_ID_OPTION,
    SECRET_KEY_OPTION,
    WEBHOOK_FIELDS,
    GraphSession,
    checked_page_id,
    graph_config,
    graph_options,
    page_token,
)

_TOKEN_OPTION = click.option(
    "--token",
    default=None,
    help="The Page access token; default: the one stored for the page (`flowc page setup`).",
)
#: How long `webhook verify` waits for the server (Meta's own limit is a few seconds).
VERIFY_TIMEOUT = 10.0


@click.group("webhook")
def webhook_group() -> None:
    """Check and manage the Messenger webhook.

    \b
    Example:
      flowc webhook verify https://bot.example.com/webhook
      flowc webhook subscribe --page-id 1234567890
      flowc webhook list-subscriptions --page-id 1234567890
      flowc webhook send-test --page-id 1234567890 --recipient-psid 2468… --text "Hello"
    """


# ----------------------------------------------------------------------------- verify


def _shown(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def handshake(url: str, verify_token: str, *, timeout: float = VERIFY_TIMEOUT) -> str:
    """Meta's verification GET against `url`; returns the line to print on success and
    raises `click.ClickException` with the reason otherwise."""
    challenge = str(secrets.randbelow(9 * 10**9) + 10**9)  # Meta sends a number
    params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.get(url, params=params)
    except httpx.TimeoutException:
        raise click.ClickException(
            f"no answer from {url} within {timeout:g} s: is the server running and reachable?"
        ) from None
    except httpx.HTTPError as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        if "CERTIFICATE" in detail.upper():
            raise click.ClickException(
                f"{url} has a certificate that is not trusted ({detail}): Meta needs a valid "
                "certificate, not a self-signed one"
            ) from None
        raise click.ClickException(
            f"cannot reach {url} ({type(e).__name__}: {detail}): is the server running "
            "(`flowc serve`) and is the address right?"
        ) from None
    status = response.status_code
    if status == 200 and response.text == challenge:
        return (
            f"The webhook at {url} answered the challenge: Meta's verification will pass "
            "with this verify token."
        )
    if status == 200:
        raise click.ClickException(
            f"{url} answered HTTP 200 but not with the challenge (it sent "
            f"{_shown(response.text)}): Meta needs exactly the hub.challenge value back; "
            "is this the webhook address (`flowc serve` answers at /webhook)?"
        )
    if status == 403:
        raise click.ClickException(
            f"{url} refused the verify token (HTTP 403): the server's FLOW_VERIFY_TOKEN is "
            "not the verify token given here (--verify-token or FLOW_VERIFY_TOKEN)"
        )
    if status == 404:
        raise click.ClickException(
            f"nothing answers at {url} (HTTP 404): `flowc serve` answers at the path /webhook"
        )
    if 300 <= status < 400:
        raise click.ClickException(
            f"{url} redirects (HTTP {status}) to {response.headers.get('location', '?')}: "
            "Meta does not follow redirects, give it the final address"
        )
    raise click.ClickException(
        f"{url} answered HTTP {status} instead of the challenge ({_shown(response.text)})"
    )


@webhook_group.command("verify")
@click.argument("url")
@click.option(
    "--verify-token",
    envvar="FLOW_VERIFY_TOKEN",
    default=None,
    help="The verify token typed in the app's Webhooks settings. Default from "
    "FLOW_VERIFY_TOKEN (preferred: an option shows in the process list).",
)
def verify_command(url: str, verify_token: str | None) -> None:
    """Do Meta's verification handshake against a running server: a GET with hub.mode,
    hub.verify_token and a random hub.challenge, which the server must send back.

    \b
    Example:
      FLOW_VERIFY_TOKEN=… flowc webhook verify https://bot.example.com/webhook
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.UsageError(f"URL must be an http(s) address, not {url!r}")
    if not verify_token:
        raise click.ClickException(
            "no verify token: set FLOW_VERIFY_TOKEN (or give --verify-token) to the verify "
            "token of the app's Webhooks settings"
        )
    click.echo(handshake(url, verify_token))
    if parts.scheme == "http":
        click.echo(
            "Note: Meta calls only https:// addresses with a valid certificate; http:// is "
            "good for a local check only."
        )


# ----------------------------------------------------------------------------- subscriptions


def _fields(text: str) -> list[str]:
    fields = list(dict.fromkeys(f for f in re.split(r"[\s,]+", text) if f))
    if not fields:
        raise click.UsageError("--fields is empty: list webhook fields, e.g. messages")
    return fields


@webhook_group.command("subscribe")
@PAGE_ID_OPTION
@click.option(
    "--fields",
    default=",".join(WEBHOOK_FIELDS),
    show_default=True,
    help="The webhook fields, separated by commas (default: the events the runtime handles).",
)
@_TOKEN_OPTION
@DATABASE_URL_OPTION
@SECRET_KEY_OPTION
@graph_options
def subscribe_command(
    page_id: str,
    fields: str,
    token: str | None,
    database_url: str,
    secret_key: str | None,
    graph_api_url: str,
    app_secret: str | None,
) -> None:
    """Subscribe the app to a page's webhook events (POST /{page-id}/subscribed_apps).

    Meta replaces the app's list of fields with the one given.

    \b
    Example:
      flowc webhook subscribe --page-id 1234567890
      flowc webhook subscribe --page-id 1234567890 --fields messages,messaging_postbacks
    """
    page_id = checked_page_id(page_id)
    wanted = _fields(fields)
    config = graph_config(graph_api_url, app_secret)
    token = page_token(page_id, token, database_url, secret_key)
    with GraphSession(config) as graph:
        graph.call(
            "subscribing the app to the page (POST /{page-id}/subscribed_apps)",
            "POST",
            f"/{page_id}/subscribed_apps",
            token,
            params={"subscribed_fields": ",".join(wanted)},
        )
    click.echo(f"Subscribed the app to page {page_id}'s webhook fields: {', '.join(wanted)}.")


@webhook_group.command("list-subscriptions")
@PAGE_ID_OPTION
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help='text for people, json for scripts (Meta\'s list under "apps").',
)
@_TOKEN_OPTION
@DATABASE_URL_OPTION
@SECRET_KEY_OPTION
@graph_options
def list_subscriptions_command(
    page_id: str,
    output: str,
    token: str | None,
    database_url: str,
    secret_key: str | None,
    graph_api_url: str,
    app_secret: str | None,
) -> None:
    """Show the apps subscribed to a page's webhook events and their fields
    (GET /{page-id}/subscribed_apps).

    \b
    Example:
      flowc webhook list-subscriptions --page-id 1234567890
      flowc webhook list-subscriptions --page-id 1234567890 --format json
    """
    page_id = checked_page_id(page_id)
    config = graph_config(graph_api_url, app_secret)
    token = page_token(page_id, token, database_url, secret_key)
    with GraphSession(config) as graph:
        answer = graph.call(
            "listing the page's subscribed apps (GET /{page-id}/subscribed_apps)",
            "GET",
            f"/{page_id}/subscribed_apps",
            token,
        )
    apps = [a for a in answer.get("data") or () if isinstance(a, dict)]
    if output == "json":
        click.echo(json.dumps({"page_id": page_id, "apps": apps}, indent=2, ensure_ascii=False))
        return
    if not apps:
        click.echo(
            f"No app is subscribed to page {page_id}: Messenger sends it no events. "
            f"Subscribe with `flowc webhook subscribe --page-id {page_id}`."
        )
        return
    click.echo(f"Apps subscribed to page {page_id}:")
    for app in apps:
        click.echo(_app_line(app))


def _app_line(app: dict[str, Any]) -> str:
    fields = [str(f) for f in app.get("subscribed_fields") or ()]
    label = f"{app.get('name') or 'an app'} (app {app.get('id', '?')})"
    line = f"  {label}: {', '.join(fields) if fields else 'no fields'}"
    missing = [f for f in WEBHOOK_FIELDS if f not in fields]
    if fields and missing and "messages" in fields:
        line += f"\n    not subscribed to (the runtime uses them): {', '.join(missing)}"
    return line


# ----------------------------------------------------------------------------- send-test


@webhook_group.command("send-test")
@PAGE_ID_OPTION
@click.option("--recipient-psid", required=True, help="The person's id on this page (their PSID).")
@click.option("--text", required=True, help="The text to send.")
@_TOKEN_OPTION
@DATABASE_URL_OPTION
@SECRET_KEY_OPTION
@graph_options
def send_test_command(
    page_id: str,
    recipient_psid: str,
    text: str,
    token: str | None,
    database_url: str,
    secret_key: str | None,
    graph_api_url: str,
    app_secret: str | None,
) -> None:
    """Send a real text message through the Send API, as a reply (messaging_type RESPONSE):
    the person must have written to the page in the last 24 hours.

    \b
    Example:
      flowc webhook send-test --page-id 1234567890 --recipient-psid 2468… --text "Hello"
    """
    page_id = checked_page_id(page_id)
    psid = recipient_psid.strip()
    if not text.strip():
        raise click.UsageError("--text is empty")
    config = graph_config(graph_api_url, app_secret)
    token = page_token(page_id, token, database_url, secret_key)
    body = message_body(psid, {"text": text})
    with GraphSession(config) as graph:
        answer = graph.run(
            f"sending the test message to {psid}", lambda client: client.send(token, body)
        )
    click.echo(
        f"Meta accepted the message to {answer.get('recipient_id', psid)}: message id "
        f"{answer.get('message_id', '(none given)')}."
    )
