"""An embedded PostgreSQL for machines without one (the `pgserver` wheel ships the binaries)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded_postgres(directory: Path) -> str:
    """Start (or reuse) a PostgreSQL cluster in `directory` and return its connection URL.
    The server stops when the last process using it exits."""
    from pgserver import postgres_server  # imported here: the Docker image does not ship it

    directory.mkdir(parents=True, exist_ok=True)
    server = postgres_server.get_server(directory.resolve(), cleanup_mode="stop")
    log.info("embedded PostgreSQL running in %s", directory)
    url: str = server.get_uri()
    return url
