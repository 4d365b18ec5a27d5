"""Run the jService stand-in: `python -m jservice --port 8001`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from tornado.httpserver import HTTPServer

from jservice.standin import Behaviour, make_standin_app

LISTEN_BACKLOG = 1024


async def run(host: str, port: int, behaviour: Behaviour) -> None:
    """Serve the stand-in until SIGTERM or SIGINT, then stop cleanly (exit status 0). As PID 1 in a
    container a process has no default action for SIGTERM: without a handler, Docker waits out its
    grace period and kills it."""
    server = HTTPServer(make_standin_app(behaviour))
    server.listen(port, host, backlog=LISTEN_BACKLOG)
    log = logging.getLogger("jservice")
    log.info("jService stand-in on http://%s:%d", host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.stop()
    await server.close_all_connections()
    log.info("stopped")


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--pool-size", type=int, default=None, help="distinct clue ids on offer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    behaviour = Behaviour(pool_size=args.pool_size, latency=args.latency_ms / 1000)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.host, args.port, behaviour))


if __name__ == "__main__":
    main()
