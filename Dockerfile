# syntax=docker/dockerfile:1
# The service image: `python server.py` on Debian's ffmpeg, with PostgreSQL elsewhere (DATABASE_URL).

FROM python:3.12-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.12-slim
# DL3008: Debian's ffmpeg is not pinned to an exact version on purpose: the base image's Debian
# release moves with security updates, and an exact pin would break the build when it does.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data/media \
    && chown -R app:app /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root . /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    MEDIA_DIR=/data/media \
    PORT=8000
USER 10001:10001
EXPOSE 8000
VOLUME ["/data/media"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
CMD ["python", "server.py"]
