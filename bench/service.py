"""What `python -m bench` and `python -m bench.soak` share: a fresh PostgreSQL database, the jService
stand-in and `python server.py` as the image runs it (and nginx), each stopped at the end and dying
with the harness; WAVs and raw ffmpeg conversions; the CPU and memory of process trees (psutil)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg2

from converters.ffmpeg import find_ffmpeg
from converters.scheduling import schedule_as_batch_work
from embedded_db import start_embedded_postgres
from tests.nginx import find_nginx, nginx_command, write_config  # the tests' runnable nginx wrapper

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STANDIN_LATENCY_MS = 20
STANDIN_POOL_SIZE = 1_000_000
SERVER_LOG_LEVEL = "WARNING"  # no access log, which would dominate the server's CPU under load
STOP_GRACE_SECONDS = 30
FFMPEG_TIMEOUT_SECONDS = 600
PR_SET_PDEATHSIG = 1
IMAGE_FFMPEG = Path(sys.prefix) / "image-ffmpeg"


def ffmpeg_binary() -> str:
    """The ffmpeg the harness measures, both raw and as the server's FFMPEG_BINARY: FFMPEG_BINARY if
    set, else the image's (copied out by `make image-ffmpeg`, which `make bench` runs where a Docker
    engine answers: a static binary, so it runs here as in the container), else this machine's."""
    configured = os.environ.get("FFMPEG_BINARY")
    if configured:
        return find_ffmpeg(configured)
    return str(IMAGE_FFMPEG) if IMAGE_FFMPEG.is_file() else find_ffmpeg(None)


