"""Run the jService stand-in: `python -m jservice --port 8001`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jservice.standin import Behaviour, make_standin_app

LISTEN_BACKLOG = 1024


async def run(sockets: list[socket.socket], behaviour: Behaviour) -> None:
    """Serve the stand-in on `sockets` until SIGTERM, SIGINT or SIGHUP, then stop cleanly (exit
    status 0). As PID 1 in a container a process has no default action for SIGTERM: without a
    handler, Docker waits out its grace period and kills it."""
    server = HTTPServer(make_standin_app(behaviour))
    server.add_sockets(sockets)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.stop()
    await server.close_all_connections()
    logging.getLogger("jservice").info("stopped")


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for host:port, or exit with one line that says what to do."""
    try:
        return bind_sockets(port, host, backlog=LISTEN_BACKLOG)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            sys.exit(
                f"jService stand-in: cannot start: port {port} is in use; choose another with --port "
                f"(make run STANDIN_PORT={port + 1})"
            )
        sys.exit(f"jService stand-in: cannot start on {host}:{port}: {error.strerror or error}")


def detach() -> None:
    """Fork: the parent prints the child's pid and exits; the child goes on serving. The child's
    stdout becomes its stderr, so that `$(python -m jservice --detach)` returns at once."""
    # A Ctrl-C during the fork reaches the child once it can take it, never half-way through it.
    stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--pool-size", type=int, default=None, help="distinct clue ids on offer")
    parser.add_argument(
        "--detach", action="store_true", help="once listening, serve in the background and print the pid"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    behaviour = Behaviour(pool_size=args.pool_size, latency=args.latency_ms / 1000)
    sockets = bind(args.host, args.port)
    port = sockets[0].getsockname()[1]
    logging.getLogger("jservice").info("jService stand-in on http://%s:%d", args.host, port)
    with contextlib.suppress(KeyboardInterrupt):
        if args.detach:
            detach()
        asyncio.run(run(sockets, behaviour))


if __name__ == "__main__":
    main()
