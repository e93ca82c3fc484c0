"""Secrets never reach a log line: the page tokens, the app secret, the verify token, the secret
key, the admin token, and the appsecret_proof values computed from them (a proof and the token
it was made from are as good as the token for the Graph API).

The real server (uvicorn on loopback, its Graph API the emulator on another loopback port) goes
through what an operator's day brings: the webhook handshake, a conversation, the Graph API
unreachable, a webhook with a bad signature, Meta refusing the page token (error 190), a new
token added with `flowc page add`, and a reload. Every logger runs at DEBUG (httpx logs each
request's URL, query string included), and every record is searched. Then the same is done with
`flowc serve --log-level debug` as a process, searching everything it prints."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from live_kit import (
    EMAIL_Q,
    FAST_SENDER,
    GREAT,
    NAME_Q,
    ROOT,
    Graph,
    free_port,
    server_process,
    texts,
)
from server_kit import serving

from flowlang.load import compile_paths
from server import redact
from server import webhook_sender as wh
from server.app import create_app
from server.emulator import Emulator, create_emulator
from server.pagecli import page_group
from server.sender import RetryPolicy
from server.settings import load_settings

PAGE_ID = "1000000000000001"
PSID = "6100"
# Random, so that a match can only be the secret itself.
APP_SECRET = f"appsecret-{uuid.uuid4().hex}"
VERIFY_TOKEN = f"verify-{uuid.uuid4().hex}"
SECRET_KEY = f"secretkey-{uuid.uuid4().hex}"
ADMIN_TOKEN = f"admin-{uuid.uuid4().hex}"
OLD_TOKEN = f"EAAold{uuid.uuid4().hex}"
NEW_TOKEN = f"EAAnew{uuid.uuid4().hex}"


def proof(token: str) -> str:
    return hmac.new(APP_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


SECRETS = {
    "app secret": APP_SECRET,
    "verify token": VERIFY_TOKEN,
    "secret key": SECRET_KEY,
    "admin token": ADMIN_TOKEN,
    "old page token": OLD_TOKEN,
    "new page token": NEW_TOKEN,
    "appsecret_proof of the old token": proof(OLD_TOKEN),
    "appsecret_proof of the new token": proof(NEW_TOKEN),
}


def env(db_url: str, graph_url: str) -> dict[str, str]:
    return {
        "FLOW_APP_SECRET": APP_SECRET,
        "FLOW_VERIFY_TOKEN": VERIFY_TOKEN,
        "FLOW_SECRET_KEY": SECRET_KEY,
        "FLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLOW_PAGE_ID": PAGE_ID,
        "FLOW_PAGE_TOKEN": OLD_TOKEN,
        "FLOW_DATABASE_URL": db_url,
        "FLOW_GRAPH_API_URL": f"{graph_url}/v25.0",
    }


def leaks(text: str) -> list[str]:
    """The names of the secrets that appear in `text`."""
    return [name for name, value in SECRETS.items() if value in text]


# ----------------------------------------------------------------------------- HTTP, unlogged
# The test's own requests go through urllib, which logs nothing: whatever is in the log came
# from the server (the verification URL carries the verify token, on purpose).


def http(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def verify(url: str) -> None:
    query = f"hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    assert http("GET", f"{url}/webhook?{query}") == (200, "1158201444")


def say(url: str, text: str, *, secret: str = APP_SECRET) -> int:
    raw = wh.encode(wh.envelope(wh.text_event(text, psid=PSID, page_id=PAGE_ID), page_id=PAGE_ID))
    return http("POST", f"{url}/webhook", raw, **wh.signed_headers(raw, secret))[0]


def wait_for(found: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def program() -> Any:
    result = compile_paths([str(ROOT / "flows")])
    assert result.program is not None
    return result.program


# ----------------------------------------------------------------------------- in process


def test_no_secret_in_any_log_record(
    program: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger that propagates
    db_url = f"sqlite:///{tmp_path / 'secrets.db'}"
    # The Graph API's port, reserved but not listening yet: the first sends fail to connect.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    graph_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    outputs: list[str] = []  # what the commands print and the server answers

    def logged(words: str) -> Callable[[], bool]:
        return lambda: any(words in r.getMessage() for r in caplog.records)

    app = create_app(
        load_settings(env(db_url, graph_url)),
        flows=[str(ROOT / "flows")],
        program=program,
        # Retried for as long as the test takes to start the Graph API.
        sender_options={**FAST_SENDER, "retry": RetryPolicy(0.05, 0.4, max_attempts=1000)},
    )
    with serving(app) as url, contextlib.closing(sock):
        verify(url)
        # The Graph API cannot be reached: the replies wait and are retried.
        assert say(url, "I'm interested in a demo") == 200
        wait_for(logged("; retry 1 in"), "a failed connection")
        emulator = Emulator(page_id=PAGE_ID, app_secret=APP_SECRET)
        with serving(create_emulator(emulator), sock):
            graph = Graph(graph_url)
            assert texts(graph.sent(PSID, 2)) == [GREAT, NAME_Q]
            # A webhook signed with another secret.
            assert say(url, "Ada", secret="not-the-app-secret") == 403
            # Meta refuses the page token: the page is held.
            graph.config(valid_tokens=[NEW_TOKEN])
            assert say(url, "Ada") == 200
            wait_for(logged("Meta refused its token"), "the refused token")
            # A new token, from the command line.
            added = CliRunner().invoke(
                page_group,
                ["add", "--page-id", PAGE_ID, "--token", NEW_TOKEN],
                env={"FLOW_DATABASE_URL": db_url, "FLOW_SECRET_KEY": SECRET_KEY},
            )
            assert added.exit_code == 0, added.output
            outputs.append(added.output)
            assert texts(graph.sent(PSID, 4)) == [GREAT, NAME_Q, "Nice to meet you, Ada!", EMAIL_Q]
            # A reload.
            status, answer = http(
                "POST", f"{url}/admin/reload", b"", Authorization=f"Bearer {ADMIN_TOKEN}"
            )
            assert status == 200, answer
            outputs.append(answer)
            outputs.append(http("GET", f"{url}/metrics")[1])
            graph.http.close()

    # Sanity: the log is the server's, at DEBUG, and it saw the Graph API's URLs.
    names = {r.name for r in caplog.records}
    assert {"server.sender", "server.webhook", "httpx"} <= names, names
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    found = []
    for record in caplog.records:
        if record.name.startswith("server.emulator"):
            continue  # Meta's side of the wire
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        if leaks(text):
            found.append(f"{record.name}: {leaks(text)}: {text[:300]}")
    found += [f"output: {leaks(text)}" for text in outputs if leaks(text)]
    assert found == [], "\n".join(found)


# ----------------------------------------------------------------------------- flowc serve


def test_flowc_serve_prints_no_secret_at_debug_level(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'serve.db'}"
    emulator = Emulator(page_id=PAGE_ID, app_secret=APP_SECRET)
    with serving(create_emulator(emulator)) as graph_url:
        graph = Graph(graph_url)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        with server_process(env(db_url, graph_url), port, log_level="debug", log=log):
            verify(url)
            assert say(url, "I'm interested in a demo") == 200
            assert texts(graph.sent(PSID, 2)) == [GREAT, NAME_Q]
            assert say(url, "Ada", secret="not-the-app-secret") == 403
            status, _ = http(
                "POST", f"{url}/admin/reload", b"", Authorization=f"Bearer {ADMIN_TOKEN}"
            )
            assert status == 200
        graph.http.close()
    printed = log.read_text(encoding="utf-8", errors="replace")
    assert "DEBUG" in printed and "webhook refused" in printed  # it did log, at DEBUG
    found = [line for line in printed.splitlines() if leaks(line)]
    assert found == [], "\n".join(f"{leaks(line)}: {line[:300]}" for line in found)


def test_uvicorn_access_log_lines_hide_the_verify_token(caplog: pytest.LogCaptureFixture) -> None:
    """`flowc serve --access-log` logs each request line, query included: the handshake's
    verify token is redacted, and the other arguments keep their types."""
    redact.install()
    logger = logging.getLogger("uvicorn.access")
    query = "hub.mode=subscribe&hub.verify_token=s3cret-verify&hub.challenge=42"
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/webhook?{query}", "1.1", 200
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert "s3cret-verify" not in line
    assert line.endswith(
        '"GET /webhook?hub.mode=subscribe&hub.verify_token=[redacted]'
        '&hub.challenge=42 HTTP/1.1" 200'
    )
