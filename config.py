"""Service configuration, read from the environment once at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; built by `load_settings`, never mutated."""

    database_url: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    data_dir: Path = Path("data")
    jservice_url: str = "https://jservice.io"
    jservice_timeout: float = 10.0
    jservice_max_calls: int = 20
    jservice_budget_seconds: float = 30.0
    max_questions_num: int = 100
    db_wait_seconds: float = 30.0
    db_pool_size: int = 4
    shutdown_grace_seconds: float = 15.0
    log_level: str = "INFO"
    media_dir: Path | None = None  # None: DATA_DIR/media
    public_url: str | None = None
    max_upload_bytes: int = 100 * 1024 * 1024
    upload_timeout: float = 600.0
    convert_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    convert_queue: int = 8
    convert_timeout: float = 300.0
    mp3_bitrate: str = "192k"
    ffmpeg_binary: str | None = None
    http_idle_timeout: float = 60.0
    http_body_timeout: float = 60.0
    workers: int = 1
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    orphan_grace_seconds: float = 3600.0
    media_store: str = "local"  # "local": the media directory; "s3": an S3-compatible bucket
    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_bucket: str | None = None
    s3_region: str | None = None  # None: AWS_REGION, AWS_DEFAULT_REGION or the profile's, else us-east-1

    @property
    def media_root(self) -> Path:
        """Where MP3 files live (MEDIA_DIR, else DATA_DIR/media)."""
        return self.media_dir if self.media_dir is not None else self.data_dir / "media"

    @property
    def scratch_root(self) -> Path:
        """Where each instance keeps uploads and MP3s in progress, in a folder of its own: beside
        the MP3s for the media directory (a rename then puts them in place), else DATA_DIR/scratch."""
        return self.media_root / ".tmp" if self.media_store == "local" else self.data_dir / "scratch"

    @property
    def embedded_db_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its cluster when DATABASE_URL is unset."""
        return self.data_dir / "pgdata"


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _int_in(low: int, high: int, value: str) -> int:
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"must be between {low} and {high}")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 < number < 86400:
        raise ValueError("must be a number of seconds above 0")
    return number


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value.strip().rstrip("/")


def _postgres_url(value: str) -> str:
    if urlsplit(value.strip()).scheme not in ("postgres", "postgresql"):
        raise ValueError("must be a postgresql:// URL")
    return value.strip()


def _bitrate(value: str) -> str:
    match = re.fullmatch(r"(\d{1,3})k", value.strip())
    if not match or not 32 <= int(match.group(1)) <= 320:
        raise ValueError("must be a bitrate from 32k to 320k, such as 192k")
    return match.group(0)


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _path(value: str) -> Path:
    return Path(_text(value))


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(filter(None, (part.strip().rstrip("/").lower() for part in value.split(","))))
    for origin in origins:
        parts = urlsplit(origin)
        exact = parts.scheme in ("http", "https") and f"{parts.scheme}://{parts.netloc}" == origin
        if origin != "*" and (not exact or not parts.hostname or "@" in parts.netloc):
            raise ValueError(f"{origin!r} is neither * nor an origin such as https://app.example.org")
    return origins


def _networks(value: str) -> tuple[Network, ...]:
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()
        )
    except ValueError:
        raise ValueError("must be IP addresses or CIDR networks, separated by commas") from None


def _media_store(value: str) -> str:
    if value.strip() not in ("local", "s3"):
        raise ValueError("must be local or s3")
    return value.strip()


def _bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value.strip()):
        raise ValueError("must be an S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens")
    return value.strip()


# Every environment variable the service reads: (Settings field, parser).
VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("database_url", _postgres_url),
    "HOST": ("host", _text),
    "PORT": ("port", partial(_int_in, 0, 65535)),
    "DATA_DIR": ("data_dir", _path),
    "JSERVICE_URL": ("jservice_url", _http_url),
    "JSERVICE_TIMEOUT": ("jservice_timeout", _seconds),
    "JSERVICE_MAX_CALLS": ("jservice_max_calls", partial(_int_in, 1, 1000)),
    "JSERVICE_BUDGET_SECONDS": ("jservice_budget_seconds", _seconds),
    "MAX_QUESTIONS_NUM": ("max_questions_num", partial(_int_in, 0, 100_000)),
    "DB_WAIT_SECONDS": ("db_wait_seconds", _seconds),
    "DB_POOL_SIZE": ("db_pool_size", partial(_int_in, 1, 200)),
    "SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", _seconds),
    "LOG_LEVEL": ("log_level", _log_level),
    "MEDIA_DIR": ("media_dir", _path),
    "PUBLIC_URL": ("public_url", _http_url),
    "MAX_UPLOAD_BYTES": ("max_upload_bytes", partial(_int_in, 1024, 2**40)),
    "UPLOAD_TIMEOUT": ("upload_timeout", _seconds),
    "CONVERT_WORKERS": ("convert_workers", partial(_int_in, 1, 256)),
    "CONVERT_QUEUE": ("convert_queue", partial(_int_in, 0, 10_000)),
    "CONVERT_TIMEOUT": ("convert_timeout", _seconds),
    "MP3_BITRATE": ("mp3_bitrate", _bitrate),
    "FFMPEG_BINARY": ("ffmpeg_binary", _text),
    "HTTP_IDLE_TIMEOUT": ("http_idle_timeout", _seconds),
    "HTTP_BODY_TIMEOUT": ("http_body_timeout", _seconds),
    "WORKERS": ("workers", partial(_int_in, 1, 64)),
    "CORS_ORIGINS": ("cors_origins", _origins),
    "TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "ORPHAN_GRACE_SECONDS": ("orphan_grace_seconds", _seconds),
    "MEDIA_STORE": ("media_store", _media_store),
    "S3_ENDPOINT_URL": ("s3_endpoint_url", _http_url),
    "S3_BUCKET": ("s3_bucket", _bucket),
    "S3_REGION": ("s3_region", _text),
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from environment variables, raising ConfigError on the first bad one."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (field_name, parse) in VARIABLES.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[field_name] = parse(raw)
        except ValueError as error:
            raise ConfigError(f"{name}={raw!r}: {error}") from None
    if values.get("media_store") == "s3" and "s3_bucket" not in values:
        raise ConfigError("S3_BUCKET: must be set when MEDIA_STORE=s3")
    return Settings(**values)
