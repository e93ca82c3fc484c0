"""Helpers of the operations command tests (`flowc page setup`, `flowc webhook …`): the fake
Graph API (server/emulator.py) served by uvicorn on loopback, `flowc` run as a user runs it,
and the calls Meta received.

The emulator runs with "Require App Secret" on and accepts one token, so a call without the
right appsecret_proof or token fails as it would at Meta."""

from __future__ import annotations

import hashlib
import hmac
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from server_kit import serving  # uvicorn on a loopback port, in a thread

from flowlang.cli import main
from server.emulator import DEFAULT_PAGE_ID, Emulator, create_emulator

PAGE = DEFAULT_PAGE_ID
TOKEN = "ops-page-token"
APP_SECRET = "ops-app-secret"
SECRET_KEY = "ops-secret-key"
#: The webhook fields the runtime subscribes to, as Meta receives them.
FIELDS = (
    "messages,messaging_postbacks,messaging_referrals,message_deliveries,message_reads,"
    "messaging_handovers,standby,messaging_policy_enforcement"
)

Env = dict[str, str | None]


@contextmanager
def emulator_server() -> Iterator[tuple[Emulator, str]]:
    """The fake Graph API on a loopback port; yields it and its base URL (no version)."""
    emulator = Emulator()
    with serving(create_emulator(emulator)) as url:
        yield emulator, url


def fresh(emulator: Emulator) -> Emulator:
    """The emulator emptied: it refuses calls without our appsecret_proof, and any token but
    TOKEN."""
    emulator.reset()
    emulator.app_secret = APP_SECRET
    emulator.valid_tokens = {TOKEN}
    return emulator


def environment(graph_url: str, tmp_path: Path) -> Env:
    """The variables `flowc` runs with (none of the machine's own FLOW_* leak in)."""
    return {
        "FLOW_GRAPH_API_URL": graph_url + "/v25.0",
        "FLOW_APP_SECRET": APP_SECRET,
        "FLOW_SECRET_KEY": SECRET_KEY,
        "FLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "FLOW_APP_ID": None,
        "FLOW_VERIFY_TOKEN": None,
        "FLOWC_DEBUG": "1",  # a bug raises instead of printing flowc's bug message
    }


def flowc(env: Env, *args: str) -> Result:
    """Run `flowc ARGS` with `env`."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def calls(meta: Emulator) -> list[tuple[str, str, dict[str, str], Any]]:
    """(method, path, query, JSON body) of every Graph API call since the last look, after
    checking that each carried the token in the header (never in the URL) and its proof."""
    proof = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    found = []
    for entry in meta.requests:
        query = dict(entry["query"])
        assert entry["auth"] == "header"
        assert query.pop("appsecret_proof") == proof
        found.append((entry["method"], entry["endpoint"], query, entry["json"]))
    meta.requests.clear()
    return found


def one_line_error(result: Result) -> str:
    """The error of a failed command: exit 1, one line on stderr, no traceback, no token."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert TOKEN not in result.output
    return lines[0]


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
