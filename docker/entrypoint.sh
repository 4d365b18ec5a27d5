#!/bin/sh
# The image's entry point. A host folder bind-mounted at MEDIA_DIR that Docker created itself belongs to
# root, and the service (uid 10001) would stop on a bare PermissionError and restart forever: say what
# to do instead. Then run the command (`python server.py`, or the jService stand-in).
media="${MEDIA_DIR:-/data/media}"
if mountpoint -q "$media" && [ ! -w "$media" ]; then
    echo "cannot start: MEDIA_DIR $media is not writable by uid $(id -u) (it belongs to uid" \
        "$(stat -c %u "$media")). If it is a host folder (MEDIA_DIR_HOST), give it to the service's" \
        "user on the host: mkdir -p <folder> && sudo chown 10001:10001 <folder>" >&2
    exit 1
fi
exec "$@"
