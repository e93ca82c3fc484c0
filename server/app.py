"""The server as a Starlette app: `create_app(settings)` wires ingress, inbox, dispatcher,
processor, sender and Graph client, and serves the webhook and the operations endpoints.

Routes: GET/POST /webhook, GET /healthz (the process is up), GET /readyz (database reachable
and flows loaded), GET /metrics (Prometheus), POST /admin/reload (Bearer FLOW_ADMIN_TOKEN:
recompile the flows and deploy the new versions; refused with the diagnostics, and the running
versions kept, when they do not compile)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from flowlang.compiler import CompileResult
from flowlang.ir import FlowProgram
from flowlang.load import compile_paths, find_flow_files
from flowlang.render import render
from runtime import db
from runtime.program import ProgramView
from runtime.store import SqlStore
from server import gctune
from server.admin import admin_reload, forget_user_endpoint, server_of
from server.crypto import CryptoError, TokenCipher
from server.dispatcher import DEFAULT_CONCURRENCY, Dispatcher
from server.graph import GraphClient, create_http_client
from server.inbox import Inbox, IngressWriter
from server.metrics import CONTENT_TYPE, Metrics
from server.pages import PageError, PageRegistry
from server.processor import Processor
from server.ratelimit import PageRateLimiter
from server.sender import Sender
from server.settings import Settings
from server.webhook import WebhookEndpoint

log = logging.getLogger(__name__)

#: Seconds /readyz waits for the database before calling it unreachable.
READY_TIMEOUT = 2.0


class StartupError(Exception):
    """The server cannot start; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Reload:
    """The outcome of recompiling the flows."""

    ok: bool
    deployed: dict[str, str]
    flows: list[str]
    diagnostics: str


def compile_flows(paths: Sequence[str | Path]) -> CompileResult:
    """Compile the `.flow` files in `paths`; raises `StartupError` when there are none."""
    if not find_flow_files(paths):
        raise StartupError(f"no .flow files found in {', '.join(str(p) for p in paths)}")
    return compile_paths(paths)


