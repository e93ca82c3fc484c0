"""Fixtures of the server tests (the helpers they use live in server_kit.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_kit import Env, emulator_server, environment, fresh
from outbox_kit import pg_migrated
from server_kit import (
    BOT_FLOW,
    PG_URL,
    Bot,
    FakeGraph,
    RunningApp,
    make_settings,
)

from runtime import db
from server.app import create_app
from server.emulator import Emulator
from server.settings import Settings


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database (for tests that are about HTTP, not storage)."""
    url = f"sqlite:///{tmp_path / 'server.db'}"
    db.upgrade(url)
    return url


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    """A folder with the test bot."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "bot.flow").write_text(BOT_FLOW, encoding="utf-8")
    return folder


@pytest.fixture
def graph() -> FakeGraph:
    """A fresh fake Graph API, with a profile for user "u1"."""
    return FakeGraph(profiles={"u1": {"first_name": "Ada", "last_name": "Lovelace"}})


@pytest.fixture
def start_bot(flows_dir: Path, graph: FakeGraph) -> Iterator[Callable[..., Bot]]:
    """Start the app on a database URL (`start_bot(url, **create_app options)`); every app
    started is stopped at the end of the test."""
    bots: list[Bot] = []

    def start(url: str, *, settings: Settings | None = None, **options: Any) -> Bot:
        app = create_app(
            settings or make_settings(url),
            flows=[flows_dir],
            transport=options.pop("transport", None) or graph.transport(),
            freeze_gc=options.pop("freeze_gc", False),
            **options,
        )
        bot = Bot(RunningApp(app), url, graph)
        bots.append(bot)
        return bot

    yield start
    for bot in reversed(bots):
        bot.stop()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One migrated PostgreSQL schema per test module (outbox and page tests empty it)."""
    if not PG_URL:
        pytest.skip("FLOW_TEST_DATABASE_URL is not set")
    with pg_migrated() as url:
        yield url


# The fake Graph API over loopback for the operations commands (test_page_setup.py,
# test_webhook_tools.py): one per module, emptied for each test.


@pytest.fixture(scope="module")
def meta_server() -> Iterator[tuple[Emulator, str]]:
    with emulator_server() as served:
        yield served


@pytest.fixture
def meta(meta_server: tuple[Emulator, str]) -> Emulator:
    return fresh(meta_server[0])


@pytest.fixture
def env(meta_server: tuple[Emulator, str], tmp_path: Path) -> Env:
    return environment(meta_server[1], tmp_path)
