"""deploy/nginx/quiz.conf made runnable by a test: nginx found, a wrapper config written around it in
a directory of the test's own, and nginx's size syntax read."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.support import ROOT

NGINX_DIR = ROOT / "deploy" / "nginx"
SITE = "quiz.conf"
UPSTREAMS = "quiz-upstreams.conf"
SHIPPED_LISTEN = "listen 80;"

# What Debian's /etc/nginx/nginx.conf provides around the site file, with every path in `prefix`.
WRAPPER = """daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {site};
}}
"""


def find_nginx() -> str | None:
    """nginx on PATH, else where Debian installs it (/usr/sbin is not on every PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def write_config(directory: Path, port: int, upstreams: Sequence[str] | None = None) -> Path:
    """nginx.conf in `directory` around the shipped site file, listening on 127.0.0.1:`port` and
    proxying to `upstreams` ("host:port" each; None keeps the shipped list); returns its path."""
    site = (NGINX_DIR / SITE).read_text()
    assert site.count(SHIPPED_LISTEN) == 1, f"{SITE} should have one `{SHIPPED_LISTEN}`"
    (directory / SITE).write_text(site.replace(SHIPPED_LISTEN, f"listen 127.0.0.1:{port};"))
    if upstreams is None:
        shutil.copyfile(NGINX_DIR / UPSTREAMS, directory / UPSTREAMS)
    else:
        (directory / UPSTREAMS).write_text("".join(f"server {address};\n" for address in upstreams))
    # As root, workers would run as nobody, who cannot write the test's private directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(WRAPPER.format(prefix=directory, user=user, site=SITE))
    return conf


def nginx_command(nginx: str, conf: Path, *options: str) -> list[str]:
    """The command line running nginx on `conf`, with its prefix and error log beside it."""
    return [nginx, "-p", f"{conf.parent}/", "-e", str(conf.parent / "error.log"), "-c", str(conf), *options]


def nginx_size(value: str) -> int:
    """The bytes in one of nginx's sizes (1024, 8k, 100m, 1g; powers of 1024)."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")
