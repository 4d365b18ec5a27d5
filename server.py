"""The quiz and audio service: `make_app` builds the Tornado application, `main` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from tornado import httputil
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application

from batching import Batcher, on_executor
from config import ConfigError, Settings, load_settings
from connections import MAX_HEAD_BYTES, Lingering, RequestGuard, ServiceStream
from converters.ffmpeg import find_ffmpeg
from converters.mp3 import Mp3Settings
from converters.pool import ConversionPool
from database import bind_database, create_tables, open_database
from embedded_db import start_embedded_postgres
from handlers import ROUTES
from handlers.base import MAX_JSON_BYTES, NotFoundHandler
from handlers.docs import load_openapi_document
from models import database
from queries.questions import insert_new_questions
from queries.records import keys_with_rows
from queries.users import create_users
from runtime import InFlight, first_line, log_request
from storage import open_store, sweep_orphans
from storage.scratch import Scratch, sweep_dead_instances
from upstream.client import MAX_ANSWER_BYTES, JServiceClient
from upstream.sharing import SharedUpstream

log = logging.getLogger("server")

UPSTREAM_MAX_CLIENTS = 100
# Concurrent POST /questions requests share this many upstream calls at a time (upstream/sharing.py):
# enough that an ask rarely waits for a free call, few enough that the upstream sees large calls.
UPSTREAM_CALLS_IN_FLIGHT = 8
LISTEN_BACKLOG = 1024
CUT_OFF_SECONDS = 5
IO_THREADS = 4
BODY_CHUNK_BYTES = 1024 * 1024
USER_BATCH_ITEMS = 256
QUESTION_BATCH_ROWS = 1000
# A closed terminal sends SIGHUP: the service stops as on SIGTERM or Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def make_app(settings: Settings) -> Application:
    """Build the application and the shared resources its handlers use."""
    if settings.database_url is None:
        raise ValueError("make_app needs settings.database_url")
    bind_database(open_database(settings.database_url, settings.db_pool_size))
    http_client = CurlAsyncHTTPClient(
        force_instance=True, max_clients=UPSTREAM_MAX_CLIENTS, max_body_size=MAX_ANSWER_BYTES
    )
    db_executor = ThreadPoolExecutor(settings.db_pool_size, thread_name_prefix="db")
    # A quarter of the connections at most for each kind of batched write, so that reads and other
    # writes always find one; concurrent writes of a kind wait and join the next batch instead.
    batches = max(1, settings.db_pool_size // 4)
    return Application(
        ROUTES,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        config=settings,
        db_executor=db_executor,
        user_batches=Batcher(on_executor(db_executor, create_users), batches, USER_BATCH_ITEMS),
        question_batches=Batcher(
            on_executor(db_executor, insert_new_questions), batches, QUESTION_BATCH_ROWS, weight=len
        ),
        http_client=http_client,
        jservice=SharedUpstream(JServiceClient(http_client, settings.jservice_url), UPSTREAM_CALLS_IN_FLIGHT),
        conversions=ConversionPool(settings.convert_workers, settings.convert_queue),
        io_executor=ThreadPoolExecutor(IO_THREADS, thread_name_prefix="io"),
        store=open_store(settings),
        scratch=Scratch(settings.scratch_root),
        mp3=Mp3Settings(find_ffmpeg(settings.ffmpeg_binary), settings.mp3_bitrate, settings.convert_timeout),
        openapi=load_openapi_document(),
        in_flight=InFlight(),
    )


class ServiceHTTPServer(HTTPServer):
    """Tornado's HTTP server on ServiceStreams (connections.py): a lingering close after answers
    sent before the body was read, problem documents for requests Tornado cannot parse."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingering = Lingering()

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        """Serve a new connection."""
        service_stream = ServiceStream(
            stream.socket,
            self.lingering,
            max_buffer_size=stream.max_buffer_size,
            read_chunk_size=stream.read_chunk_size,
        )
        super().handle_stream(service_stream, address)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """The application's delegate for a request, behind a RequestGuard."""
        delegate = super().start_request(server_conn, request_conn)
        stream = getattr(request_conn, "stream", None)
        return RequestGuard(delegate, stream) if isinstance(stream, ServiceStream) else delegate

    async def close_all_connections(self) -> None:
        """Close every connection, lingering ones included."""
        await super().close_all_connections()
        self.lingering.close_all()


def make_server(app: Application, settings: Settings) -> ServiceHTTPServer:
    """An HTTP server for `app` with the service's connection limits. Tornado uses the idle timeout
    for a request's headers too, so a client sending them a byte at a time is dropped after it."""
    return ServiceHTTPServer(
        app,
        # Above every handler's own cap, so handlers answer 413 themselves before Tornado cuts in.
        max_body_size=MAX_JSON_BYTES * 16,
        max_header_size=MAX_HEAD_BYTES,
        idle_connection_timeout=settings.http_idle_timeout,
        body_timeout=settings.http_body_timeout,
        # Uploads reach the handler in pieces of up to this much (whatever has arrived): fewer,
        # larger pieces cut the per-piece overhead of parsing and writing an upload by two thirds.
        chunk_size=BODY_CHUNK_BYTES,
    )


def prepare_instance(settings: Settings) -> None:
    """Start-up work, once per instance and before any worker listens (blocking): wait for the
    database and create the tables, then remove what stopped instances left in scratch space and
    stored MP3s without a row older than ORPHAN_GRACE_SECONDS."""
    assert settings.database_url is not None
    sweep_dead_instances(settings.scratch_root)
    bind_database(open_database(settings.database_url, 1))
    try:
        create_tables(settings.db_wait_seconds)
        sweep_orphans(open_store(settings), keys_with_rows, settings.orphan_grace_seconds)
    finally:
        database.close_all()  # workers open their own pools; no connection may cross a fork


