"""`make run` as a person uses it: a handful of lines that end with where to go, and nothing left
running after Ctrl-C, a closed terminal (SIGHUP), or a killed service and the next run; start-up
errors in one line that says what to do."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest

from config import VARIABLES, Settings
from server import docs_url
from tests.support import ROOT, free_port, start_server_process

# A make of its own (not a sub-make of the `make test` that may be running these tests), with the
# service's defaults (none of its settings from this environment).
MAKE_ENV = {
    name: value
    for name, value in os.environ.items()
    if name not in VARIABLES and name not in ("MAKEFLAGS", "MAKELEVEL")
}
READY_SECONDS = 120
STOP_SECONDS = 60


@pytest.fixture(scope="module")
def make_run_installed() -> None:
    """`make run` with nothing left to install (the tests must not time an install)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    stamp = subprocess.run(["make", "-q", ".venv/bin/.run-installed"], cwd=ROOT, env=MAKE_ENV, check=False)
    if stamp.returncode != 0:
        pytest.skip("`make run` would install its packages first: run `make run` (or `make test`) once")


@pytest.fixture
def data_dir(pg_parent: Path) -> Iterator[Path]:
    """DATA_DIR of one test (outside pytest's own temporary tree: see `pg_parent`)."""
    directory = pg_parent / f"run-{uuid.uuid4().hex[:8]}"
    yield directory
    left = postgres_of(directory)
    for process in left:
        process.kill()
    assert not left, "an embedded PostgreSQL was left running"


