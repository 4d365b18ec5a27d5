"""The processes a run needs: a fresh PostgreSQL database, the jService stand-in, the server as the
image runs it, and nginx; each is stopped at the end, and dies with the harness if it is killed."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from embedded_db import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1
STANDIN_LATENCY_MS = 20
STANDIN_POOL_SIZE = 1_000_000
SERVER_LOG_LEVEL = "WARNING"
STOP_GRACE_SECONDS = 30

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the harness dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port that is free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """The child processes of a run, each logging to `<workdir>/<name>.log`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start `command` from the repository root with exactly `env` as its environment."""
        with self.log_path(name).open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # Popen is only called from the main thread
            )
        self.running[name] = process
        return process

    def log_path(self, name: str) -> Path:
        """Where the process `name` writes its output."""
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a process's output."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str) -> int | None:
        """SIGTERM, then SIGKILL after the grace period; returns the exit code."""
        process = self.running.pop(name, None)
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        """Stop every process still running, the last started first."""
        for name in reversed(list(self.running)):
            self.stop(name)


def wait_http(processes: Processes, name: str, port: int, path: str, seconds: float = 60) -> None:
    """Poll until GET `path` answers 200; fail with the process's log when it exits or times out."""
    process = processes.running[name]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{processes.log_tail(name)}")
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer GET {path} within {seconds:g}s:\n{processes.log_tail(name)}")


def base_env() -> dict[str, str]:
    """The environment every child gets besides its own variables: PATH only."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def start_standin(processes: Processes) -> int:
    """`python -m jservice` at 20 ms latency with a pool of 1,000,000 ids; returns its port."""
    port = free_port()
    command = [sys.executable, "-m", "jservice", "--host", HOST, "--port", str(port)]
    command += ["--latency-ms", str(STANDIN_LATENCY_MS), "--pool-size", str(STANDIN_POOL_SIZE)]
    processes.start("standin", command, base_env())
    wait_http(processes, "standin", port, "/api/random?count=1")
    return port


def start_server(
    processes: Processes, database_url: str, standin_port: int, ffmpeg: str | None = None
) -> int:
    """`python server.py` as the image runs it (LOG_LEVEL=WARNING: no access log), with `ffmpeg` as
    its FFMPEG_BINARY when given; returns its port."""
    port = free_port()
    env = {
        **base_env(),
        **({"FFMPEG_BINARY": ffmpeg} if ffmpeg else {}),
        "DATABASE_URL": database_url,
        "JSERVICE_URL": f"http://{HOST}:{standin_port}",
        "HOST": HOST,
        "PORT": str(port),
        "DATA_DIR": str(processes.workdir / "data"),
        "MEDIA_DIR": str(processes.workdir / "media"),
        "LOG_LEVEL": SERVER_LOG_LEVEL,
        # `BENCH_WORKERS=2 make bench` measures the multi-process mode.
        "WORKERS": os.environ.get("BENCH_WORKERS", "1"),
    }
    processes.start("server", [sys.executable, "server.py"], env)
    wait_http(processes, "server", port, "/health")
    return port


NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ audio/mpeg mp3; }}
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


def start_nginx(processes: Processes, nginx: str, root: Path, probe: str) -> int:
    """nginx with 1 worker and sendfile on, serving `root` on a free loopback port from its own
    prefix and config under the work directory; returns the port."""
    prefix = processes.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    # As root, nginx workers would run as nobody, who cannot read the private work directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, user=user, host=HOST, port=port, root=root))
    command = [nginx, "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", str(conf)]
    processes.start("nginx", command, base_env())
    wait_http(processes, "nginx", port, probe, seconds=15)
    return port


@dataclass(frozen=True)
class Database:
    """A fresh database made for this run, on BENCH_DATABASE_URL's server or an embedded one."""

    url: str
    server_url: str
    name: str
    embedded_dir: Path | None

    @property
    def postmaster_pid(self) -> int | None:
        """The embedded PostgreSQL's main process (its backends are its children)."""
        if self.embedded_dir is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.embedded_dir / "postmaster.pid").read_text().split()[0])
        return None


def run_sql(url: str, statement: str) -> None:
    """Run one statement on its own autocommit connection."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def create_database(workdir: Path) -> Database:
    """Create a fresh database: on BENCH_DATABASE_URL's server when set, else on an embedded
    PostgreSQL in the work directory."""
    server_url = os.environ.get("BENCH_DATABASE_URL", "")
    embedded_dir = None
    if not server_url:
        embedded_dir = workdir / "pgdata"
        server_url = start_embedded_postgres(embedded_dir)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    run_sql(server_url, f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    return Database(url, server_url, name, embedded_dir)


def drop_database(database: Database) -> None:
    """Drop the run's database, and stop the embedded PostgreSQL if the run started one."""
    try:
        run_sql(database.server_url, f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")
    finally:
        if database.embedded_dir is not None:
            from pgserver.postgres_server import get_server  # the embedded server's handle, to stop it now

            get_server(database.embedded_dir).cleanup()
