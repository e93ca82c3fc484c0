"""What the operations commands (`flowc page`, `flowc webhook`) share: the database and page
tokens, the server's Graph API client, and every failure as one line for the terminal.

Settings come from the same variables as `flowc serve`: FLOW_DATABASE_URL, FLOW_SECRET_KEY
(decrypts the stored page tokens), FLOW_APP_SECRET (the `appsecret_proof` of every Graph API
call) and FLOW_GRAPH_API_URL (default: Meta's versioned Graph API, as for the server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import httpx
from sqlalchemy import Engine

from runtime import db
from runtime.dbcli import open_engine
from server.crypto import CryptoError, TokenCipher
from server.graph import GraphClient, GraphError, create_http_client
from server.pages import PageRegistry
from server.settings import DEFAULT_GRAPH_API_URL

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

#: The webhook fields a page subscribes our app to: the events the runtime acts on
#: (server/messenger.py, server/processor.py), with Meta's subscription names (reference §4).
#: Left out on purpose: message_echoes (the runtime only records them, and each one doubles
#: the webhook traffic of a sent message), message_reactions, messaging_optins,
#: message_edits and messaging_account_linking (recorded as "ignored").
WEBHOOK_FIELDS: tuple[str, ...] = (
    "messages",  # texts, quick replies, attachments: what flows answer
    "messaging_postbacks",  # buttons, Get Started, menu items, ice breakers
    "messaging_referrals",  # m.me links and ads, for a person already in a conversation
    "message_deliveries",  # delivery receipts of what the bot sent
    "message_reads",  # read receipts
    "messaging_handovers",  # a person took the conversation over, or gave it back
    "standby",  # events while another app (the Page Inbox) owns the conversation
    "messaging_policy_enforcement",  # Meta's warnings and blocks: logged as errors
)

PAGE_ID_OPTION = click.option(
    "--page-id", required=True, help="The numeric id of the Facebook Page."
)
SECRET_KEY_OPTION = click.option(
    "--secret-key",
    envvar="FLOW_SECRET_KEY",
    default=None,
    show_default=False,
    help="The key that encrypts page tokens in the database. Default from FLOW_SECRET_KEY "
    "(preferred: an option shows in the process list).",
)


def checked_page_id(page_id: str) -> str:
    """The page id without spaces, or one line when it is not a number (it goes into the
    path of Graph API calls)."""
    page_id = page_id.strip()
    if not page_id.isascii() or not page_id.isdigit():
        raise click.ClickException(f"{page_id!r} is not a page id (a page id is a number)")
    return page_id


def graph_options(command: _F) -> _F:
    """Add --graph-api-url and --app-secret (from FLOW_GRAPH_API_URL and FLOW_APP_SECRET)."""
    command = click.option(
        "--app-secret",
        envvar="FLOW_APP_SECRET",
        default=None,
        show_default=False,
        help="Your Meta app's App Secret (signs every call with appsecret_proof). Default "
        "from FLOW_APP_SECRET (preferred: an option shows in the process list).",
    )(command)
    return click.option(
        "--graph-api-url",
        envvar="FLOW_GRAPH_API_URL",
        default=DEFAULT_GRAPH_API_URL,
        show_default=True,
        help="The Graph API base URL, with its version. Default from FLOW_GRAPH_API_URL.",
    )(command)


# ----------------------------------------------------------------------------- database


def database_engine(database_url: str, *, migrate: bool) -> AbstractContextManager[Engine]:
    """An engine on a database at the newest schema (created when `migrate`), with every
    database problem turned into one line for the person at the terminal."""
    return open_engine(
        database_url,
        migrate=migrate,
        hint="add a page with `flowc page add` or `flowc page setup`, or check "
        "--database-url / FLOW_DATABASE_URL",
    )


def token_cipher(secret_key: str | None) -> TokenCipher:
    """The cipher of page tokens, or one line saying FLOW_SECRET_KEY is missing or unusable."""
    if not secret_key:
        raise click.ClickException(
            "FLOW_SECRET_KEY is not set: it encrypts page tokens in the database; set it to "
            "the same long random string the server uses"
        )
    try:
        return TokenCipher(secret_key)
    except CryptoError as e:
        raise click.ClickException(str(e)) from None


def stored_token(registry: PageRegistry, page_id: str) -> str | None:
    """The page's token from the database (None when the page is not stored)."""
    try:
        return registry.token(page_id)
    except CryptoError as e:
        raise click.ClickException(str(e)) from None


def page_token(page_id: str, token: str | None, database_url: str, secret_key: str | None) -> str:
    """`token` when given, else the page's token from the database (decrypted)."""
    if token is not None:
        token = token.strip()
        if not token:
            raise click.ClickException("--token is empty")
        return token
    cipher = token_cipher(secret_key)
    with database_engine(database_url, migrate=False) as engine:
        found = stored_token(PageRegistry(engine, cipher), page_id)
    if found is None:
        raise click.ClickException(
            f"page {page_id} is not in {db.display_url(database_url)}: connect it with "
            "`flowc page setup --page-id … --token …`, or give its token with --token"
        )
    return found


# ----------------------------------------------------------------------------- Graph API


