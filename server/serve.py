"""`flowc serve FLOWS`: run the Messenger server (uvicorn with uvloop and httptools).

Everything that can be checked before the server starts is checked here, so that a bad
setting, a flow that does not compile, an unreachable database or unreadable stored tokens
stop `flowc serve` with one clear line instead of a traceback from inside uvicorn."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from server.settings import Settings

# The server stack (Starlette, httpx, uvicorn, prometheus) is imported inside the command:
# every `flowc` run loads this module, and `flowc check` must stay quick.


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def preflight(settings: Settings) -> None:
    """Migrate the database and check that stored page tokens can be decrypted with
    FLOW_SECRET_KEY. Raises `StartupError` with one line for the first problem."""
    from runtime import db
    from server.app import StartupError
    from server.crypto import CryptoError, TokenCipher
    from server.pages import PageRegistry

    try:
        db.upgrade(settings.database_url)
    except db.DbError as e:
        raise StartupError(str(e)) from None
    engine = db.create_engine_for(settings.database_url)
    try:
        PageRegistry(engine, TokenCipher(settings.secret_key.get_secret_value())).credentials()
    except CryptoError as e:
        raise StartupError(str(e)) from None
    except Exception as e:
        raise StartupError(f"cannot read the pages: {e}") from None
    finally:
        engine.dispose()


@click.command("serve")
@click.argument("flows", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, type=int, show_default=True, help="Port to listen on.")
@click.option(
    "--database-url",
    default=None,
    help="SQLite file or PostgreSQL URL (default: FLOW_DATABASE_URL, else ./flowlang.db).",
)
@click.option(
    "--reload",
    "watch",
    is_flag=True,
    help="Watch FLOWS and load changed flows into the running server (the server itself "
    "keeps running; flows that do not compile are refused).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--access-log", is_flag=True, help="Log every HTTP request (costs throughput).")
def serve_command(
    flows: tuple[str, ...],
    host: str,
    port: int,
    database_url: str | None,
    watch: bool,
    log_level: str,
    access_log: bool,
) -> None:
    """Run the Messenger server for FLOWS (.flow files or folders).

    Settings come from FLOW_* environment variables: FLOW_APP_SECRET, FLOW_VERIFY_TOKEN,
    FLOW_SECRET_KEY (required); FLOW_PAGE_ID and FLOW_PAGE_TOKEN (one page; add more with
    `flowc page add`), FLOW_DATABASE_URL, FLOW_GRAPH_API_URL, FLOW_ADMIN_TOKEN (enables
    POST /admin/reload), FLOW_APP_ID, FLOW_MAX_BODY_BYTES; for several instances on one
    PostgreSQL database (docs/deploy.md): FLOW_RECLAIM_AFTER, FLOW_OUTBOX_LEASE_SECONDS,
    FLOW_PAGE_SEND_RATE.

    \b
    Endpoints: /webhook (point your Meta app here), /healthz, /readyz, /metrics,
    POST /admin/reload.
    """
    import uvicorn

    from flowlang.render import render
    from runtime import db
    from server import redact
    from server.app import StartupError, compile_flows, create_app
    from server.settings import SettingsError, load_settings

    overrides = {"database_url": database_url} if database_url else {}
    try:
        settings = load_settings(**overrides)
    except SettingsError as e:
        raise _fail(str(e)) from None
    try:
        result = compile_flows(flows)
    except StartupError as e:
        raise _fail(str(e)) from None
    if result.diagnostics:
        click.echo(render(result.diagnostics, result.sources, "short"), err=True)
    if result.program is None:
        raise _fail("the flows have errors; fix them first (flowc check)")
    try:
        preflight(settings)
    except StartupError as e:
        raise _fail(str(e)) from None

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact.install()  # (--access-log would print the handshake's verify token)
    app = create_app(settings, flows=list(flows), program=result.program, watch=watch)
    click.echo(
        f"Serving {len(result.program.flows)} flows on http://{host}:{port} "
        f"(webhook: /webhook, database: {db.display_url(settings.database_url)})",
        err=True,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
    )
