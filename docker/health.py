"""The containers' healthcheck: exit 0 when GET <path> on 127.0.0.1:$PORT answers 200.

Docker runs it every few seconds in each container, so it imports nothing but socket and sys (run
with `python -I -S`): urllib.request would cost about as much CPU again as the exec itself.
"""

import os
import socket
import sys

TIMEOUT_SECONDS = 2.0


def status_line(port: int, path: str) -> bytes:
    """The first line of the answer to an HTTP/1.0 GET of `path`."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS) as connection:
        connection.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii"))
        answer = b""
        while b"\r\n" not in answer:
            piece = connection.recv(256)
            if not piece:
                break
            answer += piece
    return answer.split(b"\r\n", 1)[0]


def main() -> None:
    """Check the path given on the command line; exit 1 with the reason when it is not healthy."""
    path = sys.argv[1] if len(sys.argv) > 1 else "/health"
    try:
        line = status_line(int(os.environ.get("PORT", "8000")), path)
    except OSError as error:
        sys.exit(f"unhealthy: {error}")
    if line.split(b" ")[1:2] != [b"200"]:
        sys.exit(f"unhealthy: {line.decode('ascii', 'replace')}")


if __name__ == "__main__":
    main()