@dataclass(frozen=True)
class GraphConfig:
    """Where the Graph API is and the app secret that signs the calls."""

    base_url: str
    app_secret: str

    def __repr__(self) -> str:  # the secret never reaches a log line through a repr
        return f"GraphConfig(base_url={self.base_url!r})"


def graph_config(graph_api_url: str, app_secret: str | None) -> GraphConfig:
    """The checked Graph API settings, or one line saying what to set."""
    if not app_secret or not app_secret.strip():
        raise click.ClickException(
            "FLOW_APP_SECRET is not set: set it to your Meta app's App Secret, from App "
            "Dashboard > App settings > Basic (every Graph API call is signed with it)"
        )
    url = graph_api_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.ClickException(
            f"FLOW_GRAPH_API_URL must be an http(s) URL, not {url!r} "
            f"(expected e.g. {DEFAULT_GRAPH_API_URL})"
        )
    return GraphConfig(url, app_secret.strip())


class GraphCallFailed(click.ClickException):
    """A Graph API call failed; the message is one line, `error` is Meta's answer."""

    def __init__(self, message: str, error: GraphError) -> None:
        super().__init__(message)
        self.error = error


_HEADLINES = {
    "bad_token": "Meta refused the access token",
    "rate_limit": "Meta's rate limit was reached",
    "unreachable": "Meta cannot deliver to this person",
    "window_closed": "outside the 24-hour messaging window",
    "transient": "Meta had a temporary problem",
    "permanent": "Meta refused the request",
}
_ADVICE = {
    "bad_token": "get a new Page access token and store it with "
    "`flowc page setup --page-id … --token …`",
    "unreachable": "the person blocked the page, deleted their account or cannot receive "
    "messages right now",
    "window_closed": "the page may answer only within 24 hours of the person's last message",
    "transient": "try again in a moment",
}


def describe_graph_error(doing: str, error: GraphError, base_url: str) -> str:
    """One line for a failed call: what was being done, what went wrong (Meta's code and
    own message), and what to do about it."""
    if error.code is None and error.http_status is None:
        # No answer at all: connection refused, DNS, TLS, timeout.
        # GraphClient keeps only the exception's class; the transport's own words (kept as
        # the context) say more, e.g. that the connection was refused.
        cause = error.__context__
        detail = " ".join(str(cause).split()) if cause is not None else ""
        what = (
            f"no answer from the Graph API at {base_url} ({type(cause).__name__}: {detail})"
            if cause is not None and detail
            else f"{error.message} (Graph API at {base_url})"
        )
        line = f"{doing} failed: {what}; check FLOW_GRAPH_API_URL and the network"
    elif error.code is None:
        line = (
            f"{doing} failed: the Graph API at {base_url} answered HTTP {error.http_status} "
            "without a Graph API error"
            + ("; try again in a moment" if error.kind == "transient" else "")
        )
    else:
        advice = _ADVICE.get(error.kind)
        if error.kind == "rate_limit":
            wait = (
                f"about {max(1, round(error.retry_after / 60))} minute(s)"
                if error.retry_after
                else "a few minutes"
            )
            advice = f"wait {wait} before trying again"
        line = f"{doing} failed: {_HEADLINES[error.kind]} (error {error.code_text}): " + (
            f"{error.message.rstrip('. ')}; {advice}" if advice else error.message
        )
    return " ".join(line.split())  # one line, whatever Meta's message holds


class GraphSession:
    """The server's Graph API client (`server.graph.GraphClient` on `create_http_client`) for
    one command, called synchronously: each call runs on the session's own event loop.

        with GraphSession(config) as graph:
            me = graph.call("checking the token", "GET", "/me", token, params={"fields": "id"})
    """

    def __init__(
        self, config: GraphConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._runner: asyncio.Runner | None = None
        self._http: httpx.AsyncClient | None = None
        self._client: GraphClient | None = None

    def __enter__(self) -> GraphSession:
        self._runner = asyncio.Runner()
        self._http = self._runner.run(self._open())
        self._client = GraphClient(
            self._http, base_url=self.config.base_url, app_secret=self.config.app_secret
        )
        return self

    async def _open(self) -> httpx.AsyncClient:
        # The pooled client must be created inside the loop that uses it.
        return create_http_client(self._transport)

    def __exit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        try:
            if self._http is not None:
                self._runner.run(self._http.aclose())
        finally:
            self._runner.close()

    def run(self, doing: str, work: Callable[[GraphClient], Awaitable[_T]]) -> _T:
        """`await work(client)`; a `GraphError` becomes `GraphCallFailed` (one line saying
        that `doing` failed and why)."""
        assert self._runner is not None and self._client is not None, "use `with`"
        client = self._client
        try:
            return self._runner.run(_awaited(work(client)))
        except GraphError as e:
            raise GraphCallFailed(describe_graph_error(doing, e, self.config.base_url), e) from None

    def call(
        self,
        doing: str,
        method: str,
        path: str,
        token: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One Graph API call (see `GraphClient.request`), failing as `run` does."""
        return self.run(
            doing, lambda client: client.request(method, path, token, params=params, json=json)
        )


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable
