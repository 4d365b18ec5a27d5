"""Peewee models, the pooled database behind them, and how work reaches it."""

from __future__ import annotations

import functools
import logging
import re
import shlex
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import peewee
from playhouse.pool import PooledPostgresqlDatabase
from playhouse.postgres_ext import DateTimeTZField
from psycopg2.extensions import TRANSACTION_STATUS_UNKNOWN, parse_dsn

from runtime import first_line

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)

database = peewee.DatabaseProxy()

# How long a worker waits for a free pooled connection before the request fails with 503.
POOL_WAIT_SECONDS = 10
# A connection unused this long is closed rather than reused, so restarts and idle cuts heal.
POOL_STALE_SECONDS = 300
# A connection unused longer than this is checked with a round trip before it is handed out.
PING_AFTER_SECONDS = 1.0

DatabaseUnavailable = (peewee.OperationalError, peewee.InterfaceError)
MISSING_DATABASE = re.compile(r'database "(.+?)" does not exist')
INVALID_STATEMENT_NAME = "26000"
DUPLICATE_PREPARED_STATEMENT = "42P05"


NOW = peewee.SQL("DEFAULT now()")


def storable_text(text: str) -> bool:
    """Whether PostgreSQL can store the string: no NUL, valid UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


class BaseModel(peewee.Model):
    """Models live in the proxied database."""

    class Meta:
        database = database


class Question(BaseModel):
    """A quiz question copied from the jService upstream; `jservice_id` is the upstream id."""

    id = peewee.BigAutoField()
    jservice_id = peewee.BigIntegerField(unique=True)
    question = peewee.TextField()
    answer = peewee.TextField()
    created_at = DateTimeTZField(null=True)
    airdate = DateTimeTZField(null=True)
    value = peewee.IntegerField(null=True)
    category = peewee.TextField(null=True)
    saved_at = DateTimeTZField(constraints=[NOW])

    class Meta:
        table_name = "questions"


class User(BaseModel):
    """Someone who uploads records; only a SHA-256 digest of the access token is kept."""

    id = peewee.BigAutoField()
    name = peewee.TextField()
    token_sha256 = peewee.CharField(max_length=64)
    created_at = DateTimeTZField(constraints=[NOW])

    class Meta:
        table_name = "users"


class Record(BaseModel):
    """An uploaded WAV, stored as an MP3 under MEDIA_DIR at `path` (relative)."""

    id = peewee.UUIDField(primary_key=True)
    user = peewee.ForeignKeyField(User, backref="records", on_delete="CASCADE")
    original_name = peewee.TextField()
    path = peewee.TextField(unique=True)
    size = peewee.BigIntegerField()
    duration = peewee.DoubleField()
    created_at = DateTimeTZField(constraints=[NOW])

    class Meta:
        table_name = "records"


MODELS: list[type[BaseModel]] = [Question, User, Record]


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


class DatabaseMissing(RuntimeError):
    """The server answers but has no such database: waiting would not help."""


def create_tables(wait_seconds: float) -> None:
    """Create missing tables, retrying while the database is still starting (blocking); a database
    that does not exist fails at once, saying how to create it."""
    deadline = time.monotonic() + wait_seconds
    reason = ""
    while True:
        try:
            with database.connection_context():
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


class PreparedStatement:
    """A statement PostgreSQL parses and plans once per connection (PREPARE), then only executes:
    for the hot, fixed-shape statements, where planning costs as much as running."""

    def __init__(self, name: str, parameter_types: Sequence[str], statement: str) -> None:
        self._prepare = f"PREPARE {name} ({', '.join(parameter_types)}) AS {statement}"
        self._execute = f"EXECUTE {name} ({', '.join(['%s'] * len(parameter_types))})"
        self._prepared_on: weakref.WeakSet[Any] = weakref.WeakSet()

    def execute(self, params: Sequence[Any]) -> Any:
        """Run it on this thread's connection (preparing it there first if needed); returns the cursor."""
        connection = database.connection()
        if connection not in self._prepared_on:
            self._prepare_on(connection)
        try:
            return database.execute_sql(self._execute, params)
        except peewee.DatabaseError as error:
            if _sqlstate(error) != INVALID_STATEMENT_NAME:
                raise
        # The session lost it (DISCARD ALL, a pooler in transaction mode): prepare again, once.
        self._prepared_on.discard(connection)
        self._prepare_on(connection)
        return database.execute_sql(self._execute, params)

    def _prepare_on(self, connection: Any) -> None:
        try:
            database.execute_sql(self._prepare)
        except peewee.DatabaseError as error:
            if _sqlstate(error) != DUPLICATE_PREPARED_STATEMENT:
                raise
        self._prepared_on.add(connection)


def _sqlstate(error: peewee.PeeweeException) -> str | None:
    """The SQLSTATE of the driver error Peewee wrapped, if any."""
    return getattr(getattr(error, "orig", None), "pgcode", None)


@with_connection
def ping() -> None:
    """Ask the database a trivial question; raises if it cannot answer."""
    database.execute_sql("SELECT 1")
