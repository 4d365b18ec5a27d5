"""The media store interface (storage/__init__.py), held to one contract by every store: a local
directory and an S3-compatible bucket on a real server (SeaweedFS). Then what only S3 has: its
failures, its settings, its credentials."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from config import ConfigError, Settings, load_settings
from storage import CHUNK_BYTES, MediaStore, StorageFull, StorageUnavailable, sweep_orphans
from storage.s3 import S3Store, _store_error
from tests.s3server import SeaweedFS

MIB = 1024 * 1024
# Larger than S3Store's 8 MiB multipart threshold: goes up in three parts.
LARGE_BYTES = 20 * MIB
# How long a failing call may take before the test calls it a hang (retries and backoff included).
HANG_SECONDS = 60


def new_key() -> str:
    """A key of the service's shape, `<2 hex>/<record uuid>.mp3`."""
    record = uuid.uuid4()
    return f"{record.hex[:2]}/{record}.mp3"


def scratch_file(directory: Path, data: bytes) -> Path:
    path = directory / f"{uuid.uuid4().hex}.mp3"
    path.write_bytes(data)
    return path


def wait_for(check: Callable[[], Any], deadline: float = 10.0) -> Any:
    """Poll `check()` until it is truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not (result := check()):
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline}s")
        time.sleep(0.05)
    return result


def within(seconds: float, work: Callable[[], Any]) -> Any:
    """Run `work` on a thread and return its result; fail the test if it has not ended in `seconds`."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(work).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)  # a call that hangs fails the test now, not when it ends


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MediaStore:
    """Each store in turn, empty."""
    if request.param == "local":
        local = pytest.importorskip("storage.local", reason="the local-directory store is not there yet")
        made: MediaStore = local.LocalStore(tmp_path / "media")
        return made
    server: SeaweedFS = request.getfixturevalue("s3_server")
    return S3Store.connect(
        request.getfixturevalue("s3_bucket"), server.endpoint_url, credentials=server.credentials
    )


@pytest.fixture
def s3_store(s3_server: SeaweedFS, s3_bucket: str) -> S3Store:
    return S3Store.connect(s3_bucket, s3_server.endpoint_url, credentials=s3_server.credentials)


# The contract, for every store


def test_put_stores_the_file_and_consumes_it(store, tmp_path):
    data = random.Random(1).randbytes(3 * CHUNK_BYTES + 123)
    scratch, key = scratch_file(tmp_path, data), new_key()
    store.put(scratch, key)
    assert not scratch.exists()
    assert store.size(key) == len(data)
    assert b"".join(store.read(key, 0, len(data))) == data


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),  # the first byte
        (3 * CHUNK_BYTES + 122, 3 * CHUNK_BYTES + 123),  # the last byte
        (CHUNK_BYTES - 10, 2 * CHUNK_BYTES + 10),  # the middle, across two chunk boundaries
        (CHUNK_BYTES, 2 * CHUNK_BYTES),  # exactly one chunk's worth, not at the start
        (7, 7),  # nothing
    ],
)
def test_read_returns_exactly_the_range_in_bounded_pieces(store, tmp_path, start, end):
    data = random.Random(2).randbytes(3 * CHUNK_BYTES + 123)
    key = new_key()
    store.put(scratch_file(tmp_path, data), key)
    pieces = list(store.read(key, start, end))
    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(piece) <= CHUNK_BYTES for piece in pieces)