def die_with_parent() -> None:
    """Runs in a child before exec: SIGTERM it when the harness dies, even by SIGKILL."""
    with contextlib.suppress(OSError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_in_workdir(prefix: str, run: Callable[[Path], int]) -> int:
    """Call `run` with a fresh temporary directory, removed afterwards; SIGTERM ends it like Ctrl-C,
    so that everything it started is stopped."""
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return run(workdir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def free_port() -> int:
    """A TCP port that is free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Child processes, each logging to `<workdir>/<name>.log`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start `command` from the repository root with PATH and `env` as its environment."""
        with (self.workdir / f"{name}.log").open("wb") as log:
            self.running[name] = subprocess.Popen(
                command,
                cwd=ROOT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # Popen is only called from the main thread
            )
        return self.running[name]

    def log(self, name: str) -> str:
        """What the process `name` wrote."""
        with contextlib.suppress(OSError):
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        return ""

    def stop(self, name: str) -> int | None:
        """SIGTERM, then SIGKILL after the grace period; the exit code (None if it was not running)."""
        process = self.running.pop(name, None)
        if process is None:
            return None
        process.terminate()
        try:
            return process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        """Stop every process still running, the last started first."""
        for name in reversed(list(self.running)):
            self.stop(name)

    def wait_http(self, name: str, port: int, path: str, seconds: float = 60) -> None:
        """Poll until GET `path` answers 200; fail with the process's log when it exits or times out."""
        process = self.running[name]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and process.poll() is None:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            with contextlib.suppress(OSError):
                connection.request("GET", path)
                if connection.getresponse().status == 200:
                    return
            connection.close()
            time.sleep(0.1)
        tail = "\n".join(self.log(name).splitlines()[-20:])
        raise RuntimeError(f"{name} did not answer GET {path} (exit code {process.poll()}):\n{tail}")


@dataclass(frozen=True)
class Database:
    """A fresh database made for this run, on BENCH_DATABASE_URL's server or an embedded one."""

    url: str
    server_url: str
    name: str
    embedded_dir: Path | None

    @property
    def pid(self) -> int | None:
        """The embedded PostgreSQL's main process (its backends are its children)."""
        if self.embedded_dir is not None:
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


@contextlib.contextmanager
def fresh_database(workdir: Path) -> Iterator[Database]:
    """A database of its own, dropped at the end (and the embedded PostgreSQL stopped, if started)."""
    server_url = os.environ.get("BENCH_DATABASE_URL", "")
    embedded_dir = None if server_url else workdir / "pgdata"
    if embedded_dir is not None:
        server_url = start_embedded_postgres(embedded_dir)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    run_sql(server_url, f"CREATE DATABASE {name}")
    try:
        yield Database(
            urlunsplit(urlsplit(server_url)._replace(path=f"/{name}")), server_url, name, embedded_dir
        )
    finally:
        try:
            run_sql(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            if embedded_dir is not None:
                from pgserver.postgres_server import get_server  # its handle, to stop it now

                get_server(embedded_dir).cleanup()


@dataclass(frozen=True)
class Service:
    """The running server and what it uses."""

    processes: Processes
    database: Database
    port: int
    standin_port: int
    ffmpeg: str
    proxy_port: int | None = None  # nginx in front of the instances (`--instances`)

    @property
    def url(self) -> str:
        """The base URL the scenarios use: the server's, or nginx's in front of the instances."""
        return f"http://{HOST}:{self.proxy_port or self.port}"

    @property
    def pid(self) -> int:
        """The (first) server's process id."""
        return self.processes.running["server"].pid

    @property
    def instance_pids(self) -> list[int]:
        """The process ids of every server instance."""
        return [process.pid for name, process in self.processes.running.items() if name.startswith("server")]

    @property
    def media_dir(self) -> Path:
        """The server's MEDIA_DIR."""
        return self.processes.workdir / "media"

    def stop(self) -> int | None:
        """Stop the server (SIGTERM); its exit code."""
        return self.processes.stop("server")


@contextlib.contextmanager
def running_service(workdir: Path, instances: int | None = None) -> Iterator[Service]:
    """A fresh database, the stand-in (20 ms latency, a pool of 1,000,000 ids) and `python server.py`
    as the image runs it with LOG_LEVEL=WARNING; all stopped and dropped at the end. `instances`:
    that many servers, each on its own port, behind nginx with deploy/nginx/quiz.conf."""
    processes = Processes(workdir)
    ffmpeg = ffmpeg_binary()
    with fresh_database(workdir) as database:
        try:
            standin_port = free_port()
            command = [sys.executable, "-m", "jservice", "--host", HOST, "--port", str(standin_port)]
            command += ["--latency-ms", str(STANDIN_LATENCY_MS), "--pool-size", str(STANDIN_POOL_SIZE)]
            processes.start("standin", command, {})
            processes.wait_http("standin", standin_port, "/api/random?count=1")
            port = free_port()
            env = {
                "DATABASE_URL": database.url,
                "JSERVICE_URL": f"http://{HOST}:{standin_port}",
                "HOST": HOST,
                "PORT": str(port),
                "DATA_DIR": str(workdir / "data"),
                "MEDIA_DIR": str(workdir / "media"),
                "LOG_LEVEL": SERVER_LOG_LEVEL,
                "FFMPEG_BINARY": ffmpeg,
                "WORKERS": os.environ.get("BENCH_WORKERS", "1"),  # `BENCH_WORKERS=2 make bench`
            }
            ports = [port] + [free_port() for _ in range((instances or 1) - 1)]
            for index, instance_port in enumerate(ports):
                name = "server" if index == 0 else f"server-{index + 1}"
                processes.start(name, [sys.executable, "server.py"], {**env, "PORT": str(instance_port)})
                processes.wait_http(name, instance_port, "/health")
            proxy_port = None if instances is None else start_proxy(processes, ports)
            yield Service(processes, database, port, standin_port, ffmpeg, proxy_port)
        finally:
            processes.stop_all()


NGINX_CONF = """daemon off;
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
    server {{ listen {host}:{port}; root {root}; }}
}}
"""


def start_nginx(processes: Processes, nginx: str, root: Path, probe: str) -> int:
    """nginx with 1 worker and sendfile serving `root` on a free loopback port; returns the port."""
    prefix = processes.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    # As root, nginx workers would run as nobody, who cannot read the private work directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, user=user, host=HOST, port=port, root=root))
    processes.start("nginx", nginx_command(nginx, conf), {})
    processes.wait_http("nginx", port, probe, seconds=15)
    return port


def start_proxy(processes: Processes, ports: list[int]) -> int:
    """nginx with the shipped site file, round-robin over the instances on `ports`; returns its port."""
    nginx = find_nginx()
    if nginx is None:
        raise RuntimeError("--instances needs nginx (apt-get install nginx-light)")
    prefix = processes.workdir / "proxy"
    prefix.mkdir()
    port = free_port()
    conf = write_config(prefix, port, [f"{HOST}:{instance}" for instance in ports])
    processes.start("proxy", nginx_command(nginx, conf), {})
    processes.wait_http("proxy", port, "/health", seconds=15)
    return port


def make_wav(seconds: float, path: Path) -> Path:
    """A 44.1 kHz stereo 16-bit sine WAV of `seconds`, made by this machine's ffmpeg (the measured
    one may be the image's, built for WAV to MP3 alone)."""
    ffmpeg = find_ffmpeg(None)
    source = f"sine=frequency=440:sample_rate=44100:duration={seconds:g}"
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source]
    subprocess.run([*command, "-ac", "2", "-c:a", "pcm_s16le", "-y", str(path)], check=True, timeout=600)
    return path


def _die_with_parent_as_batch_work() -> None:
    die_with_parent()
    schedule_as_batch_work()


async def raw_convert(ffmpeg: str, source: Path, target: Path, as_batch_work: bool = False) -> float:
    """`ffmpeg -i in.wav -codec:a libmp3lame -b:a 192k out.mp3` as a user runs it, or scheduled as the
    service runs its own (SCHED_BATCH); returns its wall time in seconds."""
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source)]
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, "-codec:a", "libmp3lame", "-b:a", "192k", str(target),
        preexec_fn=_die_with_parent_as_batch_work if as_batch_work else die_with_parent,
    )  # fmt: skip
    try:
        code = await asyncio.wait_for(process.wait(), FFMPEG_TIMEOUT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0:
        raise RuntimeError(f"ffmpeg exited with {code} converting {source}")
    return time.perf_counter() - start


def tree(pid: int | None) -> list[psutil.Process]:
    """A process and its live descendants (ffmpeg children included); empty when it is gone."""
    if pid is None:
        return []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def tree_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process tree, including children it already reaped."""
    total = 0.0
    for process in tree(pid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of the harness's children that have been reaped (wrk, raw ffmpeg)."""
    times = psutil.Process().cpu_times()
    return float(times.children_user + times.children_system)


def tree_memory(pid: int) -> tuple[int, int, int]:
    """RSS and PSS summed over a process tree, in bytes, and its process count."""
    rss = pss = count = 0
    for process in tree(pid):
        with contextlib.suppress(psutil.Error):
            memory = process.memory_full_info()
            rss, pss, count = rss + memory.rss, pss + memory.pss, count + 1
    return rss, pss, count


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have been busy since boot (anyone's work)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - times.iowait)
