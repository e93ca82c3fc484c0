"""`DELETE /admin/users/{page_id}/{psid}`: erase everything stored about one person.

Authenticated like `POST /admin/reload` (`Authorization: Bearer FLOW_ADMIN_TOKEN`; 403 while
no admin token is configured, 401 with a missing or wrong one). The erasure is
`runtime.forget.forget_user` (one transaction, in a worker thread: SQLAlchemy is
synchronous), then what the server holds in memory about the person is dropped: the
processor's cached profile and the messages the sender has already loaded, through
`Processor.forget(page_id, psid)` and `Sender.forget(page_id, psid)` when they exist.

Answers: 200 `{"page_id", "psid", "erased": {table: rows}}`; 404 with the same shape (all
counts 0) when nothing was stored about the person: a wrong id is worth noticing, and the
person's data is gone either way, so a repeated request is harmless; 503 while starting, or
when the database fails (then nothing was erased: the erasure is one transaction)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine, exc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runtime.forget import ForgetReport, forget_user
from server.inbox import write_lock

log = logging.getLogger(__name__)


def _refusal(request: Request) -> Response | None:
    """The answer to a request without the admin token (as `admin_reload` gives it), or
    None when it may go ahead."""
    # server.app imports this module for its routes: imported here, not at the top.
    from server.app import _bearer_ok, _server

    token = _server(request).settings.admin_token
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
    from server.app import _server

    server = _server(request)
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