class Server:
    """Everything the app runs, created by the lifespan and reachable as
    `app.state.server`. Tests use `drain()` to wait until the work queued so far is done."""

    def __init__(
        self,
        settings: Settings,
        *,
        flows: Sequence[str | Path],
        program: FlowProgram | None,
        transport: httpx.AsyncBaseTransport | None,
        watch: bool,
        watch_interval: float,
        concurrency: int,
        shutdown_grace: float,
        sender_options: dict[str, Any],
        dispatcher_options: dict[str, Any],
        processor_options: dict[str, Any],
        freeze_gc: bool,
        profiles_when_read: bool,
    ) -> None:
        self.settings = settings
        self.flows = list(flows)
        self.metrics = Metrics()
        self._initial_program = program
        self._transport = transport
        self._watch = watch
        self._watch_interval = watch_interval
        self._concurrency = concurrency
        self._shutdown_grace = shutdown_grace
        self._sender_options = sender_options
        self._dispatcher_options = dispatcher_options
        self._processor_options = processor_options
        self._freeze_gc = freeze_gc
        self._profiles_when_read = profiles_when_read
        self.engine: Engine | None = None
        self.view: ProgramView | None = None
        self.program: FlowProgram | None = None
        self.store: SqlStore | None = None
        self.pages: PageRegistry | None = None
        self.http: httpx.AsyncClient | None = None
        self.graph: GraphClient | None = None
        self.sender: Sender | None = None
        self.processor: Processor | None = None
        self.dispatcher: Dispatcher | None = None
        self.writer: IngressWriter | None = None
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._reclaimer: asyncio.Task[None] | None = None
        self._ready_writer: IngressWriter | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Migrate, load and deploy the flows, start sender, dispatcher and ingress."""
        settings = self.settings
        url = settings.database_url
        # The files as compiled (before compiling): any later change gets reloaded.
        seen = await asyncio.to_thread(self._flow_files) if self._watch else ()
        try:
            await asyncio.to_thread(db.upgrade, url)
            # Enough connections for every processing thread, the ingress writer and the
            # sender's loader and writer, so nobody waits for the pool.
            engine = self.engine = db.create_engine_for(
                url, pool_size=self._concurrency + 8, max_overflow=8
            )
        except db.DbError as e:
            raise StartupError(str(e)) from None
        program = self._initial_program
        if program is None:
            result = await asyncio.to_thread(compile_flows, self.flows)
            if result.program is None:
                raise StartupError(
                    "the flows have errors; fix them first (flowc check):\n"
                    + render(result.diagnostics, result.sources, "short")
                )
            program = result.program
        store = self.store = SqlStore(engine)
        await asyncio.to_thread(store.deploy, program)
        self._use(program)

        try:
            cipher = TokenCipher(settings.secret_key.get_secret_value())
            pages = self.pages = PageRegistry(engine, cipher)
            if settings.page_id and settings.page_token:
                token = settings.page_token.get_secret_value()
                await asyncio.to_thread(pages.add, settings.page_id, token)
        except (CryptoError, PageError) as e:
            raise StartupError(str(e)) from None
        self.http = create_http_client(self._transport)
        self.graph = GraphClient(
            self.http,
            base_url=settings.graph_api_url,
            app_secret=settings.app_secret.get_secret_value(),
        )
        metrics = self.metrics
        sender = self.sender = Sender(
            engine,
            self.graph,
            pages,
            on_result=lambda r: metrics.send_outcome(r.outcome, r.error_code),
            **{
                "lease_seconds": settings.outbox_lease_seconds,
                "limiter": PageRateLimiter(settings.page_send_rate),
                **self._sender_options,
            },
        )
        try:
            await sender.start()
        except CryptoError as e:
            raise StartupError(str(e)) from None
        processor = self.processor = Processor(
            engine,
            program=lambda: self.view,
            pages=pages,
            graph=self.graph,
            metrics=metrics,
            notify=sender.notify,
            app_id=settings.app_id,
            profiles_when_read=self._profiles_when_read,
            **self._processor_options,
        )
        processor.start()
        dispatcher = self.dispatcher = Dispatcher(
            processor.handle,
            on_failure=processor.on_failure,
            is_transient=processor.is_transient,
            concurrency=self._concurrency,
            **self._dispatcher_options,
        )
        inbox = Inbox(engine, settle=processor.settle)
        pending = await asyncio.to_thread(lambda: list(inbox.all_pending()))
        if pending:
            log.info("resuming %d events received before the last stop", len(pending))
        dispatcher.submit(pending)
        dispatcher.start()
        writer = IngressWriter(inbox, on_stored=dispatcher.submit)
        writer.start()
        self.writer = writer
        metrics.track_queue("inbox", lambda: dispatcher.depth)
        metrics.track_queue("outbox", sender.queue_depth)
        if self._watch:
            self._watcher = asyncio.create_task(self._watch_flows(seen), name="flow-watch")
        self._reclaimer = asyncio.create_task(self._reclaim(inbox), name="flow-reclaim")
        if self._freeze_gc:
            gctune.tune()

    async def stop(self) -> None:
        """Stop taking events, let running work finish (briefly), release everything.
        Whatever is not finished stays pending in the database for the next start."""
        for task in (self._watcher, self._reclaimer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        writer, self.writer = self.writer, None
        if writer is not None:
            await asyncio.to_thread(writer.stop)
        if self.dispatcher is not None:
            await self.dispatcher.stop(self._shutdown_grace)
        if self.processor is not None:
            await asyncio.to_thread(self.processor.close)
        if self.sender is not None:
            with contextlib.suppress(TimeoutError):
                await self.sender.wait_idle(self._shutdown_grace)
            await self.sender.stop()
        if self.http is not None:
            await self.http.aclose()
        if self.engine is not None:
            self.engine.dispose()
        self.metrics.flows_loaded.set(0)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every event received so far is processed and its replies are sent
        (or failed). Raises TimeoutError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self.dispatcher is not None and self.sender is not None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("the server is still busy")
            if not await self.dispatcher.drain(left):
                raise TimeoutError("events are still being processed")
            await self.sender.wait_idle(max(0.001, deadline - loop.time()))
            if self.dispatcher.depth == 0:
                return

    # ------------------------------------------------------------------ flows

    def _use(self, program: FlowProgram) -> None:
        assert self.store is not None
        self.program = program
        self.view = ProgramView(program, versions=self.store.flow_version)
        self.metrics.flows_loaded.set(len(program.flows))

    async def reload(self) -> Reload:
        """Recompile the flows; deploy and switch to them if they compile, else keep the
        running versions. One reload at a time."""
        async with self._reload_lock:
            try:
                result = await asyncio.to_thread(compile_flows, self.flows)
            except StartupError as e:
                self.metrics.reloads.labels("refused").inc()
                return Reload(False, {}, [], str(e))
            shown = render(result.diagnostics, result.sources, "short")
            if result.program is None:
                self.metrics.reloads.labels("refused").inc()
                log.warning("reload refused, the running flows stay:\n%s", shown)
                return Reload(False, {}, [], shown)
            assert self.store is not None
            deployed = await asyncio.to_thread(self.store.deploy, result.program)
            self._use(result.program)
            if self._freeze_gc:
                gctune.tune()
            self.metrics.reloads.labels("deployed").inc()
            log.info(
                "reloaded %d flows (%d new versions)", len(result.program.flows), len(deployed)
            )
            return Reload(True, deployed, sorted(result.program.flows), shown)

    def _flow_files(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for path in find_flow_files(self.flows):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    async def _watch_flows(self, seen: tuple[tuple[str, int, int], ...]) -> None:
        """`--reload`: poll the flow files and reload when one changes, appears or goes."""
        while True:
            await asyncio.sleep(self._watch_interval)
            now = await asyncio.to_thread(self._flow_files)
            if now != seen:
                seen = now
                await self.reload()

    async def _reclaim(self, inbox: Inbox) -> None:
        """Take over events left pending `reclaim_after` seconds: with several instances on
        one database, their instance may have died after storing them. (An instance that
        is merely slow loses nothing: an event runs once, whoever runs it; see
        `Processor._gate`.) On one instance this finds nothing, unless a bug lost an event."""
        after = self.settings.reclaim_after
        while True:
            await asyncio.sleep(max(0.5, after / 3))
            assert self.dispatcher is not None
            before = datetime.now(UTC) - timedelta(seconds=after)
            try:
                stale = await asyncio.to_thread(inbox.stale, before)
            except Exception as e:  # the database is down: try again next round
                log.warning("cannot look for stale events: %s", e)
                continue
            fresh = [event for event in stale if not self.dispatcher.has(event.id)]
            if fresh:
                log.info("taking over %d events pending for over %g s", len(fresh), after)
                self.dispatcher.submit(fresh)

    # ------------------------------------------------------------------ readiness

    def _ping(self) -> None:
        assert self.engine is not None
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def readiness(self) -> str | None:
        """None when ready, else why not."""
        if self.view is None or self.engine is None or self.writer is None:
            return "starting: the flows are not loaded yet"
        try:
            await asyncio.wait_for(asyncio.to_thread(self._ping), READY_TIMEOUT)
        except TimeoutError:
            return "the database does not answer"
        except Exception as e:
            return f"the database is unreachable: {type(e).__name__}"
        return None


# ----------------------------------------------------------------------------- routes


async def healthz(request: Request) -> Response:
    """The process is up."""
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Ready for traffic: the database answers and the flows are loaded."""
    problem = await server_of(request).readiness()
    if problem is not None:
        return PlainTextResponse(f"not ready: {problem}", status_code=503)
    return PlainTextResponse("ready")