def test_a_large_file_round_trips_and_is_read_in_pieces(store, tmp_path):
    # Written to disk a MiB at a time, never held whole: the test itself stays small in memory.
    scratch, key, digest = tmp_path / "large.mp3", new_key(), hashlib.sha256()
    generator = random.Random(3)
    with scratch.open("wb") as file:
        for _ in range(LARGE_BYTES // MIB):
            piece = generator.randbytes(MIB)
            digest.update(piece)
            file.write(piece)
    with scratch.open("rb") as file:
        file.seek(8 * MIB - 5)
        across_parts = file.read(10)  # where the first and second uploaded parts meet
    store.put(scratch, key)
    assert not scratch.exists()
    assert store.size(key) == LARGE_BYTES
    assert b"".join(store.read(key, 8 * MIB - 5, 8 * MIB + 5)) == across_parts

    tracemalloc.start()
    try:
        read, pieces = hashlib.sha256(), 0
        for piece in store.read(key, 0, LARGE_BYTES):
            assert len(piece) <= CHUNK_BYTES
            read.update(piece)
            pieces += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read.digest() == digest.digest()
    assert pieces >= LARGE_BYTES // CHUNK_BYTES
    # A piece being handed on and the next one arriving: about two pieces, never the whole file.
    assert peak < 4 * CHUNK_BYTES, f"reading {LARGE_BYTES} bytes took {peak} bytes of memory at its peak"


def test_an_absent_object_has_no_size_and_cannot_be_read(store):
    key = new_key()
    assert store.size(key) is None
    with pytest.raises(FileNotFoundError):
        list(store.read(key, 0, 10))


def test_delete_removes_the_object_and_is_idempotent(store, tmp_path):
    key = new_key()
    store.put(scratch_file(tmp_path, b"mp3"), key)
    store.delete(key)
    assert store.size(key) is None
    store.delete(key)
    store.delete(new_key())  # never there


def test_keys_older_than_counts_from_when_the_object_was_stored(store, tmp_path):
    key = new_key()
    store.put(scratch_file(tmp_path, b"mp3"), key)
    assert key not in set(store.keys_older_than(60))
    wait_for(lambda: key in set(store.keys_older_than(0)))


def test_the_sweep_deletes_only_old_objects_without_a_row(store, tmp_path):
    with_row, orphan = new_key(), new_key()
    for key in (with_row, orphan):
        store.put(scratch_file(tmp_path, b"mp3"), key)
    asked: list[list[str]] = []

    def rows(keys: list[str]) -> set[str]:  # stands for the database query for these keys' rows
        asked.append(keys)
        return {with_row} & set(keys)

    assert sweep_orphans(store, rows, grace=60) == 0  # both just stored: within the grace period
    assert store.size(orphan) == 3
    wait_for(lambda: {with_row, orphan} <= set(store.keys_older_than(0)))
    assert sweep_orphans(store, rows, grace=0) == 1
    assert store.size(orphan) is None
    assert store.size(with_row) == 3
    assert sorted(asked[-1]) == sorted([with_row, orphan])


# The S3 store only


def test_large_files_go_up_in_parts(s3_store, tmp_path):
    scratch, key = tmp_path / "large.mp3", new_key()
    with scratch.open("wb") as file:
        file.truncate(LARGE_BYTES)  # sparse: nothing in memory, nearly nothing on disk
    s3_store.put(scratch, key)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag: three 8 MiB parts
    assert head["ContentType"] == "audio/mpeg"


def test_only_keys_of_the_services_shape_are_listed(s3_store, s3_server):
    key = new_key()
    client = s3_server.client
    for other in (key, "notes.txt", "backups/2026/all.mp3", "AB/upper.mp3"):
        client.put_object(Bucket=s3_store.bucket, Key=other, Body=b"x")
    assert wait_for(lambda: set(s3_store.keys_older_than(0))) == {key}


def test_a_missing_bucket_is_unavailable_and_the_scratch_file_is_gone(s3_server, tmp_path):
    store = S3Store.connect("no-such-bucket", s3_server.endpoint_url, credentials=s3_server.credentials)
    scratch = scratch_file(tmp_path, b"mp3")
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        store.put(scratch, new_key())
    assert not scratch.exists()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.check()


def test_wrong_credentials_are_unavailable_not_a_crash(s3_server, s3_bucket, tmp_path):
    store = S3Store.connect(s3_bucket, s3_server.endpoint_url, credentials=(s3_server.access_key, "wrong"))
    with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch"):
        store.put(scratch_file(tmp_path, b"mp3"), new_key())
    assert list(s3_server.client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])) == []