class MakeRun:
    """`make run` in a session of its own, as in a terminal: a signal to its group reaches every
    process of it, as Ctrl-C or a closed terminal does."""

    def __init__(self, data_dir: Path, port: int, standin_port: int) -> None:
        self.port = port
        self.standin_port = standin_port
        self.log_path = data_dir.with_name(f"{data_dir.name}-{uuid.uuid4().hex[:6]}.log")
        env = {**MAKE_ENV, "PORT": str(port), "DATA_DIR": str(data_dir)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "run", f"STANDIN_PORT={standin_port}"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def wait_ready(self) -> list[str]:
        """The lines printed until the service said it is ready."""
        deadline = time.monotonic() + READY_SECONDS
        while not any("ready:" in line for line in self.lines):
            assert self.process.poll() is None, "make run ended:\n" + "\n".join(self.lines)
            assert time.monotonic() < deadline, "make run not ready:\n" + "\n".join(self.lines)
            time.sleep(0.1)
        return self.lines

    @property
    def server_pid(self) -> int:
        match = re.search(r"listening on .* \(pid (\d+)\)", "\n".join(self.lines))
        assert match, self.lines
        return int(match.group(1))

    def signal(self, signum: int) -> None:
        """Send `signum` to every process of the run, as the terminal does."""
        os.killpg(self.process.pid, signum)

    def wait(self) -> int:
        return self.process.wait(timeout=STOP_SECONDS)

    def stop(self, signum: int) -> None:
        """Stop the run as a terminal does, and check that the service stopped cleanly (make itself
        dies of the signal, as make does)."""
        self.signal(signum)
        assert self.wait() in (0, -signum, 128 + signum), self.lines
        assert any(line.endswith("server: stopped") for line in self.lines), self.lines

    def standin_left(self) -> list[psutil.Process]:
        return processes_with(f"-m jservice --port {self.standin_port}")


def processes_with(text: str) -> list[psutil.Process]:
    """Running processes whose command line contains `text`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def postgres_of(data_dir: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL server processes of this DATA_DIR."""
    deadline = time.monotonic() + 10  # pg_ctl stop -w returns once the postmaster is gone; children follow
    while (left := processes_with(str(data_dir / "pgdata"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def start(data_dir: Path) -> MakeRun:
    return MakeRun(data_dir, free_port(), free_port())


def test_make_run_prints_a_handful_of_lines_ending_with_where_to_go(make_run_installed, data_dir):
    run = start(data_dir)
    lines = run.wait_ready()
    assert lines[-1].endswith(f"ready: http://localhost:{run.port}/docs")
    assert len(lines) <= 5, lines
    assert not any("pgserver" in line or "XDG_RUNTIME_DIR" in line for line in lines), lines
    connection = socket.create_connection(("127.0.0.1", run.port))
    connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head = connection.makefile("rb").read().split(b"\r\n\r\n")[0]
    connection.close()
    assert head.startswith(b"HTTP/1.1 302") and b"\r\nLocation: /docs" in head
    run.stop(signal.SIGINT)
    assert not any(line.startswith("make: ***") for line in run.lines), run.lines
    assert not run.standin_left()


def test_a_closed_terminal_stops_the_service_and_its_database(make_run_installed, data_dir):
    run = start(data_dir)
    run.wait_ready()
    run.stop(signal.SIGHUP)
    assert not postgres_of(data_dir)
    assert json.loads((data_dir / "pgdata" / ".handle_pids.json").read_text()) == []
    assert not run.standin_left()


def test_the_run_after_a_killed_service_stops_the_database_it_left(make_run_installed, data_dir):
    killed = start(data_dir)
    killed.wait_ready()
    os.kill(killed.server_pid, signal.SIGKILL)
    killed.wait()
    assert postgres_of(data_dir), "SIGKILL leaves the embedded PostgreSQL running until the next run"
    assert not killed.standin_left()
    run = start(data_dir)
    run.wait_ready()
    run.stop(signal.SIGINT)
    assert not postgres_of(data_dir)


def test_a_stand_in_that_cannot_start_stops_make_run_with_one_line(make_run_installed, data_dir):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        standin_port = taken.getsockname()[1]
        run = MakeRun(data_dir, free_port(), standin_port)
        assert run.wait() != 0
    said = [line for line in run.lines if not line.startswith("make: ***")]
    assert len(said) == 1, run.lines
    assert f"port {standin_port} is in use" in said[0] and "STANDIN_PORT=" in said[0]
    assert not data_dir.exists(), "the service must not start without its stand-in"


def test_a_port_in_use_is_named_with_what_to_do(database_url, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path), "PORT": str(port)}
        server = start_server_process({**env, "HOST": "127.0.0.1"}, tmp_path / "server.log")
        assert server.wait(timeout=STOP_SECONDS) != 0
    last = (tmp_path / "server.log").read_text().splitlines()[-1]
    assert last == f"cannot start: port {port} is in use; choose a free one with PORT=, e.g. PORT=8080"


def test_a_missing_database_is_not_waited_for_and_says_createdb(database_url, tmp_path):
    missing = urlunsplit(urlsplit(database_url)._replace(path="/no_such_database"))
    env = {"DATABASE_URL": missing, "DATA_DIR": str(tmp_path), "HOST": "127.0.0.1", "PORT": str(free_port())}
    server = start_server_process(env, tmp_path / "server.log")
    # DB_WAIT_SECONDS is 30: it must fail before that, not after 60 retries.
    assert server.wait(timeout=20) != 0
    lines = (tmp_path / "server.log").read_text().splitlines()
    assert lines[-1].startswith('cannot start: DatabaseMissing: database "no_such_database" does not exist')
    assert "createdb " in lines[-1] and lines[-1].endswith(" no_such_database")
    assert not any("waiting" in line for line in lines), lines


@pytest.mark.parametrize(
    ("overrides", "url"),
    [
        ({}, "http://localhost:8000/docs"),
        ({"host": "127.0.0.1"}, "http://127.0.0.1:8000/docs"),
        ({"host": "::1"}, "http://[::1]:8000/docs"),
        ({"public_url": "https://audio.example.org"}, "https://audio.example.org/docs"),
    ],
)
def test_the_ready_line_names_where_a_browser_finds_the_docs(overrides, url):
    assert docs_url(replace(Settings(), **overrides), 8000) == url