async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    return Response(server_of(request).metrics.render(), media_type=CONTENT_TYPE)


def create_app(
    settings: Settings,
    *,
    flows: Sequence[str | Path] = (),
    program: FlowProgram | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    watch: bool = False,
    watch_interval: float = 1.0,
    concurrency: int = DEFAULT_CONCURRENCY,
    shutdown_grace: float = 5.0,
    sender_options: dict[str, Any] | None = None,
    dispatcher_options: dict[str, Any] | None = None,
    processor_options: dict[str, Any] | None = None,
    freeze_gc: bool = True,
    profiles_when_read: bool = True,
) -> Starlette:
    """The server app. `flows` are the .flow files or folders (recompiled by reloads);
    `program`, when given, is their already compiled program (else the lifespan compiles
    them). `transport` replaces the Graph API's HTTP transport (tests, the emulator);
    `watch` reloads the flows when their files change; `sender_options` go to `Sender`,
    `dispatcher_options` to `Dispatcher` (max_attempts, backoff, …), `processor_options` to
    `Processor`. `freeze_gc` tunes the garbage collector for serving once started
    (`server.gctune`); leave it on in a server process, turn it off where many apps come and
    go (tests).
    `profiles_when_read` (the default) fetches a user's profile before the first turn that
    reads `user.*`, not before their first event: flows that never show the profile cost no
    User Profile API calls (they count against the page's rate limit) and answer sooner
    (see `server.processor.Processor`)."""
    server = Server(
        settings,
        flows=flows,
        program=program,
        transport=transport,
        watch=watch,
        watch_interval=watch_interval,
        concurrency=concurrency,
        shutdown_grace=shutdown_grace,
        sender_options=sender_options or {},
        dispatcher_options=dispatcher_options or {},
        processor_options=processor_options or {},
        freeze_gc=freeze_gc,
        profiles_when_read=profiles_when_read,
    )
    webhook = WebhookEndpoint(
        app_secret=settings.app_secret.get_secret_value(),
        verify_token=settings.verify_token.get_secret_value(),
        max_body_bytes=settings.max_body_bytes,
        writer=lambda: server.writer,
        metrics=server.metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await server.start()
        except BaseException:
            await server.stop()
            raise
        try:
            yield
        finally:
            await server.stop()

    app = Starlette(
        routes=[
            Route("/webhook", webhook, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/reload", admin_reload, methods=["POST"]),
            Route("/admin/users/{page_id}/{psid}", forget_user_endpoint, methods=["DELETE"]),
        ],
        lifespan=lifespan,
    )
    app.state.server = server
    return app
