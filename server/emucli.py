"""`flowc emulator` (the fake Graph API, printing what the bot sends) and `flowc say` (a user).

Together with `flowc serve` they make a Messenger conversation on one machine with no Facebook
account: `make run` starts the server and the emulator, and `flowc say "…"` types as a user.
The DEMO_* values are the ones `make run` (scripts/run-local.sh) gives the server.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import httpx

from server import webhook_sender as wh
from server.emulator import DEFAULT_PAGE_ID, Emulator, create_emulator, describe

DEMO_APP_SECRET = "flowlang-demo-app-secret"
DEMO_PAGE_ID = DEFAULT_PAGE_ID
DEMO_PSID = "demo-user"
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8080/webhook"
DEFAULT_EMULATOR_URL = "http://127.0.0.1:8081"


def _printer(quiet: bool):
    def show(entry: dict[str, Any]) -> None:
        text = describe(entry)
        if text is not None and not (quiet and not text.startswith(("bot", "✗"))):
            click.echo(text)
            sys.stdout.flush()

    return show


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=int)
@click.option("--page-id", default=DEMO_PAGE_ID, show_default=True, help="What GET /me answers.")
@click.option(
    "--latency", default=0.0, show_default=True, type=float, help="Seconds before each answer."
)
@click.option(
    "--app-secret",
    default=None,
    help="Refuse calls whose appsecret_proof does not match this app secret, as Meta does "
    "with 'Require App Secret' switched on.",
)
@click.option("--quiet", is_flag=True, help="Print only the bot's messages and errors.")
def emulator_command(
    host: str, port: int, page_id: str, latency: float, app_secret: str | None, quiet: bool
) -> None:
    """Run a fake Graph API that prints every message the bot sends.

    Start the server with FLOW_GRAPH_API_URL=http://HOST:PORT/v25.0 and it sends here instead
    of to Facebook. Recorded calls: GET /_emulator/requests. Make calls fail like Meta's:
    POST /_emulator/fail {"code": 613, "times": 3}.
    """
    import uvicorn

    state = Emulator(
        page_id=page_id, latency=latency, app_secret=app_secret, on_record=_printer(quiet)
    )
    click.echo(
        f"Fake Graph API on http://{host}:{port} (FLOW_GRAPH_API_URL=http://{host}:{port}/v25.0)."
        " The bot's messages appear below; Ctrl-C stops it."
    )
    sys.stdout.flush()
    uvicorn.run(create_emulator(state), host=host, port=port, log_level="warning")


def _last_id(client: httpx.Client, emulator: str) -> int | None:
    try:
        return int(client.get(f"{emulator}/_emulator/stats").json()["last_id"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None  # no emulator there: the replies are not shown


def _show_replies(
    client: httpx.Client, emulator: str, psid: str, since: int, first: float, quiet_gap: float
) -> int:
    """Print what the bot sends `psid` until it is quiet for `quiet_gap` seconds."""
    shown, timeout = 0, first
    while True:
        try:
            found = client.get(
                f"{emulator}/_emulator/requests",
                params={"psid": psid, "since": since, "wait_for": 1, "timeout": timeout},
                timeout=timeout + 5,
            ).json()
        except (httpx.HTTPError, ValueError):
            return shown
        if not found["requests"]:
            return shown
        for entry in found["requests"]:
            since = max(since, entry["id"])
            text = describe(entry)
            if text is not None and not text.startswith("  (profile"):
                click.echo(text)
                shown += 1
        timeout = quiet_gap


@click.command("say")
@click.argument("text", required=False)
@click.option("--psid", default=DEMO_PSID, show_default=True, help="Who is typing.")
@click.option(
    "--url",
    default=DEFAULT_WEBHOOK_URL,
    show_default=True,
    envvar="FLOW_WEBHOOK_URL",
    help="The server's webhook.",
)
@click.option(
    "--app-secret",
    default=DEMO_APP_SECRET,
    envvar="FLOW_APP_SECRET",
    help="Signs the event (default: the secret `make run` uses).",
)
@click.option("--page-id", default=DEMO_PAGE_ID, show_default=True, envvar="FLOW_PAGE_ID")
@click.option("--postback", "postback", metavar="PAYLOAD", help="Tap a button sending PAYLOAD.")
@click.option("--quick", "quick", metavar="PAYLOAD", help="Tap a quick reply sending PAYLOAD.")
@click.option("--get-started", is_flag=True, help="Tap the Get Started button.")
@click.option("--referral", metavar="REF", help="Open the conversation from m.me/page?ref=REF.")
@click.option(
    "--emulator",
    default=DEFAULT_EMULATOR_URL,
    show_default=True,
    help="Where `flowc emulator` runs, to show the bot's replies here too.",
)
@click.option(
    "--wait",
    default=2.0,
    show_default=True,
    type=float,
    help="Show replies until the bot is quiet this long (0: do not wait for replies).",
)
def say_command(
    text: str | None,
    psid: str,
    url: str,
    app_secret: str,
    page_id: str,
    postback: str | None,
    quick: str | None,
    get_started: bool,
    referral: str | None,
    emulator: str,
    wait: float,
) -> None:
    """Send the bot one signed webhook event, as a Messenger user would.

    \b
    flowc say "I'm interested in a demo"
    flowc say --get-started
    flowc say --postback PRICING
    flowc say --quick ada@example.com "ada@example.com"
    """
    chosen = [postback is not None, quick is not None, get_started, referral is not None]
    if sum(chosen) > 1:
        raise click.UsageError("use only one of --postback, --quick, --get-started, --referral")
    if not any(chosen) and not text:
        raise click.UsageError('say what? e.g. flowc say "hello"')
    if postback is not None:
        item = wh.postback_event(postback, psid=psid, page_id=page_id, title=text)
    elif quick is not None:
        item = wh.quick_reply_event(quick, psid=psid, page_id=page_id, title=text)
    elif get_started:
        item = wh.get_started_event(psid=psid, page_id=page_id)
    elif referral is not None:
        item = wh.referral_event(referral, psid=psid, page_id=page_id)
    else:
        assert text is not None
        item = wh.text_event(text, psid=psid, page_id=page_id)
    emulator = emulator.rstrip("/")
    with httpx.Client(timeout=10) as client:
        since = _last_id(client, emulator) if wait > 0 else None
        started = time.monotonic()
        try:
            response = wh.post_event(url, app_secret, wh.envelope(item, page_id=page_id))
        except httpx.HTTPError as exc:
            click.echo(f"say: could not reach the server at {url} ({exc}). Is it running?")
            raise SystemExit(1) from None
        took = (time.monotonic() - started) * 1000
        if response.status_code != 200:
            click.echo(f"say: the server answered {response.status_code}: {response.text[:300]}")
            raise SystemExit(1)
        click.echo(f"you ({psid}) → {response.text} in {took:.0f} ms")
        if since is not None:
            _show_replies(client, emulator, psid, since, first=max(wait, 5.0), quiet_gap=wait)


#: The commands this module adds to `flowc`.
EMULATOR_COMMANDS: list[click.Command] = [emulator_command, say_command]
