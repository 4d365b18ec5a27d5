"""The media store in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph...), through boto3.

boto3 blocks, like every store: the service calls these methods on its I/O executor. One client
per store, shared by the executor's threads (boto3 clients are thread-safe)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config import Settings
from storage import CHUNK_BYTES, StorageFull, StorageUnavailable
from storage.local import KEY

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

# Larger files go up in 8 MiB parts, four at a time: a part that fails is retried alone.
TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=4
)
CONNECT_TIMEOUT = 5.0
# How long the store may stay silent while a request or a download waits on it. With the retries,
# a dead store fails a call after at most about 3 x (5 + 20) s plus the backoff between tries.
READ_TIMEOUT = 20.0
MAX_ATTEMPTS = 3  # the first try and two retries (botocore's "standard" mode: 5xx, throttling, resets)
# A download holds a connection while its client reads; beyond this many, urllib3 opens extra
# connections and closes them afterwards instead of keeping them.
MAX_CONNECTIONS = 50
DEFAULT_REGION = "us-east-1"
# What stores say when they have no room: S3's and Ceph's quota, MinIO's full disk and quota.
FULL_CODES = frozenset(
    {"QuotaExceeded", "EntityTooLarge", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded"}
)
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Store:
    """MP3s as objects `<2 hex>/<record uuid>.mp3` in one bucket that belongs to the service."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    @classmethod
    def connect(
        cls,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: tuple[str, str] | None = None,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> S3Store:
        """A store on `bucket` at `endpoint_url` (None: AWS). Region and credentials None: boto3's
        usual chain (AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN,
        AWS_PROFILE and ~/.aws, web identity, the instance's role), else us-east-1 for the region."""
        access_key, secret_key = credentials or (None, None)
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key)
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=MAX_CONNECTIONS,
            # S3-compatible servers are reached by path (http://host/bucket/key): their names
            # rarely resolve as bucket.host. AWS itself gets its virtual-host addressing.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or session.region_name or DEFAULT_REGION,
            config=config,
        )
        return cls(client, bucket)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """The store MEDIA_STORE=s3 asks for (S3_BUCKET, S3_ENDPOINT_URL, S3_REGION)."""
        if settings.s3_bucket is None:
            raise ValueError("S3_BUCKET is not set")
        return cls.connect(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region)

    def check(self) -> None:
        """Raise StorageUnavailable unless the bucket answers to these credentials (for start-up)."""
        try:
            with _translated(f"bucket {self.bucket}"):
                self.client.head_bucket(Bucket=self.bucket)
        except FileNotFoundError:
            raise StorageUnavailable(f"bucket {self.bucket} does not exist") from None

    def put(self, scratch: Path, key: str) -> None:
        """Upload `scratch` as `key` (multipart when large), then delete it, stored or not."""
        try:
            with _translated(key):
                self.client.upload_file(
                    str(scratch), self.bucket, key, ExtraArgs={"ContentType": "audio/mpeg"}, Config=TRANSFER
                )
        finally:
            scratch.unlink(missing_ok=True)

    def size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            with _translated(key):
                return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except FileNotFoundError:
            return None

    def read(self, key: str, start: int, end: int) -> Generator[bytes, None, None]:
        """Bytes `start` to `end` (exclusive) of the object, fetched with a Range and passed on in
        pieces of at most CHUNK_BYTES as they arrive. FileNotFoundError when the object is gone."""
        if end <= start:
            return
        with _translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            body = response["Body"]
            try:
                if response["ContentLength"] != end - start:  # a store that ignored the Range
                    raise StorageUnavailable(
                        f"{key}: asked for {end - start} bytes, got {response['ContentLength']}"
                    )
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()  # a download stopped early does not leave the connection reading

    def delete(self, key: str) -> None:
        """Delete the object; deleting an absent one is no error (S3 answers 204 either way)."""
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """The service's keys whose objects were last written more than `seconds` ago, page by page."""
        cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
        with _translated(f"bucket {self.bucket}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for item in page.get("Contents", []):
                    # Only keys of the service's shape, as in the local store: a bucket that also
                    # holds other objects by mistake does not lose them to the sweep.
                    if item["LastModified"] < cutoff and KEY.fullmatch(item["Key"]):
                        yield item["Key"]


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """boto3's errors as the store's: StorageFull, StorageUnavailable, FileNotFoundError."""
    try:
        yield
    except ClientError as error:
        raise _store_error(error, what) from error
    except S3UploadFailedError as error:
        # upload_file hides the ClientError, with its code and status, behind this one.
        cause = error.__context__
        raise (
            _store_error(cause, what)
            if isinstance(cause, ClientError)
            else StorageUnavailable(f"{what}: {error}")
        ) from error
    except BotoCoreError as error:  # unreachable, timed out, cut off, no credentials
        raise StorageUnavailable(f"{what}: {error}") from error


def _store_error(error: ClientError, what: str) -> OSError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in FULL_CODES or status == 507:
        return StorageFull(f"{what}: the store is full ({code or status})")
    if code != "NoSuchBucket" and (code in NOT_FOUND_CODES or status == 404):
        return FileNotFoundError(f"{what}: no such object")
    return StorageUnavailable(f"{what}: the store answered {code or status}")
