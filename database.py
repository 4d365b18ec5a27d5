"""The pooled PostgreSQL connection behind the models, and how work reaches it (on executor threads)."""

from __future__ import annotations

import functools
import logging
import re
import shlex
import time
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import peewee
from playhouse.pool import PooledPostgresqlDatabase
from psycopg2.extensions import TRANSACTION_STATUS_UNKNOWN, parse_dsn

from models import MODELS, database
from runtime import first_line

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)

# How long a worker waits for a free pooled connection before the request fails with 503.
POOL_WAIT_SECONDS = 10
# A connection unused this long is closed rather than reused, so restarts and idle cuts heal.
POOL_STALE_SECONDS = 300
# A connection unused longer than this is checked with a round trip before it is handed out.
PING_AFTER_SECONDS = 1.0
# The advisory lock that serialises table creation: instances starting together would otherwise
# race on CREATE TABLE IF NOT EXISTS and one fail with a unique violation on pg_type.
SCHEMA_LOCK = 0x5155495A  # "QUIZ"
MISSING_DATABASE = re.compile(r'database "(.+?)" does not exist')

DatabaseUnavailable = (peewee.OperationalError, peewee.InterfaceError)


class DatabaseMissing(RuntimeError):
    """The server answers but has no such database: waiting would not help."""


def storable_text(text: str) -> bool:
    """Whether PostgreSQL can store the string: no NUL, valid UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


class CheckedPool(PooledPostgresqlDatabase):
    """A pool that asks the server whether a connection still works (a round trip) only when the
    connection sat unused for PING_AFTER_SECONDS; one used a moment ago is handed out as it is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def _is_closed(self, conn: Any) -> bool:
        if conn.closed:
            return True
        if time.monotonic() - self._returned_at.get(conn, 0.0) < PING_AFTER_SECONDS:
            return bool(conn.info.transaction_status == TRANSACTION_STATUS_UNKNOWN)
        return bool(super()._is_closed(conn))  # type: ignore[no-untyped-call]

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        self._returned_at[conn] = time.monotonic()
        super()._close(conn, close_conn)


def open_database(url: str, pool_size: int) -> PooledPostgresqlDatabase:
    """Build a connection pool for a postgresql:// URL (nothing is connected yet)."""
    params = parse_dsn(url)
    name = params.pop("dbname", "postgres")
    params.setdefault("connect_timeout", "5")
    return CheckedPool(
        name,
        max_connections=pool_size,
        stale_timeout=POOL_STALE_SECONDS,
        timeout=POOL_WAIT_SECONDS,
        **params,
    )


def bind_database(db: peewee.Database) -> None:
    """Point every model at `db`."""
    database.initialize(db)


def create_tables(wait_seconds: float) -> None:
    """Create missing tables under an advisory lock (instances may start together), retrying while
    the database is still starting (blocking); a database that does not exist fails at once,
    saying how to create it."""
    deadline = time.monotonic() + wait_seconds
    reason = ""
    while True:
        try:
            with database.connection_context(), database.atomic():
                database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                database.create_tables(MODELS, safe=True)
            return
        except DatabaseUnavailable as error:
            missing = MISSING_DATABASE.search(str(error))
            if missing:
                raise DatabaseMissing(
                    f"{missing.group(0)}; create it: {createdb_command(missing.group(1))}"
                ) from None
            if time.monotonic() >= deadline:
                raise
            if first_line(error) != reason:  # once per reason, not every half second
                reason = first_line(error)
                log.info("waiting up to %gs for the database: %s", wait_seconds, reason)
            time.sleep(0.5)


def createdb_command(name: str) -> str:
    """The createdb command line for `name` on the bound database's server (never its password)."""
    params = database.obj.connect_params
    words = ["createdb"]
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if key in params:
            words += [flag, str(params[key])]
    return shlex.join([*words, name])


def _sqlstate(error: peewee.PeeweeException) -> str | None:
    """The SQLSTATE of the driver error Peewee wrapped, if any."""
    return getattr(getattr(error, "orig", None), "pgcode", None)


def with_connection(work: Callable[P, R]) -> Callable[P, R]:
    """Run `work` on a pooled connection, returned to the pool afterwards; meant for executor threads.
    Peewee runs in autocommit mode, so each statement is its own transaction: database functions are
    written as single statements (one round trip) wherever atomicity matters."""

    @functools.wraps(work)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with database.connection_context():
            return work(*args, **kwargs)

    return wrapper


def in_transaction(work: Callable[P, R]) -> Callable[P, R]:
    """Like `with_connection`, inside an explicit transaction: it commits only if this process is
    alive to send COMMIT, where an autocommit statement would still commit after the process died."""

    @functools.wraps(work)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with database.connection_context(), database.atomic():
            return work(*args, **kwargs)

    return wrapper


@with_connection
def ping() -> None:
    """Ask the database a trivial question; raises if it cannot answer."""
    database.execute_sql("SELECT 1")
