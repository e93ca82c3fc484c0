"""Harness of the fault-injection tests: several `flowc serve` processes on one PostgreSQL
schema, the fake Graph API in a process of its own, faults on demand, and a webhook load
driver that redelivers like Meta.

- `Cluster` starts the emulator (server/emulator.py under uvicorn) and N `flowc serve flows/`
  processes (run as `python -m flowlang` with the test's interpreter, the venv's) on free
  loopback ports, all on one database URL, and waits for their /readyz.
  `kill(i)` SIGKILLs one; `restart(i)` starts it again on the same port. Each process writes
  its output to a file in the work folder (restarts append), and `tails()` shows the end of
  each. `running_cluster()` prints those tails when the block fails.
- `WebhookDriver` POSTs signed webhook bodies to the instances with bounded concurrency and an
  optional pace; a POST that gets no 200 (refused connection of a killed instance, a reset,
  a 5xx while the database restarts) is delivered again to another instance, at once the
  first time (a load balancer's "next upstream"), then after a growing pause, as Meta
  redelivers an unacknowledged event. It can also redeliver a share of the
  acknowledged events (Meta delivers at least once), so the server's de-duplication is
  exercised on purpose, not only by chance.
- `restart_postgres()` restarts the machine's PostgreSQL cluster and waits until it answers;
  `ensure_postgres()` starts it if it is down (call it in a `finally`).

Only Meta is fake: the servers, PostgreSQL and HTTP are real."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import dbkit
import httpx
from sqlalchemy import Engine, func, make_url, select

from runtime import db, tables
from server import webhook_sender as wh
from server.emulator import DEFAULT_PAGE_ID

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "flows"

APP_SECRET = "fault-app-secret"
VERIFY_TOKEN = "fault-verify-token"
SECRET_KEY = "fault-secret-key-that-is-long-enough"
PAGE_ID = DEFAULT_PAGE_ID  # the page the emulator answers for
PAGE_TOKEN = "fault-page-token"

#: The sender's line for each retried send (noise here: a tenth of the sends fail).
_RETRY_LINE = re.compile(r"; retry \d+ in [\d.]+ s$")
_DIGITS = re.compile(r"\d+")

#: Seconds a process gets to answer /readyz after it was started.
READY_TIMEOUT = 60.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' when there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ----------------------------------------------------------------------------- processes


@dataclass
class Process:
    """One child process on a fixed loopback port, restartable, its output in `log`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log: Path
    ready_path: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the process (do not wait for it)."""
        assert not self.alive, f"{self.name} is already running"
        self._close_log()
        self.starts += 1
        self._out = self.log.open("ab")
        stamp = time.strftime("%H:%M:%S")
        self._out.write(f"\n===== {stamp} {self.name}: start #{self.starts} =====\n".encode())
        self._out.flush()
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until GET `ready_path` answers 200; fails with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.proc.returncode} while starting:\n"
                        + tail(self.log)
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name} was not ready after {timeout:.0f} s:\n" + tail(self.log)
                    )
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or container dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)
        self._close_log()

    def _close_log(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _clean_environ() -> dict[str, str]:
    """The test's environment without FLOW_* settings (the children get theirs explicitly)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOW_")}