@pytest.fixture
def stopped_endpoint() -> Iterator[str]:
    """A loopback address where nothing listens: a store that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # held, so no one else gets the port meanwhile; never listens
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class SilentServer:
    """A loopback server that takes connections and never answers: a store that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            with contextlib.suppress(TimeoutError):
                self.connections.append(self.listener.accept()[0])

    def close(self) -> None:
        self.running = False
        self.thread.join()
        for connection in [*self.connections, self.listener]:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_stopped_store_is_unavailable_and_the_scratch_file_is_gone(stopped_endpoint, tmp_path):
    store = S3Store.connect("media", stopped_endpoint, credentials=("key", "secret"))
    scratch = scratch_file(tmp_path, b"mp3")
    with pytest.raises(StorageUnavailable, match="Could not connect"):
        within(HANG_SECONDS, lambda: store.put(scratch, new_key()))
    assert not scratch.exists()
    for call in (lambda: store.size(new_key()), lambda: list(store.keys_older_than(0))):
        with pytest.raises(StorageUnavailable):
            within(HANG_SECONDS, call)


def test_a_silent_store_times_out_after_a_bounded_number_of_tries(silent_server, tmp_path):
    store = S3Store.connect(
        "media", silent_server.url, credentials=("key", "secret"), read_timeout=0.5, max_attempts=2
    )
    scratch = scratch_file(tmp_path, b"mp3")
    with pytest.raises(StorageUnavailable, match="Read timeout"):
        within(HANG_SECONDS, lambda: store.put(scratch, new_key()))
    assert not scratch.exists()
    assert len(silent_server.connections) == 2  # one per try: each timed-out connection is dropped
    with pytest.raises(StorageUnavailable, match="Read timeout"):
        within(HANG_SECONDS, lambda: list(store.read(new_key(), 0, 10)))
    assert len(silent_server.connections) == 4


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("QuotaExceeded", 403, StorageFull),
        ("XMinioStorageFull", 507, StorageFull),
        ("InsufficientStorage", 507, StorageFull),
        ("EntityTooLarge", 400, StorageFull),
        ("InternalError", 500, StorageUnavailable),
        ("SlowDown", 503, StorageUnavailable),
        ("AccessDenied", 403, StorageUnavailable),
        ("NoSuchBucket", 404, StorageUnavailable),
        ("NoSuchKey", 404, FileNotFoundError),
        ("404", 404, FileNotFoundError),
    ],
)
def test_store_answers_become_the_store_errors(code, status, error):
    # Answers SeaweedFS cannot be made to give (its full disk makes writes wait, not fail).
    answer: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    assert type(_store_error(ClientError(answer, "PutObject"), "ab/key.mp3")) is error


# Settings and credentials


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MEDIA_STORE": "s3"}, "S3_BUCKET"),
        ({"MEDIA_STORE": "bucket"}, "MEDIA_STORE"),
        ({"MEDIA_STORE": "s3", "S3_BUCKET": "Media_Files"}, "S3_BUCKET"),
        ({"MEDIA_STORE": "s3", "S3_BUCKET": "media", "S3_ENDPOINT_URL": "seaweedfs:8333"}, "S3_ENDPOINT_URL"),
    ],
)
def test_bad_store_settings_name_their_variable(environ, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ)


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS settings from this machine's environment or home directory."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return monkeypatch


def test_from_settings_takes_credentials_the_aws_way(aws_environment, s3_server, s3_bucket, tmp_path):
    aws_environment.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    aws_environment.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    settings = load_settings(
        {key: value for key, value in s3_server.environ(s3_bucket).items() if "AWS" not in key}
    )
    store = S3Store.from_settings(settings)
    key = new_key()
    store.put(scratch_file(tmp_path, b"mp3"), key)
    assert store.size(key) == 3
    store.check()


def test_the_region_follows_s3_region_then_aws_then_us_east_1(aws_environment):
    assert S3Store.from_settings(Settings(s3_bucket="media")).client.meta.region_name == "us-east-1"
    aws_environment.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert S3Store.from_settings(Settings(s3_bucket="media")).client.meta.region_name == "eu-west-1"
    store = S3Store.from_settings(Settings(s3_bucket="media", s3_region="ap-south-1"))
    assert store.client.meta.region_name == "ap-south-1"
