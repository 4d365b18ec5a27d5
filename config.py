"""Service configuration, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


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
    db_pool_size: int = 8
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

    @property
    def media_root(self) -> Path:
        """Where MP3 files live (MEDIA_DIR, else DATA_DIR/media)."""
        return self.media_dir if self.media_dir is not None else self.data_dir / "media"

    @property
    def embedded_db_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its cluster when DATABASE_URL is unset."""
        return self.data_dir / "pgdata"


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


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


def _read(environ: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as error:
        raise ConfigError(f"{name}={raw!r}: {error}") from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from environment variables, raising ConfigError on the first bad one."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    return Settings(
        database_url=_read(env, "DATABASE_URL", _postgres_url, defaults.database_url),
        host=_read(env, "HOST", _text, defaults.host),
        port=_read(env, "PORT", _int_in(0, 65535), defaults.port),
        data_dir=_read(env, "DATA_DIR", lambda v: Path(_text(v)), defaults.data_dir),
        jservice_url=_read(env, "JSERVICE_URL", _http_url, defaults.jservice_url),
        jservice_timeout=_read(env, "JSERVICE_TIMEOUT", _seconds, defaults.jservice_timeout),
        jservice_max_calls=_read(env, "JSERVICE_MAX_CALLS", _int_in(1, 1000), defaults.jservice_max_calls),
        jservice_budget_seconds=_read(
            env, "JSERVICE_BUDGET_SECONDS", _seconds, defaults.jservice_budget_seconds
        ),
        max_questions_num=_read(env, "MAX_QUESTIONS_NUM", _int_in(0, 100_000), defaults.max_questions_num),
        db_wait_seconds=_read(env, "DB_WAIT_SECONDS", _seconds, defaults.db_wait_seconds),
        db_pool_size=_read(env, "DB_POOL_SIZE", _int_in(1, 200), defaults.db_pool_size),
        shutdown_grace_seconds=_read(
            env, "SHUTDOWN_GRACE_SECONDS", _seconds, defaults.shutdown_grace_seconds
        ),
        log_level=_read(env, "LOG_LEVEL", _log_level, defaults.log_level),
        media_dir=_read(env, "MEDIA_DIR", lambda v: Path(_text(v)), defaults.media_dir),
        public_url=_read(env, "PUBLIC_URL", _http_url, defaults.public_url),
        max_upload_bytes=_read(env, "MAX_UPLOAD_BYTES", _int_in(1024, 2**40), defaults.max_upload_bytes),
        upload_timeout=_read(env, "UPLOAD_TIMEOUT", _seconds, defaults.upload_timeout),
        convert_workers=_read(env, "CONVERT_WORKERS", _int_in(1, 256), defaults.convert_workers),
        convert_queue=_read(env, "CONVERT_QUEUE", _int_in(0, 10_000), defaults.convert_queue),
        convert_timeout=_read(env, "CONVERT_TIMEOUT", _seconds, defaults.convert_timeout),
        mp3_bitrate=_read(env, "MP3_BITRATE", _bitrate, defaults.mp3_bitrate),
        ffmpeg_binary=_read(env, "FFMPEG_BINARY", _text, defaults.ffmpeg_binary),
    )
