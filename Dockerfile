# The service image: `python server.py`, with PostgreSQL elsewhere (DATABASE_URL). docs/deployment.md
# tells how it is built, run and checked.

# An ffmpeg for what the service asks of it: WAV in (PCM, float, A-law, mu-law), MP3 out through
# libmp3lame, files and pipes (and MP3 decoding, to check a file with `ffmpeg -i x.mp3 -f null -`).
# Debian's ffmpeg package brings 450 MB of libraries (X11, GL, video codecs) the service never loads;
# this one is under 3 MB and makes byte-identical MP3s. Built from the base image's Debian source (with
# Debian's patches) and linked statically, so the image needs no library for it and `make bench` can
# run the very same binary on the host.
FROM python:3.12-slim AS ffmpeg
WORKDIR /build
# DL3008: build tools and Debian's ffmpeg source follow the base image's release, as the image's
# security fixes do; exact pins would break the build at the next point release.
# hadolint ignore=DL3008
RUN sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources \
    && apt-get update \
    && apt-get install -y --no-install-recommends dpkg-dev gcc libc6-dev libmp3lame-dev make nasm pkg-config \
    && apt-get source --only-source ffmpeg \
    && mv ffmpeg-*/ ffmpeg
WORKDIR /build/ffmpeg
RUN ./configure --disable-everything --disable-autodetect --enable-pthreads --disable-doc --disable-debug \
        --disable-network --disable-ffplay --disable-ffprobe --disable-avdevice --disable-swscale \
        --pkg-config-flags=--static --extra-ldflags=-static \
        --enable-libmp3lame --enable-encoder=libmp3lame,pcm_s16le --enable-muxer=mp3,null \
        --enable-demuxer=wav,mp3 --enable-protocol=file,pipe --enable-filter=aresample,aformat,anull,atrim \
        --enable-decoder=pcm_u8,pcm_s16le,pcm_s24le,pcm_s32le,pcm_f32le,pcm_f64le,pcm_alaw,pcm_mulaw,mp3float \
    && make -j"$(nproc)" ffmpeg \
    && install -D -m 0755 ffmpeg /opt/ffmpeg/ffmpeg

# The service's packages in a virtual environment without pip (the image never installs anything).
FROM python:3.12-slim AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install -r /tmp/requirements.txt

FROM python:3.12-slim
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data/media \
    && chown -R app:app /data
COPY --from=ffmpeg /opt/ffmpeg/ffmpeg /usr/local/bin/ffmpeg
COPY --from=venv /opt/venv /opt/venv
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
# No VOLUME: it would give every container of this image (the jService stand-in too) an anonymous
# volume that `docker compose down` leaves behind. Mount one at /data/media (docker-compose.yml does).
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-I", "-S", "/app/docker/health.py", "/health"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["python", "server.py"]
