"""No lost updates: two workers process events for the same conversation at the same time.

Each event is load → modify (increment a counter, append to a list) → save, retried on
`ConcurrentUpdate`. Threads run on every store; separate processes on SQLite and PostgreSQL
(what two server workers would be). A pause between load and save makes the race happen on
every run, and the tests check that it did. Two deploys at once must both succeed too."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import dbkit
import pytest
from dbkit import pg_schema

from flowlang import ir
from flowlang.compiler import compile_source
from runtime import db
from runtime.state import ConversationState
from runtime.store import ConcurrentUpdate, InMemoryStore, SqlStore, Store

ROOT = Path(__file__).resolve().parents[2]
PG_URL = dbkit.PG_URL
needs_pg = pytest.mark.skipif(not PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")
SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]
PAGE, PSID = "page-1", "psid-1"
EVENTS = 100  # per worker
PAUSE = 0.0003  # seconds between load and save: long enough for the other worker to save


@contextmanager
def migrated_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database on `backend`; a PostgreSQL schema is dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'flowlang.db'}"
        db.upgrade(url)
        yield url
        return
    with pg_schema() as url:
        db.upgrade(url)
        yield url


@pytest.fixture(params=["memory", *SQL_BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every implementation of the store."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    with migrated_database(request.param, tmp_path) as url:
        sql = SqlStore.from_url(url)
        try:
            yield sql
        finally:
            sql.engine.dispose()


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated SQL database for the multi-process test."""
    with migrated_database(request.param, tmp_path) as url:
        yield url


def process_event(store: Store, worker: str, event: int, pause: Callable[[], None]) -> int:
    """Apply one event the way the runtime does; returns how many saves lost a race."""
    conflicts = 0
    while True:
        state = store.load(PAGE, PSID) or ConversationState(PAGE, PSID)
        state.variables["count"] = state.variables.get("count", 0) + 1
        state.variables.setdefault("seen", []).append(f"{worker}:{event}")
        pause()
        try:
            store.save(state)
            return conflicts
        except ConcurrentUpdate:
            conflicts += 1


def assert_nothing_lost(store: Store, workers: list[str], conflicts: int) -> None:
    """Every event of every worker is in the final state exactly once."""
    final = store.load(PAGE, PSID)
    assert final is not None
    total = EVENTS * len(workers)
    assert final.variables["count"] == total
    expected = sorted(f"{w}:{i}" for w in workers for i in range(EVENTS))
    assert sorted(final.variables["seen"]) == expected
    assert final.version == total  # exactly one successful save per event
    assert conflicts > 0, "the workers never raced: the test proved nothing"


def test_two_threads_lose_no_update(store: Store) -> None:
    start = threading.Barrier(2)

    def work(worker: str) -> int:
        start.wait()
        return sum(
            process_event(store, worker, i, lambda: time.sleep(PAUSE)) for i in range(EVENTS)
        )

    with ThreadPoolExecutor(2) as pool:
        conflicts = sum(pool.map(work, ["a", "b"]))
    assert_nothing_lost(store, ["a", "b"], conflicts)


def test_concurrent_first_saves_let_exactly_one_win(store: Store) -> None:
    for round_ in range(20):
        psid = f"new-{round_}"
        start = threading.Barrier(2)

        def first_save(worker: str, psid: str = psid, start: threading.Barrier = start) -> bool:
            start.wait()
            try:
                store.save(ConversationState(PAGE, psid, step=worker))
                return True
            except ConcurrentUpdate:
                return False

        with ThreadPoolExecutor(2) as pool:
            won = dict(zip(["a", "b"], pool.map(first_save, ["a", "b"]), strict=True))
        assert sorted(won.values()) == [False, True]
        stored = store.load(PAGE, psid)
        winner = next(w for w, ok in won.items() if ok)
        assert stored is not None and stored.step == winner and stored.version == 1


def test_concurrent_deploys_both_succeed_and_one_is_current(store: Store) -> None:
    programs = []
    for i in range(20):
        result = compile_source(
            f'flow greet\n  when user says "hi"\n  step start\n    say "v{i}"\n'
        )
        assert result.program is not None
        programs.append(result.program)
    hashes = [p.flows["greet"].content_hash for p in programs]
    for first, second in zip(programs[::2], programs[1::2], strict=True):
        start = threading.Barrier(2)

        def deploy(program: ir.FlowProgram, start: threading.Barrier = start) -> None:
            start.wait()
            store.deploy(program)

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(deploy, [first, second]))  # re-raises what a deploy raised
        current = store.current_versions()
        assert current["greet"] in (
            first.flows["greet"].content_hash,
            second.flows["greet"].content_hash,
        )
    assert all(store.flow_version("greet", h) is not None for h in hashes)


# Runs in a separate interpreter: the real situation of two server processes.
WORKER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
sys.path.insert(0, sys.argv[6])
sys.path.insert(0, str(Path(sys.argv[6]).parent))  # tests/, for dbkit
from runtime.store import SqlStore
from test_store_concurrency import process_event

url, worker, events, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = SqlStore.from_url(url)
store.load("warm", "up")  # connect before the start signal
Path(str(go) + "." + worker).touch()
while not go.exists():
    time.sleep(0.001)
conflicts = sum(
    process_event(store, worker, i, lambda: time.sleep(float(sys.argv[7])))
    for i in range(events)
)
store.engine.dispose()
print(json.dumps({"conflicts": conflicts}))
"""


def test_two_processes_lose_no_update(sql_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workers = ["a", "b"]

    def start(worker: str) -> subprocess.Popen[str]:
        args = [sql_url, worker, str(EVENTS), str(go)]
        args += [str(ROOT), str(Path(__file__).parent), str(PAUSE)]
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [start(w) for w in workers]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{go}.{w}").exists() for w in workers):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    conflicts = sum(json.loads(out)["conflicts"] for out, _ in outputs)
    store = SqlStore.from_url(sql_url)
    try:
        assert_nothing_lost(store, workers, conflicts)
    finally:
        store.engine.dispose()