class Cluster:
    """The emulator and `size` server instances sharing `database_url` (see the module
    docstring). Use `running_cluster()`."""

    def __init__(
        self,
        work: Path,
        database_url: str,
        *,
        size: int,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.work = work
        self.database_url = database_url
        base = {**_clean_environ(), "PYTHONUNBUFFERED": "1"}
        emulator_argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "server.emulator:create_emulator",
            "--factory",
            "--host",
            "127.0.0.1",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        port = free_port()
        self.emulator = Process(
            "emulator",
            [*emulator_argv, "--port", str(port)],
            base,
            port,
            work / "emulator.log",
            "/_emulator/stats",
        )
        env = {
            **base,
            "FLOW_APP_SECRET": APP_SECRET,
            "FLOW_VERIFY_TOKEN": VERIFY_TOKEN,
            "FLOW_SECRET_KEY": SECRET_KEY,
            "FLOW_PAGE_ID": PAGE_ID,
            "FLOW_PAGE_TOKEN": PAGE_TOKEN,
            "FLOW_DATABASE_URL": database_url,
            "FLOW_GRAPH_API_URL": f"{self.emulator.url}/v25.0",
            **(settings or {}),
        }
        self.instances: list[Process] = []
        for i in range(size):
            port = free_port()
            argv = [sys.executable, "-m", "flowlang", "serve", str(FLOWS), "--port", str(port)]
            argv += ["--log-level", "warning"]
            self.instances.append(
                Process(f"instance {i}", argv, env, port, work / f"instance-{i}.log", "/readyz")
            )
        self.kills = 0
        self._engine: Engine | None = None
        self._control = httpx.Client(base_url=self.emulator.url, timeout=30.0)
        # The load's sampler and the quiescence wait ask from different threads.
        self._control_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Migrate the database, start the emulator, then every instance at once (as a
        deployment starts them), and wait until all are ready."""
        db.upgrade(self.database_url)
        self._engine = db.create_engine_for(self.database_url, pool_pre_ping=True)
        for process in [self.emulator, *self.instances]:
            process.spawn()
        for process in [self.emulator, *self.instances]:
            process.wait_ready()

    def kill(self, i: int) -> None:
        """SIGKILL instance `i`."""
        self.instances[i].kill()
        self.kills += 1

    def restart(self, i: int) -> None:
        """Start instance `i` again on its port and wait until it is ready."""
        self.instances[i].spawn()
        self.instances[i].wait_ready()

    def close(self) -> None:
        """Kill everything (the database schema can then be dropped) and release handles."""
        for process in [*self.instances, self.emulator]:
            process.kill()
        self._control.close()
        if self._engine is not None:
            self._engine.dispose()

    @property
    def webhook_urls(self) -> list[str]:
        """Every instance's webhook, dead or alive (a load balancer's view of them)."""
        return [f"{instance.url}/webhook" for instance in self.instances]

    def tails(self, lines: int = 25) -> str:
        """Per process: its warnings and errors counted by kind, then the end of its output
        without the sender's retry lines (the injected failures make hundreds of them)."""
        parts = []
        for process in [*self.instances, self.emulator]:
            try:
                text = process.log.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                text = ""
            kinds = Counter(
                _DIGITS.sub("N", line.split(" ", 2)[-1])[:90]
                for line in text.splitlines()
                if " WARNING " in line or " ERROR " in line
            )
            kept = [line for line in text.splitlines() if not _RETRY_LINE.search(line)]
            parts.append(f"----- {process.name} ({process.log})")
            parts += [f"  {n:5d} × {kind}" for kind, n in kinds.most_common(10)]
            parts.append(f"  last {lines} lines (retry lines left out):")
            parts += ["  " + line[:400] for line in kept[-lines:]]
        return "\n".join(parts)

    # ------------------------------------------------------------------ the fake Graph API

    def fail(self, **rule: Any) -> None:
        """Add an emulator FailRule (`code`, `rate`, `path`, …)."""
        with self._control_lock:
            response = self._control.post("/_emulator/fail", json=rule)
        assert response.status_code == 200, response.text

    def graph_requests(self, endpoint: str | None = "/me/messages") -> list[dict[str, Any]]:
        """Every recorded Graph API call (Send API calls by default), in arrival order."""
        params = {"endpoint": endpoint} if endpoint else {}
        with self._control_lock:
            response = self._control.get("/_emulator/requests", params=params)
        response.raise_for_status()
        return response.json()["requests"]

    def graph_stats(self) -> dict[str, Any]:
        """The emulator's counters by endpoint and status."""
        with self._control_lock:
            return self._control.get("/_emulator/stats").json()

    # ------------------------------------------------------------------ the database

    @property
    def engine(self) -> Engine:
        """An engine on the shared database (pre-pinged: it survives a PostgreSQL restart)."""
        assert self._engine is not None, "start() first"
        return self._engine

    def backlog(self) -> Backlog:
        """Stored events by status, and outbound messages still pending."""
        events, log = tables.webhook_events, tables.message_log
        with self.engine.connect() as conn:
            by_status = conn.execute(
                select(events.c.status, func.count()).group_by(events.c.status)
            ).all()
            outbound = conn.execute(
                select(func.count())
                .select_from(log)
                .where(log.c.direction == "outbound", log.c.status == "pending")
            ).scalar_one()
        return Backlog({status: count for status, count in by_status}, outbound)

    def wait_quiescent(
        self, events: int, timeout: float, *, grace: float = 1.0, stall: float = 20.0
    ) -> Backlog:
        """Wait until `events` events are stored, none is pending and no outbound message is
        pending, and nothing changed `grace` seconds later (a late send would show by then).

        Raises `NotQuiescent` with the backlog and the stuck rows after `timeout` seconds, or
        sooner when work is pending but neither the database nor the fake Graph API saw
        anything happen for `stall` seconds (with leases and reclaims of ~2 s, and the
        sender's backoff, nothing legitimate waits that long)."""
        deadline = time.monotonic() + timeout
        seen: Backlog | str = "nothing read yet"
        activity: tuple[Any, ...] = ()
        changed = time.monotonic()
        while time.monotonic() < deadline:
            try:
                now = self.backlog()
                calls = self.graph_stats().get("last_id", 0)
            except Exception as e:  # the database may be restarting: ask again
                seen = f"database error {type(e).__name__}"
                time.sleep(0.25)
                continue
            if now.stored >= events and now.settled:
                time.sleep(grace)
                with contextlib.suppress(Exception):
                    if self.backlog() == now:
                        return now
                continue
            seen = now
            if (now, calls) != activity:
                activity, changed = (now, calls), time.monotonic()
            elif time.monotonic() - changed > stall:
                raise NotQuiescent(
                    f"stuck: nothing changed for {stall:.0f} s: {seen}\n" + self.stuck()
                )
            time.sleep(0.25)
        raise NotQuiescent(f"not quiescent after {timeout:.0f} s: {seen}\n" + self.stuck())

    def pending_outbound(self, limit: int = 10) -> list[Any]:
        """The oldest outbound rows still pending (id, psid, kind, body)."""
        log = tables.message_log
        with self.engine.connect() as conn:
            return conn.execute(
                select(log.c.id, log.c.psid, log.c.kind, log.c.body)
                .where(log.c.direction == "outbound", log.c.status == "pending")
                .order_by(log.c.id)
                .limit(limit)
            ).all()

    def stuck(self, limit: int = 10) -> str:
        """The oldest pending events and outbound rows, for a failure message."""
        events, log = tables.webhook_events, tables.message_log
        lines = []
        with contextlib.suppress(Exception), self.engine.connect() as conn:
            for row in conn.execute(
                select(events.c.id, events.c.psid, events.c.attempts, events.c.error)
                .where(events.c.status == "pending")
                .order_by(events.c.id)
                .limit(limit)
            ):
                lines.append(
                    f"  pending event {row.id} of user {row.psid}: {row.attempts} attempts, "
                    f"error {row.error!r}"
                )
            for row in conn.execute(
                select(log.c.id, log.c.psid, log.c.kind)
                .where(log.c.direction == "outbound", log.c.status == "pending")
                .order_by(log.c.id)
                .limit(limit)
            ):
                lines.append(f"  pending outbound row {row.id} to user {row.psid} ({row.kind})")
        return "\n".join(lines)

    def leases(self) -> dict[str, str]:
        """Each conversation's outbox lease, as text ("owner X, expires in 1.2 s"), by psid."""
        leases = tables.outbox_leases
        with self.engine.connect() as conn:
            now = conn.execute(select(func.now())).scalar_one()
            rows = conn.execute(select(leases)).all()
        return {
            row.psid: f"owner {row.owner}, expires in "
            f"{(row.expires_at - now).total_seconds():+.1f} s"
            for row in rows
        }


