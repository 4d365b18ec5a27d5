"""An embedded PostgreSQL for machines without one (the `pgserver` wheel ships the binaries)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# pgserver's list of the processes using a cluster: the last one to exit stops the server.
HANDLES_FILE = ".handle_pids.json"


def start_embedded_postgres(directory: Path) -> str:
    """Start (or reuse) a PostgreSQL cluster in `directory` and return its connection URL.
    The server stops when the last process using it exits."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset, as it is under sudo, cron or CI; its
        # fallback (/tmp/runtime-<uid>) only holds pgserver's lock file.
        warnings.simplefilter("ignore")
        from pgserver import postgres_server  # imported here: the Docker image does not ship it

    # pgserver logs every command line and initdb's advice at INFO; its warnings and errors stay.
    logging.getLogger("pgserver").setLevel(
        logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING
    )
    directory.mkdir(parents=True, exist_ok=True)
    fresh = not (directory / "PG_VERSION").exists()
    with postgres_server.PostgresServer._lock:  # the lock pgserver takes around that list
        forget_ended_processes(directory / HANDLES_FILE)
    server = postgres_server.get_server(directory.resolve(), cleanup_mode="stop")
    log.info("embedded PostgreSQL %s in %s", "created" if fresh else "running", directory)
    url: str = server.get_uri()
    return url


def stop_embedded_postgres(directory: Path) -> None:
    """Let go of the cluster in `directory` now rather than at exit: it stops unless another
    process still uses it."""
    from pgserver import postgres_server

    postgres_server.get_server(directory.resolve()).cleanup()


def forget_ended_processes(handles: Path) -> None:
    """Drop the processes that ended without letting go of the cluster (SIGKILL) from pgserver's
    list: with one left there, every later exit sees another user and leaves PostgreSQL running."""
    import psutil  # pgserver's own dependency

    try:
        pids: list[int] = json.loads(handles.read_text())
        written = handles.stat().st_mtime
    except (OSError, ValueError):
        return
    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            # A pid the system handed out again since the list was written is another process.
            if process.create_time() <= written + 1 and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    if alive != pids:
        log.info(
            "forgetting ended processes %s that used the embedded PostgreSQL", sorted(set(pids) - set(alive))
        )
        handles.write_text(json.dumps(alive))
