"""config.py: every setting's bounds on both sides, and the one-line error that names the variable."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from config import ConfigError, Settings, load_settings


def refusal(name: str, raw: str) -> str:
    """The ConfigError message for one bad variable."""
    with pytest.raises(ConfigError) as refused:
        load_settings({name: raw})
    return str(refused.value)


INTEGERS = [
    ("PORT", "port", 0, 65535),
    ("JSERVICE_MAX_CALLS", "jservice_max_calls", 1, 1000),
    ("MAX_QUESTIONS_NUM", "max_questions_num", 0, 100_000),
    ("DB_POOL_SIZE", "db_pool_size", 1, 200),
    ("MAX_UPLOAD_BYTES", "max_upload_bytes", 1024, 2**40),
    ("CONVERT_WORKERS", "convert_workers", 1, 256),
    ("CONVERT_QUEUE", "convert_queue", 0, 10_000),
    ("WORKERS", "workers", 1, 64),
]


@pytest.mark.parametrize(("name", "field", "low", "high"), INTEGERS)
def test_integer_settings_take_their_bounds_and_refuse_one_beyond(name, field, low, high):
    assert getattr(load_settings({name: str(low)}), field) == low
    assert getattr(load_settings({name: f" {high} "}), field) == high
    for beyond in (low - 1, high + 1):
        assert refusal(name, str(beyond)) == f"{name}='{beyond}': must be between {low} and {high}"


def test_an_integer_setting_must_be_an_integer():
    assert refusal("PORT", "eighty") == "PORT='eighty': invalid literal for int() with base 10: 'eighty'"


SECONDS = [
    ("JSERVICE_TIMEOUT", "jservice_timeout"),
    ("JSERVICE_BUDGET_SECONDS", "jservice_budget_seconds"),
    ("DB_WAIT_SECONDS", "db_wait_seconds"),
    ("SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds"),
    ("UPLOAD_TIMEOUT", "upload_timeout"),
    ("CONVERT_TIMEOUT", "convert_timeout"),
    ("HTTP_IDLE_TIMEOUT", "http_idle_timeout"),
    ("HTTP_BODY_TIMEOUT", "http_body_timeout"),
    ("ORPHAN_GRACE_SECONDS", "orphan_grace_seconds"),
]


@pytest.mark.parametrize(("name", "field"), SECONDS)
def test_durations_are_above_0_and_below_a_day(name, field):
    assert getattr(load_settings({name: "0.001"}), field) == 0.001
    assert getattr(load_settings({name: "86399.5"}), field) == 86399.5
    for beyond in ("0", "-1", "86400"):
        assert refusal(name, beyond) == f"{name}='{beyond}': must be a number of seconds above 0"


@pytest.mark.parametrize(("raw", "bitrate"), [("192k", "192k"), (" 32k ", "32k"), ("320k", "320k")])
def test_mp3_bitrates_from_32k_to_320k(raw, bitrate):
    assert load_settings({"MP3_BITRATE": raw}).mp3_bitrate == bitrate


@pytest.mark.parametrize("raw", ["192", "999k", "31k", "321k", "1920k", "192K", "k", "192kk", "0192k"])
def test_other_bitrates_are_refused(raw):
    assert refusal("MP3_BITRATE", raw) == (
        f"MP3_BITRATE={raw!r}: must be a bitrate from 32k to 320k, such as 192k"
    )


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_log_levels_are_read_in_any_case(level):
    assert load_settings({"LOG_LEVEL": f" {level.lower()} "}).log_level == level


@pytest.mark.parametrize("raw", ["LOUD", "CRITICAL", "warn"])
def test_other_log_levels_are_refused(raw):
    assert refusal("LOG_LEVEL", raw) == f"LOG_LEVEL={raw!r}: must be DEBUG, INFO, WARNING or ERROR"


def test_urls_are_trimmed_and_lose_their_trailing_slash():
    settings = load_settings(
        {"JSERVICE_URL": " http://standin:8001/ ", "PUBLIC_URL": "https://quiz.example.org/"}
    )
    assert (settings.jservice_url, settings.public_url) == ("http://standin:8001", "https://quiz.example.org")


@pytest.mark.parametrize("raw", ["ftp://example.org", "http://", "example.org", "https:///path"])
def test_urls_must_be_http_with_a_host(raw):
    assert refusal("JSERVICE_URL", raw) == f"JSERVICE_URL={raw!r}: must be an http:// or https:// URL"


@pytest.mark.parametrize("raw", ["postgres://db/quiz", " postgresql://u:p@db:5432/quiz "])
def test_database_urls_are_postgresql(raw):
    assert load_settings({"DATABASE_URL": raw}).database_url == raw.strip()


def test_other_database_urls_are_refused():
    assert refusal("DATABASE_URL", "mysql://x") == "DATABASE_URL='mysql://x': must be a postgresql:// URL"


def test_text_and_paths_are_trimmed_and_not_blank():
    settings = load_settings({"HOST": " 127.0.0.1 ", "DATA_DIR": " /srv ", "MEDIA_DIR": "/media"})
    assert (settings.host, settings.data_dir, settings.media_dir) == (
        "127.0.0.1",
        Path("/srv"),
        Path("/media"),
    )
    assert refusal("HOST", "  ") == "HOST='  ': must not be empty"
    assert refusal("DATA_DIR", " ") == "DATA_DIR=' ': must not be empty"


def test_an_empty_variable_is_unset():
    assert load_settings({"PORT": "", "LOG_LEVEL": ""}) == Settings()


def test_folders_follow_data_dir_and_media_dir():
    settings = load_settings({"DATA_DIR": "/srv"})
    assert (settings.media_root, settings.scratch_root) == (Path("/srv/media"), Path("/srv/media/.tmp"))
    assert settings.embedded_db_dir == Path("/srv/pgdata")
    moved = load_settings({"DATA_DIR": "/srv", "MEDIA_DIR": "/mnt/mp3"})
    assert (moved.media_root, moved.scratch_root) == (Path("/mnt/mp3"), Path("/mnt/mp3/.tmp"))
    bucket = load_settings({"DATA_DIR": "/srv", "MEDIA_STORE": "s3", "S3_BUCKET": "quiz-media"})
    assert (bucket.media_store, bucket.s3_bucket, bucket.scratch_root) == (
        "s3",
        "quiz-media",
        Path("/srv/scratch"),
    )


def test_origins_are_normalised():
    settings = load_settings({"CORS_ORIGINS": " https://App.example.org/ ,, http://localhost:3000,*"})
    assert settings.cors_origins == ("https://app.example.org", "http://localhost:3000", "*")


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.org/path", "ftp://app.example.org", "https://:80", "https://u@app.example.org"],
)
def test_anything_but_an_origin_is_refused(origin):
    assert refusal("CORS_ORIGINS", origin) == (
        f"CORS_ORIGINS={origin!r}: {origin!r} is neither * nor an origin such as https://app.example.org"
    )


def test_trusted_proxies_are_networks():
    settings = load_settings({"TRUSTED_PROXIES": "10.1.2.3/8, ::1,"})
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))
    assert refusal("TRUSTED_PROXIES", "10.0.0.0/8,gateway") == (
        "TRUSTED_PROXIES='10.0.0.0/8,gateway': must be IP addresses or CIDR networks, separated by commas"
    )


@pytest.mark.parametrize("raw", ["S3", "disk", ""])
def test_media_store_is_local_or_s3(raw):
    if raw:
        assert refusal("MEDIA_STORE", raw) == f"MEDIA_STORE={raw!r}: must be local or s3"
    assert load_settings({"MEDIA_STORE": " local "}).media_store == "local"


def test_s3_needs_a_bucket():
    with pytest.raises(ConfigError) as refused:
        load_settings({"MEDIA_STORE": "s3"})
    assert str(refused.value) == "S3_BUCKET: must be set when MEDIA_STORE=s3"


@pytest.mark.parametrize("bucket", ["abc", "a" * 63, "my.bucket-1"])
def test_bucket_names_of_3_to_63_characters(bucket):
    assert load_settings({"S3_BUCKET": f" {bucket} "}).s3_bucket == bucket


@pytest.mark.parametrize("bucket", ["ab", "a" * 64, "Media", "-abc", "abc-", ".abc"])
def test_other_bucket_names_are_refused(bucket):
    assert refusal("S3_BUCKET", bucket) == (
        f"S3_BUCKET={bucket!r}: must be an S3 bucket name:"
        " 3 to 63 lowercase letters, digits, dots and hyphens"
    )


def test_the_store_and_the_other_text_settings_are_read():
    assert (load_settings({}).media_store, load_settings({}).s3_region) == ("local", None)
    settings = load_settings(
        {
            "MEDIA_STORE": "s3",
            "S3_BUCKET": "media",
            "FFMPEG_BINARY": "/usr/bin/ffmpeg",
            "S3_REGION": "eu-west-1",
            "S3_ENDPOINT_URL": "http://s3:8333/",
        }
    )
    assert (
        settings.media_store,
        settings.s3_bucket,
        settings.ffmpeg_binary,
        settings.s3_region,
        settings.s3_endpoint_url,
    ) == ("s3", "media", "/usr/bin/ffmpeg", "eu-west-1", "http://s3:8333")


def test_a_url_keeps_its_path():
    assert (
        load_settings({"JSERVICE_URL": "http://standin:8001/apiX/"}).jservice_url
        == "http://standin:8001/apiX"
    )
    assert load_settings({"CORS_ORIGINS": "https://APP.EXAMPLE.BOX/"}).cors_origins == (
        "https://app.example.box",
    )


def test_the_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("PORT", "8123")
    assert load_settings().port == 8123
