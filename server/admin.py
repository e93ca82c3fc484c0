"""The admin endpoints: `POST /admin/reload` and `DELETE /admin/users/{page_id}/{psid}`.

Both need `Authorization: Bearer FLOW_ADMIN_TOKEN` (403 while no admin token is configured,
401 with a missing or wrong one, compared in constant time).

`POST /admin/reload` recompiles FLOWS and deploys the new versions (400 with the diagnostics,
and the running versions kept, when they do not compile).

`DELETE /admin/users/{page_id}/{psid}` erases everything stored about one person. The erasure is
`runtime.forget.forget_user` (one transaction, in a worker thread: SQLAlchemy is
synchronous), then what the server holds in memory about the person is dropped: the
processor's cached profile and the messages the sender has already loaded, through
`Processor.forget(page_id, psid)` and `Sender.forget(page_id, psid)`.

Answers: 200 `{"page_id", "psid", "erased": {table: rows}}`; 404 with the same shape (all
counts 0) when nothing was stored about the person: a wrong id is worth noticing, and the
person's data is gone either way, so a repeated request is harmless; 503 while starting, or
when the database fails (then nothing was erased: the erasure is one transaction)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING

from sqlalchemy import Engine, exc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runtime.forget import ForgetReport, forget_user
from server.inbox import write_lock

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger(__name__)


def server_of(request: Request) -> Server:
    """The `Server` behind the app that is handling `request`."""
    return request.app.state.server


def _bearer_ok(request: Request, expected: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))


def _refusal(request: Request) -> Response | None:
    """The answer to a request without the admin token, or None when it may go ahead."""
    token = server_of(request).settings.admin_token
    if token is None:
        return JSONResponse(
            {"error": "admin endpoints are off: set FLOW_ADMIN_TOKEN to use them"},
            status_code=403,
        )
    if not _bearer_ok(request, token.get_secret_value()):
        return JSONResponse(
            {"error": "missing or wrong token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


def _forget(engine: Engine, page_id: str, psid: str) -> ForgetReport:
    # On SQLite this process's writers queue on one lock instead of "database is locked".
    with write_lock(engine):
        return forget_user(engine, page_id, psid)


async def forget_user_endpoint(request: Request) -> Response:
    """Erase everything stored about person `psid` of page `page_id` (module docstring)."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    server = server_of(request)
    if server.engine is None or server.processor is None:
        return JSONResponse({"error": "the server is starting"}, status_code=503)
    page_id = request.path_params["page_id"]
    psid = request.path_params["psid"]
    try:
        report = await asyncio.to_thread(_forget, server.engine, page_id, psid)
    except exc.SQLAlchemyError as e:
        # One transaction: nothing was erased. Worth asking again once the database is back.
        log.error("erasing a user of page %s failed: %s", page_id, type(e).__name__)
        return JSONResponse(
            {"error": "the database could not erase the user; nothing was erased, try again"},
            status_code=503,
        )
    # After the rows: a turn running meanwhile may have cached the profile again.
    server.processor.forget(page_id, psid)
    if server.sender is not None:
        server.sender.forget(page_id, psid)
    body = {"page_id": page_id, "psid": psid, "erased": report.as_dict()}
    if report.total == 0:
        return JSONResponse({"error": "nothing is stored about this user", **body}, 404)
    # The PSID stays out of the log: the log must not keep what was just erased.
    log.info("erased a user of page %s on request: %d rows", page_id, report.total)
    return JSONResponse(body)


async def admin_reload(request: Request) -> Response:
    """Recompile FLOWS and deploy them; 400 with the diagnostics when they do not compile."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    server = server_of(request)
    if server.store is None:
        return JSONResponse({"error": "the server is starting"}, status_code=503)
    outcome = await server.reload()
    if not outcome.ok:
        return JSONResponse(
            {
                "error": "the flows do not compile; the running versions stay",
                "diagnostics": outcome.diagnostics,
            },
            status_code=400,
        )
    return JSONResponse(
        {"deployed": outcome.deployed, "flows": outcome.flows, "diagnostics": outcome.diagnostics}
    )