async def sweep_now_and_then(app: Application, grace: float) -> None:
    """Sweep orphan MP3s once every grace period, for as long as the app runs (on a database thread:
    it asks the database which keys have rows)."""
    settings = app.settings
    while True:
        await asyncio.sleep(grace)
        try:
            await asyncio.get_running_loop().run_in_executor(
                settings["db_executor"], sweep_orphans, settings["store"], keys_with_rows, grace
            )
        except Exception as error:  # a database or store outage: the next sweep tries again
            log.warning("orphan sweep failed: %s", first_line(error))


def close_app(app: Application) -> None:
    """Release what `make_app` built."""
    app.settings["http_client"].close()
    app.settings["mp3"].running.stop_all()
    app.settings["conversions"].shutdown()
    app.settings["io_executor"].shutdown(wait=True)
    app.settings["scratch"].close()
    app.settings["db_executor"].shutdown(wait=True)
    database.close_all()


async def serve(settings: Settings, sockets: list[socket.socket], announce: bool = True) -> None:
    """Serve on `sockets` until SIGTERM, SIGINT or SIGHUP, then let in-flight requests finish within
    the grace period. `announce`: log the line that says where to go once serving."""
    app = make_app(settings)
    server = make_server(app, settings)
    server.add_sockets(sockets)
    sweeping = asyncio.ensure_future(sweep_now_and_then(app, settings.orphan_grace_seconds))
    port = sockets[0].getsockname()[1]
    log.info("listening on %s:%d (pid %d)", settings.host, port, os.getpid())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    if announce:
        log.info("ready: %s", docs_url(settings, port))
    await stopping.wait()
    log.info("stopping: no new connections, waiting up to %gs for requests", settings.shutdown_grace_seconds)
    server.stop()
    sweeping.cancel()
    if not await app.settings["in_flight"].drained(settings.shutdown_grace_seconds):
        log.warning("grace period over with %d requests in flight", app.settings["in_flight"].count)
    await server.close_all_connections()
    # Requests just cut off end at once (an upload's conversion is stopped with its connection):
    # let them, so that none is cancelled mid-way when the loop closes.
    await app.settings["in_flight"].drained(CUT_OFF_SECONDS)
    close_app(app)
    log.info("stopped")


def docs_url(settings: Settings, port: int) -> str:
    """Where a browser finds the service's /docs: under PUBLIC_URL, else on this machine."""
    if settings.public_url:
        return f"{settings.public_url}/docs"
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/docs"


def close_sockets(sockets: list[socket.socket]) -> None:
    """Close listening sockets in this process."""
    for sock in sockets:
        sock.close()


def bind_worker_sockets(settings: Settings) -> list[list[socket.socket]]:
    """Listening sockets for each of WORKERS processes, all on one port with SO_REUSEPORT: the kernel
    spreads new connections evenly over them, where with one shared socket whichever worker wakes
    first accepts a whole burst."""
    # A plain bind first: with SO_REUSEPORT alone, a port another service of this user already
    # listens on would be shared with it silently instead of failing start-up.
    probe = bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
    port = probe[0].getsockname()[1]  # PORT=0 picks a free port once, for all workers
    close_sockets(probe)
    return [
        bind_sockets(port, settings.host, backlog=LISTEN_BACKLOG, reuse_port=True)
        for _ in range(settings.workers)
    ]


def run_workers(settings: Settings, worker_sockets: list[list[socket.socket]]) -> int:
    """Fork one process per socket set, pass SIGTERM, SIGINT and SIGHUP on to them, and return once all have
    ended: 0 if all stopped cleanly. A worker that dies on its own stops the others, so the service
    restarts as a whole. Each socket stays open only in its own worker: the kernel keeps handing
    connections to a listening socket for as long as any process holds it."""
    children: set[int] = set()
    for own in worker_sockets:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sockets in worker_sockets:
                    if sockets is not own:
                        close_sockets(sockets)
                asyncio.run(serve(settings, own, announce=own is worker_sockets[0]))
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            os._exit(code)
        children.add(pid)
    for sockets in worker_sockets:
        close_sockets(sockets)
    stopping = False

    def stop_children(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop_children)
    status = 0
    while children:
        pid, wait_status = os.wait()
        children.discard(pid)
        if os.waitstatus_to_exitcode(wait_status) != 0:
            status = 1
            if not stopping:
                log.error("worker %d ended unexpectedly; stopping the others", pid)
                stop_children()
    return status


def interrupt(signum: int, frame: object) -> None:
    """Turn a stop signal into KeyboardInterrupt, as Python does for SIGINT."""
    raise KeyboardInterrupt


def main() -> None:
    """Read the configuration, start the database if embedded, and serve."""
    try:
        settings = load_settings()
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Until serve() takes over, SIGTERM and SIGHUP (a closed terminal) stop start-up as Ctrl-C does:
    # through the exit handlers, which stop an embedded PostgreSQL this process started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    try:
        if settings.database_url is None:
            settings = replace(settings, database_url=start_embedded_postgres(settings.embedded_db_dir))
        prepare_instance(settings)
        if settings.workers > 1:
            sys.exit(run_workers(settings, bind_worker_sockets(settings)))
        asyncio.run(serve(settings, bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)))
    except KeyboardInterrupt:  # stopping on request is no failure: no exit status for make to report
        log.info("stopped during start-up")
        return
    except Exception as error:  # a start-up failure: one line, not a traceback
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            sys.exit(
                f"cannot start: port {settings.port} is in use; choose a free one with PORT=, e.g. PORT=8080"
            )
        sys.exit(f"cannot start: {type(error).__name__}: {first_line(error)}")


if __name__ == "__main__":
    main()