class NotQuiescent(AssertionError):
    """Work was still pending when the time was up."""


@dataclass(frozen=True)
class Backlog:
    """Stored webhook events by status, and pending outbound messages."""

    events: dict[str, int]
    outbound_pending: int

    @property
    def stored(self) -> int:
        """Events stored, whatever their status."""
        return sum(self.events.values())

    @property
    def settled(self) -> bool:
        """No event and no outbound message is pending."""
        return not self.events.get("pending") and not self.outbound_pending


@contextlib.contextmanager
def running_cluster(
    work: Path, database_url: str, *, size: int, settings: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """A started `Cluster`; when the block fails, the end of every process's output is
    printed (pytest shows it with the failure). Everything is killed at the end."""
    cluster = Cluster(work, database_url, size=size, settings=settings)
    try:
        cluster.start()
        yield cluster
    except BaseException:
        print(cluster.tails())
        raise
    finally:
        cluster.close()


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster in /etc/postgresql"
    return versions[-1]


def pg_ready() -> bool:
    """Whether the PostgreSQL server of FLOW_TEST_DATABASE_URL accepts connections."""
    url = make_url(dbkit.PG_URL or "postgresql://127.0.0.1:5432/test")
    host, port = url.host or "127.0.0.1", str(url.port or 5432)
    result = subprocess.run(["pg_isready", "-h", host, "-p", port, "-q"], check=False, timeout=30)
    return result.returncode == 0


def _wait_pg(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pg_ready():
        assert time.monotonic() < deadline, f"PostgreSQL did not come back in {timeout:.0f} s"
        time.sleep(0.1)


def can_restart_postgres() -> str | None:
    """None when this machine lets the test restart PostgreSQL, else why not."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        return "pg_ctlcluster/pg_isready are not installed"
    if not os.path.isdir("/etc/postgresql"):
        return "no /etc/postgresql"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    return None


def restart_postgres(timeout: float = 60.0) -> float:
    """Restart the PostgreSQL cluster (a fast shutdown: every connection is cut) and wait
    until it accepts connections again; returns the seconds it took."""
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "restart"],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    _wait_pg(timeout)
    return time.monotonic() - started


def ensure_postgres(timeout: float = 60.0) -> None:
    """Start PostgreSQL if it is not running (other tests need it)."""
    if pg_ready():
        return
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "start"],
        check=False,
        capture_output=True,
        timeout=timeout,
    )
    _wait_pg(timeout)


# ----------------------------------------------------------------------------- load


def text_webhook(psid: str, text: str, mid: str) -> bytes:
    """The bytes of Meta's webhook POST for one typed message."""
    item = wh.text_event(text, psid=psid, page_id=PAGE_ID, mid=mid)
    return wh.encode(wh.envelope(item, page_id=PAGE_ID))


@dataclass
class DriverStats:
    """What the driver did."""

    acked: int = 0
    posts: int = 0
    #: Deliveries that needed another try, by reason ("ConnectError", "HTTP 503", …).
    retried: Counter[str] = field(default_factory=Counter)
    #: Acknowledged events delivered once more on purpose.
    redelivered: int = 0


class WebhookDriver:
    """Delivers signed webhook bodies to the instances like Meta: every event until some
    instance answers 200. Use as `async with WebhookDriver(urls) as driver:`.

    `concurrency` bounds the POSTs in flight; `rate` (events/s) paces first deliveries so
    that a fault lands in the middle of the load; `redeliver` is the share of acknowledged
    events delivered once more to another instance; `give_up` bounds one event's delivery."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        app_secret: str = APP_SECRET,
        concurrency: int = 32,
        rate: float | None = None,
        redeliver: float = 0.0,
        timeout: float = 5.0,
        give_up: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.urls = list(urls)
        self.app_secret = app_secret
        self.rate = rate
        self.redeliver = redeliver
        self.timeout = timeout
        self.give_up = give_up
        self.rng = rng or random.Random(7)
        self.stats = DriverStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._next_start = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._concurrency = concurrency

    async def __aenter__(self) -> WebhookDriver:
        # httpx over aiohttp's pool, as the server's Graph client: httpx's own pool would
        # make the test's client the bottleneck (see server.graph.create_http_client).
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(
            max_connections=self._concurrency, max_keepalive_connections=self._concurrency
        )
        self._client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False),
            timeout=self.timeout,
            limits=limits,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        assert self._client is not None
        await self._client.aclose()

    async def _pace(self) -> None:
        if not self.rate:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start)
        self._next_start = start + 1.0 / self.rate
        if start > now:
            await asyncio.sleep(start - now)

    async def deliver(self, raw: bytes) -> None:
        """POST `raw` until an instance answers 200 (another instance after each failure,
        with a growing pause); raises AssertionError after `give_up` seconds or on a 4xx."""
        await self._pace()
        await self._deliver(raw, self.rng.randrange(len(self.urls)))
        self.stats.acked += 1
        if self.redeliver and self.rng.random() < self.redeliver:
            task = asyncio.create_task(self._redeliver(raw))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _redeliver(self, raw: bytes) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 0.5))
        await self._deliver(raw, self.rng.randrange(len(self.urls)))
        self.stats.redelivered += 1

    async def _deliver(self, raw: bytes, first: int) -> None:
        assert self._client is not None
        headers = wh.signed_headers(raw, self.app_secret)
        deadline = time.monotonic() + self.give_up
        target, attempt = first, 0
        while True:
            url = self.urls[target]
            async with self._slots:
                self.stats.posts += 1
                try:
                    response = await self._client.post(url, content=raw, headers=headers)
                    status, why = response.status_code, f"HTTP {response.status_code}"
                except httpx.HTTPError as e:
                    status, why = 0, type(e).__name__
                except (TimeoutError, OSError, aiohttp.ClientError) as e:
                    # What httpx-aiohttp does not translate into httpx errors.
                    status, why = 0, type(e).__name__
            if status == 200:
                return
            if 400 <= status < 500:
                raise AssertionError(f"{url} refused a webhook with {why}: {response.text}")
            self.stats.retried[why] += 1
            attempt += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"no instance acknowledged an event in {self.give_up} s")
            # The first retry goes straight to another instance (a load balancer's "next
            # upstream"); later ones wait, growing, as Meta's redeliveries do.
            if attempt > 1:
                pause = min(1.0, 0.05 * 2 ** min(attempt, 5)) * self.rng.uniform(0.5, 1)
                await asyncio.sleep(pause)
            others = [i for i in range(len(self.urls)) if i != target]
            target = self.rng.choice(others) if others else target

    async def wait_acked(self, count: int, timeout: float = 120.0) -> None:
        """Return once `count` events were acknowledged."""
        deadline = time.monotonic() + timeout
        while self.stats.acked < count:
            assert time.monotonic() < deadline, f"only {self.stats.acked} of {count} acked"
            await asyncio.sleep(0.02)


async def converse(driver: WebhookDriver, scripts: dict[str, list[bytes]]) -> None:
    """Every user delivers their webhooks in order, each after the previous one was
    acknowledged (Meta's order for one sender); the users run side by side."""

    async def user(bodies: list[bytes]) -> None:
        for raw in bodies:
            await driver.deliver(raw)

    await asyncio.gather(*(user(bodies) for bodies in scripts.values()))


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking harness work (kill, restart, PostgreSQL) without stopping the load."""
    return await asyncio.to_thread(fn, *args)
